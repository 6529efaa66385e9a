package directory

import (
	"context"

	"kubegate.dev/kubegate/identity"
)

var _ identity.MembershipExplainer = (*Directory)(nil)

// ExplainMemberships says, for each listed entry, which of the user's direct
// memberships reach it and how: the walk Memberships makes (the listed index: a
// membership of a group reaches the listed entries at or below it), plus the
// memberships below a listed group that do not count. TestExplainAgreesWithMemberships
// holds the two together.
func (d *Directory) ExplainMemberships(ctx context.Context, u identity.User, listed identity.Listed) ([]identity.EntrySource, error) {
	if _, err := d.Memberships(ctx, u, listed); err != nil {
		return nil, err // the same refusals (a renumbered user)
	}
	idx := d.indexFor(&listed)
	out := make([]identity.EntrySource, len(idx.entries))
	listedGroups := map[*group][]int32{} // a listing may repeat an entry
	for i, name := range listed.Projects {
		out[i] = identity.EntrySource{Kind: identity.KindProject, Path: name}
	}
	for i, name := range listed.Groups {
		pos := int32(len(listed.Projects) + i)
		out[pos] = identity.EntrySource{Kind: identity.KindGroup, Path: name}
		if g := d.groups[listed.GroupKey(i)]; g != nil {
			listedGroups[g] = append(listedGroups[g], pos)
		}
	}
	for pos, e := range idx.entries {
		if e.id != 0 {
			out[pos].Found, out[pos].ID = true, e.id
		}
	}
	du := d.usersByID[u.ID]
	if du == nil || du.state != "active" {
		return out, nil
	}
	for _, m := range du.directG {
		for _, pos := range idx.byGroup[m.group] {
			rel := identity.RelationInherited
			if out[pos].Kind == identity.KindGroup && out[pos].ID == m.group.id {
				rel = identity.RelationDirect
			}
			out[pos].Grants = append(out[pos].Grants, identity.Grant{Relation: rel, Kind: identity.KindGroup, Path: m.group.path, AccessLevel: m.level})
		}
		for g := m.group.parent; g != nil; g = g.parent {
			for _, pos := range listedGroups[g] {
				out[pos].Grants = append(out[pos].Grants, identity.Grant{Relation: identity.RelationSubgroupOnly, Kind: identity.KindGroup, Path: m.group.path, AccessLevel: m.level})
			}
		}
	}
	for _, m := range du.directP {
		for _, pos := range idx.byProject[m.project] {
			out[pos].Grants = append(out[pos].Grants, identity.Grant{Relation: identity.RelationDirect, Kind: identity.KindProject, Path: m.project.path, AccessLevel: m.level})
		}
		for g := m.project.namespace; g != nil; g = g.parent {
			for _, pos := range listedGroups[g] {
				out[pos].Grants = append(out[pos].Grants, identity.Grant{Relation: identity.RelationSubgroupOnly, Kind: identity.KindProject, Path: m.project.path, AccessLevel: m.level})
			}
		}
	}
	return out, nil
}
