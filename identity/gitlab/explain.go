package gitlab

import (
	"context"
	"strings"

	"kubegate.dev/kubegate/identity"
)

var _ identity.MembershipExplainer = (*Backend)(nil)

// ExplainMemberships reports, for each listed entry, whether GitLab knows its path
// and the user's effective access to it, from the same calls Memberships makes.
// GitLab's members/all answer folds direct, inherited and shared-group memberships
// into one level and does not say which, so each grant is RelationEffective.
func (b *Backend) ExplainMemberships(ctx context.Context, u identity.User, listed identity.Listed) ([]identity.EntrySource, error) {
	ms, err := b.Memberships(ctx, u, listed)
	if err != nil {
		return nil, err
	}
	out := make([]identity.EntrySource, 0, len(listed.Projects)+len(listed.Groups))
	for _, p := range listed.Projects {
		out = append(out, identity.EntrySource{Kind: identity.KindProject, Path: p})
	}
	for _, g := range listed.Groups {
		out = append(out, identity.EntrySource{Kind: identity.KindGroup, Path: g})
	}
	for i := range out {
		x := &out[i]
		id, ok, err := b.resolve(ctx, x.Kind, x.Path) // cached by Memberships' own lookups
		if err != nil {
			return nil, err
		}
		x.Found, x.ID = ok, id
		for _, m := range ms {
			if m.Kind == x.Kind && strings.EqualFold(m.Path, x.Path) {
				x.Grants = []identity.Grant{{Relation: identity.RelationEffective, Kind: m.Kind, Path: m.Path, AccessLevel: m.AccessLevel}}
				break
			}
		}
	}
	return out, nil
}
