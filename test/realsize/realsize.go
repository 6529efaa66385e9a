// Package realsize generates the realistic-size data set kubegate is measured on: a
// directory (users, a group tree, projects, memberships, personal access tokens) and
// an agent configuration whose `user_access` lists 500 projects and 500 groups. The
// 5-entry sandbox directory hides what this size costs (a user who qualifies for 50
// entries carries 243 Impersonate-Group values), so benchmarks, soak runs and flood
// tests use this instead.
//
// The shape (the performance issue's figures):
//   - 1,515 groups up to 4 deep: 15 top-level groups (org-01 …), 10 subgroups each
//     (team-01 …), 6 below each of those (squad-1 …), and one more level (unit)
//     below every other squad;
//   - 4,000 projects spread round-robin over the groups;
//   - 1,000 users with about 50 direct memberships each, roles drawn from a seeded
//     generator, but for the last one (outsider), who has a good token and no
//     membership (the 403 path);
//   - 2,000 tokens: every user has one good k8s_proxy token and one that is revoked,
//     expired or lacks the k8s_proxy scope (in turn);
//   - the user under test (alice) qualifies for exactly 50 listed entries, 29 of them
//     only through membership in an ancestor group, with 14 Developer, 30 Maintainer
//     and 6 Owner entries: 1 + 14×4 + 30×5 + 6×6 = 243 impersonated groups.
//
// Everything is derived from Shape.Seed, so two runs produce the same bytes.
package realsize

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"kubegate.dev/kubegate/identity/directory"
)

// Shape is the size of the generated data. Default is the measured shape; tests may
// scale Users and MembershipsPerUser, the group tree and alice's 50 entries are fixed.
type Shape struct {
	Users              int // including alice; at least 1
	MembershipsPerUser int // direct memberships of every user but alice
	Projects           int // at least 1,515 (one per group is needed for alice's entries)
	ListedProjects     int // at most 500, at least 48 (alice's own)
	ListedGroups       int // at most 500, at least 15 (alice's own)
	Seed               uint64
}

// Default is the shape of the performance issue.
func Default() Shape {
	return Shape{Users: 1000, MembershipsPerUser: 50, Projects: 4000, ListedProjects: 500, ListedGroups: 500, Seed: 1}
}

// Data is one generated data set.
type Data struct {
	Directory   []byte // directory YAML (identity/directory format)
	AgentConfig []byte // agent config YAML, access_as user
	// User is the user under test; Token is her good k8s_proxy token.
	User  string
	Token string
	// Outsider has a good token and no membership at all: authenticated, never
	// authorized (the 403 path). OutsiderToken is that token.
	Outsider, OutsiderToken string
	// Tokens maps every user to their good k8s_proxy token; BadTokens lists the
	// revoked, expired and wrong-scope ones.
	Tokens    map[string]string
	BadTokens []string
	// Expected facts about User, for checks: qualifying entries, how many of them
	// only through an ancestor group, and the impersonated groups they give.
	Qualifying, Inherited, ImpersonatedGroups int
	// Counts of what was generated.
	Groups, Projects, Memberships int
}

// The user under test's three ancestor memberships and what their subtrees give.
var aliceTeams = []struct {
	path     string
	role     string
	listedP  int // listed projects in the subtree
	listedG  int // listed subgroups in the subtree
	rolesPer int
}{
	{"org-01/team-01", "maintainer", 8, 4, 5},
	{"org-01/team-02", "developer", 8, 3, 4},
	{"org-01/team-03", "owner", 4, 2, 6},
}

const (
	aliceDirectMaintainer = 18 // listed projects alice maintains directly (org-02 and later)
	aliceDirectDeveloper  = 3  // listed projects she develops directly
	aliceReporterProjects = 7  // listed projects she only reports on: do not qualify
	aliceReporterGroups   = 6  // listed groups she only reports on: do not qualify
	aliceUnlisted         = 13 // unlisted projects she develops: do not count
)

var roles = []string{"guest", "planner", "reporter", "developer", "maintainer", "owner"}

