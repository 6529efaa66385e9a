package directory_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/realsize"
)

// TestMembershipsMatchReference: at real size (test/realsize), for every user and
// for listings that reorder, repeat, re-case and drop entries or name unknown
// paths, the indexed Memberships gives exactly what the direct walk over the
// listing gives.
func TestMembershipsMatchReference(t *testing.T) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		t.Fatal(err)
	}
	if handled, same, err := directory.FlowLinesAgree(data.Directory); !handled || !same || err != nil {
		t.Fatalf("real-size directory: the line reader handled it: %v, read the same as YAML: %v (%v)", handled, same, err)
	}
	d, err := directory.Parse("directory.yaml", data.Directory)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.ParseAgentConfig("agent-config.yaml", data.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	var projects, groups []string
	for _, p := range cfg.UserAccess.Projects {
		projects = append(projects, p.Path)
	}
	for _, g := range cfg.UserAccess.Groups {
		groups = append(groups, g.Path)
	}
	r := rand.New(rand.NewPCG(3, 4))
	mangle := func(in []string) []string {
		out := make([]string, 0, len(in))
		for _, s := range in {
			switch r.IntN(8) {
			case 0: // dropped
			case 1:
				out = append(out, s, s) // repeated
			case 2:
				out = append(out, strings.ToUpper(s))
			case 3:
				out = append(out, s+"-unknown")
			default:
				out = append(out, s)
			}
		}
		r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out
	}
	listings := map[string]identity.Listed{
		"the agent config": identity.NewListed(projects, groups),
		"mangled":          identity.NewListed(mangle(projects), mangle(groups)),
		"unprepared":       {Projects: mangle(projects), Groups: mangle(groups)},
		"empty":            identity.NewListed(nil, nil),
	}
	for name, listed := range listings {
		t.Run(name, func(t *testing.T) {
			withAccess := 0
			relations := map[identity.Relation]int{}
			for _, u := range d.Users() {
				got, err := d.Memberships(context.Background(), u, listed)
				if err != nil {
					t.Fatal(err)
				}
				want := d.MembershipsReference(context.Background(), u, listed)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s:\n got %v\nwant %v", u.Username, got, want)
				}
				for rel, n := range checkExplained(t, d, u, listed, got) {
					relations[rel] += n
				}
				if len(got) > 0 {
					withAccess++
				}
			}
			if name != "empty" && withAccess < 100 {
				t.Fatalf("only %d users have access to anything: the listing does not exercise the index", withAccess)
			}
			if name != "empty" && (relations[identity.RelationDirect] == 0 || relations[identity.RelationInherited] == 0 || relations[identity.RelationSubgroupOnly] == 0) {
				t.Fatalf("grants by relation %v: the data does not exercise every relation", relations)
			}
		})
	}
	// alice, as the generator documents her: 50 qualifying entries.
	alice, _ := d.UserByName(data.User)
	ms, _ := d.Memberships(context.Background(), alice, listings["the agent config"])
	qualifying := 0
	for _, m := range ms {
		if m.AccessLevel >= identity.Developer {
			qualifying++
		}
	}
	if qualifying != data.Qualifying {
		t.Fatalf("alice qualifies for %d entries, the generator says %d", qualifying, data.Qualifying)
	}
}

// BenchmarkParseRealSize loads the real-size directory (start-up and every reload)
// and reports the heap the loaded directory keeps (live-MB).
func BenchmarkParseRealSize(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() { // b.Loop keeps the call from being optimised away
		if _, err = directory.Parse("directory.yaml", data.Directory); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// No loaded directory is referenced now, so the delta below is exactly one.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d, _ := directory.Parse("directory.yaml", data.Directory)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(d)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "live-MB")
	b.ReportMetric(float64(len(data.Directory))/(1<<20), "file-MB")
}

// BenchmarkLoadRealSize is start-up's path: Load reads the file into one string
// and parses it in place (Parse copies its []byte first), so its B/op is the
// fresh memory a start-up touches for the directory.
func BenchmarkLoadRealSize(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "directory.yaml")
	if err := os.WriteFile(file, data.Directory, 0o600); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := directory.Load(file); err != nil {
			b.Fatal(err)
		}
	}
}

