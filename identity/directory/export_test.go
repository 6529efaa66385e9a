package directory

import (
	"context"
	"reflect"

	"kubegate.dev/kubegate/identity"
)

// MembershipsReference is access.md §3 written as directly as possible (walk every
// listed entry, take the highest level over it and its ancestors): the reference
// the indexed Memberships is compared with.
func (d *Directory) MembershipsReference(_ context.Context, u identity.User, listed identity.Listed) []identity.Membership {
	du := d.usersByID[u.ID]
	if du == nil || du.state != "active" {
		return nil
	}
	directG := map[*group]identity.AccessLevel{}
	for _, m := range du.directG {
		directG[m.group] = m.level
	}
	directP := map[*project]identity.AccessLevel{}
	for _, m := range du.directP {
		directP[m.project] = m.level
	}
	inherited := func(g *group) identity.AccessLevel {
		level := identity.NoAccess
		for ; g != nil; g = g.parent {
			level = max(level, directG[g])
		}
		return level
	}
	var out []identity.Membership
	for i, p := range listed.Projects {
		proj := d.projects[listed.ProjectKey(i)]
		if proj == nil {
			continue
		}
		if level := max(directP[proj], inherited(proj.namespace)); level > identity.NoAccess {
			out = append(out, identity.Membership{Kind: identity.KindProject, ID: proj.id, Path: p, AccessLevel: level})
		}
	}
	for i, g := range listed.Groups {
		grp := d.groups[listed.GroupKey(i)]
		if grp == nil {
			continue
		}
		if level := inherited(grp); level > identity.NoAccess {
			out = append(out, identity.Membership{Kind: identity.KindGroup, ID: grp.id, Path: g, AccessLevel: level})
		}
	}
	return out
}

// Users lists every user, for tests that go over all of them.
func (d *Directory) Users() []identity.User {
	out := make([]identity.User, 0, len(d.usersByID))
	for _, u := range d.usersByID {
		out = append(out, u.User)
	}
	return out
}

// FlowLinesAgree reports whether the line reader handles data, and if it does,
// whether it reads exactly what the YAML decoder reads.
func FlowLinesAgree(data []byte) (handled, same bool, err error) {
	fast, ok := parseFlowLines(data)
	if !ok {
		return false, false, nil
	}
	slow, err := decodeYAML(data)
	return true, reflect.DeepEqual(fast, slow), err
}