// Generate builds a data set of the given shape.
func Generate(s Shape) (*Data, error) {
	if s.Users < 1 || s.Projects < 1515 || s.ListedProjects < 48 || s.ListedProjects > 500 || s.ListedGroups < 15 || s.ListedGroups > 500 {
		return nil, fmt.Errorf("realsize: shape %+v out of range (users ≥ 1, projects ≥ 1515, listed projects 48..500, listed groups 15..500)", s)
	}
	rng := rand.New(rand.NewPCG(s.Seed, s.Seed^0x6b7562656761746)) // "kubegat"
	g := gen{rng: rng}
	g.groupTree()
	g.spreadProjects(s.Projects)

	d := &Data{User: "alice", Tokens: map[string]string{}, Groups: len(g.groups), Projects: len(g.projects)}
	listedP, listedG := map[string]bool{}, map[string]bool{}
	var alice []membership

	// 1. Inherited qualifications: alice is a member of three teams; some projects and
	// subgroups inside each are listed.
	groupsOf := g.childrenIndex()
	for _, t := range aliceTeams {
		alice = append(alice, membership{group: t.path, role: t.role})
		sub := g.subtree(t.path, groupsOf)
		ps := g.projectsIn(sub)
		if len(ps) < t.listedP || len(sub)-1 < t.listedG {
			return nil, fmt.Errorf("realsize: subtree %s too small", t.path)
		}
		for _, p := range ps[:t.listedP] {
			listedP[p] = true
		}
		for _, sg := range sub[1 : 1+t.listedG] { // sub[0] is the team itself: not listed
			listedG[sg] = true
		}
		d.Inherited += t.listedP + t.listedG
		d.ImpersonatedGroups += (t.listedP + t.listedG) * t.rolesPer
	}
	// Everything below alice's teams is off limits for other listed entries, so her
	// count stays exact.
	reserved := map[string]bool{}
	for _, t := range aliceTeams {
		for _, sg := range g.subtree(t.path, groupsOf) {
			reserved[sg] = true
		}
	}
	// Candidates elsewhere, in a seeded order.
	var candP, candG []string
	for _, p := range g.projects {
		if !reserved[p.group] {
			candP = append(candP, p.path)
		}
	}
	for _, gr := range g.groups {
		if !reserved[gr.path] && gr.path != "org-01" { // org-01 is the teams' ancestor
			candG = append(candG, gr.path)
		}
	}
	rng.Shuffle(len(candP), func(i, j int) { candP[i], candP[j] = candP[j], candP[i] })
	rng.Shuffle(len(candG), func(i, j int) { candG[i], candG[j] = candG[j], candG[i] })

	// 2. Direct qualifications and non-qualifying memberships on listed entries.
	take := func(list *[]string, n int) []string { out := (*list)[:n]; *list = (*list)[n:]; return out }
	for _, p := range take(&candP, aliceDirectMaintainer) {
		listedP[p] = true
		alice = append(alice, membership{project: p, role: "maintainer"})
	}
	for _, p := range take(&candP, aliceDirectDeveloper) {
		listedP[p] = true
		alice = append(alice, membership{project: p, role: "developer"})
	}
	for _, p := range take(&candP, aliceReporterProjects) {
		listedP[p] = true
		alice = append(alice, membership{project: p, role: "reporter"})
	}
	for _, gr := range take(&candG, aliceReporterGroups) {
		listedG[gr] = true
		alice = append(alice, membership{group: gr, role: "reporter"})
	}
	for _, p := range take(&candP, aliceUnlisted) { // never listed: taken out of the candidates
		alice = append(alice, membership{project: p, role: "developer"})
	}
	d.Qualifying = d.Inherited + aliceDirectMaintainer + aliceDirectDeveloper
	d.ImpersonatedGroups += 1 + aliceDirectMaintainer*5 + aliceDirectDeveloper*4 // + gitlab:user

	// 3. The rest of the listing.
	for len(listedP) < s.ListedProjects {
		listedP[take(&candP, 1)[0]] = true
	}
	for len(listedG) < s.ListedGroups {
		listedG[take(&candG, 1)[0]] = true
	}

	// 4. Everyone else's memberships, anywhere (they never change alice's count).
	all := make([]membership, 0, s.Users*s.MembershipsPerUser)
	users := []string{"alice"}
	for i := 2; i < s.Users; i++ {
		users = append(users, fmt.Sprintf("user-%04d", i))
	}
	members := users[1:]
	if s.Users > 1 {
		users = append(users, "outsider") // the last user: no memberships
	}
	for _, u := range members {
		seen := map[string]bool{}
		for len(seen) < s.MembershipsPerUser {
			m := membership{user: u, role: roles[rng.IntN(len(roles))]}
			if rng.IntN(3) == 0 {
				m.group = g.groups[rng.IntN(len(g.groups))].path
			} else {
				m.project = g.projects[rng.IntN(len(g.projects))].path
			}
			if key := m.group + "|" + m.project; !seen[key] {
				seen[key] = true
				all = append(all, m)
			}
		}
	}
	for i := range alice {
		alice[i].user = "alice"
	}
	all = append(alice, all...)
	d.Memberships = len(all)

	// 5. Tokens: one good, one bad per user.
	var dir strings.Builder
	dir.WriteString("# Generated by kubegate.dev/kubegate/test/realsize: the performance issue's shape.\nusers:\n")
	for i, u := range users {
		fmt.Fprintf(&dir, "  - {id: %d, username: %s}\n", i+1, u)
	}
	dir.WriteString("groups:\n")
	for _, gr := range g.groups {
		if gr.parent == "" {
			fmt.Fprintf(&dir, "  - {id: %d, path: %s}\n", gr.id, gr.path)
		} else {
			fmt.Fprintf(&dir, "  - {id: %d, path: %s, parent: %s}\n", gr.id, gr.path, gr.parent)
		}
	}
	dir.WriteString("projects:\n")
	for _, p := range g.projects {
		fmt.Fprintf(&dir, "  - {id: %d, path: %s}\n", p.id, p.path)
	}
	dir.WriteString("memberships:\n")
	for _, m := range all {
		if m.group != "" {
			fmt.Fprintf(&dir, "  - {user: %s, group: %s, role: %s}\n", m.user, m.group, m.role)
		} else {
			fmt.Fprintf(&dir, "  - {user: %s, project: %s, role: %s}\n", m.user, m.project, m.role)
		}
	}
	dir.WriteString("tokens:\n")
	expired := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Format(time.DateOnly)
	for i, u := range users {
		good, bad := token(s.Seed, u, "good"), token(s.Seed, u, "bad")
		d.Tokens[u] = good
		d.BadTokens = append(d.BadTokens, bad)
		fmt.Fprintf(&dir, "  - {user: %s, name: good, digest: %q, scopes: [k8s_proxy]}\n", u, directory.HashToken(good))
		switch i % 3 {
		case 0:
			fmt.Fprintf(&dir, "  - {user: %s, name: revoked, digest: %q, scopes: [k8s_proxy], revoked: true}\n", u, directory.HashToken(bad))
		case 1:
			fmt.Fprintf(&dir, "  - {user: %s, name: expired, digest: %q, scopes: [k8s_proxy], expires_at: %s}\n", u, directory.HashToken(bad), expired)
		default:
			fmt.Fprintf(&dir, "  - {user: %s, name: read-api, digest: %q, scopes: [read_api]}\n", u, directory.HashToken(bad))
		}
	}
	d.Token = d.Tokens["alice"]
	if s.Users > 1 {
		d.Outsider, d.OutsiderToken = "outsider", d.Tokens["outsider"]
	}
	d.Directory = []byte(dir.String())

	var cfg strings.Builder
	cfg.WriteString("# Generated by kubegate.dev/kubegate/test/realsize.\nuser_access:\n  access_as:\n    user: {}\n  projects:\n")
	for _, p := range sortedKeys(listedP) {
		fmt.Fprintf(&cfg, "    - id: %s\n", p)
	}
	cfg.WriteString("  groups:\n")
	for _, gr := range sortedKeys(listedG) {
		fmt.Fprintf(&cfg, "    - id: %s\n", gr)
	}
	d.AgentConfig = []byte(cfg.String())
	return d, nil
}