// checkExplained holds ExplainMemberships to Memberships (TestMembershipsMatchReference
// runs it for every user and listing): the highest level among the grants that
// count is the effective level, and each grant's relation matches the paths.
func checkExplained(t *testing.T, d *directory.Directory, u identity.User, listed identity.Listed, want []identity.Membership) map[identity.Relation]int {
	t.Helper()
	xs, err := d.ExplainMemberships(context.Background(), u, listed)
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) != len(listed.Projects)+len(listed.Groups) {
		t.Fatalf("%d explained entries for a listing of %d", len(xs), len(listed.Projects)+len(listed.Groups))
	}
	var got []identity.Membership
	relations := map[identity.Relation]int{}
	for _, x := range xs {
		level := identity.NoAccess
		entry := strings.ToLower(x.Path)
		for _, g := range x.Grants {
			relations[g.Relation]++
			p := strings.ToLower(g.Path)
			var ok bool
			switch g.Relation {
			case identity.RelationDirect:
				ok, level = p == entry && g.Kind == x.Kind, max(level, g.AccessLevel)
			case identity.RelationInherited:
				ok, level = g.Kind == identity.KindGroup && strings.HasPrefix(entry, p+"/"), max(level, g.AccessLevel)
			case identity.RelationSubgroupOnly:
				ok = x.Kind == identity.KindGroup && strings.HasPrefix(p, entry+"/")
			}
			if !ok || !x.Found {
				t.Fatalf("%s: %s %s: grant %+v does not fit (found %v)", u.Username, x.Kind, x.Path, g, x.Found)
			}
		}
		if level > identity.NoAccess {
			got = append(got, identity.Membership{Kind: x.Kind, ID: x.ID, Path: x.Path, AccessLevel: level})
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: explained memberships\n got %v\nwant %v", u.Username, got, want)
	}
	return relations
}

// TestTenTimesRealSizeIsRefusedUnread: a directory ten times the real size (10,000
// users, ~43 MB) is over the 32 MiB the gateway reads. It is refused from its size,
// with a message that says what to do, and refusing it allocates next to nothing:
// memory stays bounded whatever the file's size.
func TestTenTimesRealSizeIsRefusedUnread(t *testing.T) {
	if testing.Short() {
		t.Skip("generates a 43 MB directory")
	}
	s := realsize.Default()
	s.Users, s.Projects = 10*s.Users, 10*s.Projects
	data, err := realsize.Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(data.Directory) <= 32<<20 {
		t.Fatalf("the 10× directory has %d bytes; the test needs it over the 32 MiB bound", len(data.Directory))
	}
	file := filepath.Join(t.TempDir(), "directory.yaml")
	if err := os.WriteFile(file, data.Directory, 0o600); err != nil {
		t.Fatal(err)
	}
	data = nil
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = directory.Load(file)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than 32 MiB") || !strings.Contains(err.Error(), "--identity-source gitlab") {
		t.Fatalf("Load(10× directory) = %v; want a refusal naming the bound and what to do", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("refusing the 10× directory allocated %d bytes; it must not read it", alloc)
	}
}

// TestDirectoryKeepsNoFileText: Load parses the file's text in place, so every
// value is a substring of it; the Directory must keep copies, or one kept name
// would keep the whole file (4 MB at real size) resident for the Directory's
// life. Both readers are checked: the line reader (the real-size file) and the
// YAML decoder (a block-style file).
func TestDirectoryKeepsNoFileText(t *testing.T) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		t.Fatal(err)
	}
	block := `users:
  - id: 1
    username: alice
    state: active
    password_hash: "$2b$04$abcdefghijklmnopqrstuuJq0bP2Wq0xGxM8dZ6hWm3T2o0VYv8Gm"
groups:
  - id: 2
    path: Org
projects:
  - id: 3
    path: Org/App
memberships:
  - user: alice
    project: Org/App
    role: developer
tokens:
  - user: alice
    name: laptop
    digest: sha256:` + strings.Repeat("ab", 32) + `
    scopes: [k8s_proxy, read_api]
`
	for name, text := range map[string]string{"line reader, real size": string(data.Directory), "YAML decoder": block} {
		t.Run(name, func(t *testing.T) {
			kept, err := directory.TextKept(text)
			if err != nil {
				t.Fatal(err)
			}
			if len(kept) > 0 {
				t.Fatalf("the Directory keeps %d strings of the file's text, e.g. %q", len(kept), kept[:min(len(kept), 5)])
			}
		})
	}
}
