package directory

import (
	"context"
	"reflect"
	"unsafe"

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
	fast, ok := parseFlowLines(string(data))
	if !ok {
		return false, false, nil
	}
	slow, err := decodeYAML(string(data))
	return true, reflect.DeepEqual(fast, slow), err
}

// TextKept parses text as Load does (in place, the values substrings of it) and
// returns every string the Directory keeps that points into text: none may, or
// one kept name would keep the whole file in memory.
func TextKept(text string) ([]string, error) {
	d, err := parse("directory.yaml", text)
	if err != nil {
		return nil, err
	}
	lo := uintptr(unsafe.Pointer(unsafe.StringData(text)))
	hi := lo + uintptr(len(text))
	var kept []string
	check := func(what, s string) {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(s))); len(s) > 0 && p >= lo && p < hi {
			kept = append(kept, what+" "+s)
		}
	}
	for name, u := range d.usersByName {
		check("users key", name)
		check("username", u.Username)
		check("state", u.state)
	}
	for key, g := range d.groups {
		check("groups key", key)
		check("group path", g.path)
	}
	for key, p := range d.projects {
		check("projects key", key)
		check("project path", p.path)
	}
	for _, t := range d.tokens {
		check("token name", t.name)
		for _, sc := range t.scopes {
			check("token scope", sc)
		}
	}
	return kept, nil
}