type group struct {
	id           int64
	path, parent string
}

type project struct {
	id          int64
	path, group string
}

type membership struct {
	user, group, project, role string
}

type gen struct {
	rng      *rand.Rand
	groups   []group
	projects []project
	byGroup  map[string][]string // group path → its projects
}

// groupTree builds 15 × 10 × 6 groups and a unit below every other squad: 1,515.
func (g *gen) groupTree() {
	add := func(path, parent string) {
		g.groups = append(g.groups, group{id: int64(len(g.groups) + 1), path: path, parent: parent})
	}
	for o := 1; o <= 15; o++ {
		org := fmt.Sprintf("org-%02d", o)
		add(org, "")
		for t := 1; t <= 10; t++ {
			team := fmt.Sprintf("%s/team-%02d", org, t)
			add(team, org)
			for q := 1; q <= 6; q++ {
				squad := fmt.Sprintf("%s/squad-%d", team, q)
				add(squad, team)
				if q%2 == 1 {
					add(squad+"/unit", squad)
				}
			}
		}
	}
}

func (g *gen) spreadProjects(n int) {
	g.byGroup = map[string][]string{}
	for k := range n {
		gr := g.groups[k%len(g.groups)].path
		p := fmt.Sprintf("%s/proj-%04d", gr, k+1)
		g.projects = append(g.projects, project{id: int64(k + 1), path: p, group: gr})
		g.byGroup[gr] = append(g.byGroup[gr], p)
	}
}

func (g *gen) childrenIndex() map[string][]string {
	idx := map[string][]string{}
	for _, gr := range g.groups {
		if gr.parent != "" {
			idx[gr.parent] = append(idx[gr.parent], gr.path)
		}
	}
	return idx
}

// subtree lists root and every group below it, root first, breadth first.
func (g *gen) subtree(root string, children map[string][]string) []string {
	out := []string{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

func (g *gen) projectsIn(groups []string) []string {
	var out []string
	for _, gr := range groups {
		out = append(out, g.byGroup[gr]...)
	}
	return out
}

// token derives a GitLab-shaped personal access token (glpat- and 20 URL-safe
// characters, the format GitLab issued before routable tokens) from the seed.
func token(seed uint64, user, kind string) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%d/%s/%s", seed, user, kind)))
	return "glpat-" + base64.RawURLEncoding.EncodeToString(sum[:])[:20]
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
