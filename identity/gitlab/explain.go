package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"kubegate.dev/kubegate/identity"
)

var _ identity.MembershipExplainer = (*Backend)(nil)

// maxAncestors bounds the walk up a namespace (GitLab allows 20 levels of subgroups).
const maxAncestors = 21

// ExplainMemberships reports, for each listed entry, whether GitLab knows its path
// and where the user's effective access (what Memberships reports, from the same
// calls) comes from: the direct membership (GET …/members/:user_id) and the
// membership of each ancestor group, walked up from the project's namespace or the
// group's parent (GET /projects/:id, GET /groups/:id). Whatever that does not
// account for — a share with another group, an invitation — is a
// RelationEffective grant at the effective level, so the highest grant that
// counts is always the effective level. GitLab has no call that lists a user's
// memberships below a group without an administrator's token, so memberships only
// in a subgroup of a listed group are not reported.
//
// Cost: for each entry the user has access to, one call for the direct membership
// and two per ancestor group (explain only; the gateway's Check never calls this).
func (b *Backend) ExplainMemberships(ctx context.Context, u identity.User, listed identity.Listed) ([]identity.EntrySource, error) {
	ms, err := b.Memberships(ctx, u, listed)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
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
				if x.Grants, err = b.grants(ctx, m, u.ID); err != nil {
					return nil, err
				}
				break
			}
		}
	}
	return out, nil
}

// grants explains one effective membership.
func (b *Backend) grants(ctx context.Context, m identity.Membership, userID int64) ([]identity.Grant, error) {
	var out []identity.Grant
	highest := identity.NoAccess
	level, ok, err := b.memberLevelAt(ctx, m.Kind, m.ID, userID, "/members/")
	if err != nil {
		return nil, err
	}
	if ok {
		out = append(out, identity.Grant{Relation: identity.RelationDirect, Kind: m.Kind, Path: m.Path, AccessLevel: level})
		highest = level
	}
	parent, err := b.parentGroup(ctx, m.Kind, m.ID)
	if err != nil {
		return nil, err
	}
	for n := 0; parent != 0 && n < maxAncestors; n++ {
		g, err := b.groupInfo(ctx, parent)
		if err != nil {
			return nil, err
		}
		level, ok, err := b.memberLevelAt(ctx, identity.KindGroup, g.ID, userID, "/members/")
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, identity.Grant{Relation: identity.RelationInherited, Kind: identity.KindGroup, Path: g.FullPath, AccessLevel: level})
			highest = max(highest, level)
		}
		parent = g.ParentID
	}
	if highest < m.AccessLevel {
		out = append(out, identity.Grant{Relation: identity.RelationEffective, Kind: m.Kind, Path: m.Path, AccessLevel: m.AccessLevel})
	}
	return out, nil
}

type groupRecord struct {
	ID       int64  `json:"id"`
	FullPath string `json:"full_path"`
	ParentID int64  `json:"parent_id"`
}

// parentGroup is the group directly above a project (its namespace, when that is a
// group: https://docs.gitlab.com/api/projects/#retrieve-a-project) or a group
// (parent_id: https://docs.gitlab.com/api/groups/#get-a-single-group); 0 for none.
func (b *Backend) parentGroup(ctx context.Context, kind identity.Kind, id int64) (int64, error) {
	if kind == identity.KindGroup {
		g, err := b.groupInfo(ctx, id)
		return g.ParentID, err
	}
	var p struct {
		Namespace struct {
			ID   int64  `json:"id"`
			Kind string `json:"kind"`
		} `json:"namespace"`
	}
	a := b.call(ctx, "GET /projects/:id", http.MethodGet, "projects/"+strconv.FormatInt(id, 10), nil, &p)
	if !a.ok() {
		return 0, a.unavailable()
	}
	if p.Namespace.Kind != "group" {
		return 0, nil // a personal project
	}
	return p.Namespace.ID, nil
}

func (b *Backend) groupInfo(ctx context.Context, id int64) (groupRecord, error) {
	var g groupRecord
	a := b.call(ctx, "GET /groups/:id", http.MethodGet, "groups/"+strconv.FormatInt(id, 10), struct {
		WithProjects bool `url:"with_projects"`
	}{false}, &g)
	if !a.ok() {
		return g, a.unavailable()
	}
	if g.ID != id || g.FullPath == "" {
		return g, identity.SourceUnavailable(sourceName, fmt.Errorf("GET /groups/:id: GitLab's answer for group %d is not that group", id))
	}
	return g, nil
}
