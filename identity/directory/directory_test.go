package directory

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/identity"
)

func sandboxDir(t *testing.T) *Directory {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	d, err := Load(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "sandbox", "directory.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var sandboxListed = identity.Listed{
	Projects: []string{"group-1/project-1", "group-2/project-2"},
	Groups:   []string{"group-2", "group-3/subgroup"},
}

func pat(tok string) identity.Credential {
	return identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: tok}
}

func TestAuthenticate(t *testing.T) {
	d := sandboxDir(t)
	tests := []struct {
		name       string
		cred       identity.Credential
		wantUser   string
		wantReason identity.Reason
		notMine    bool
	}{
		{name: "valid token", cred: pat("kg-sandbox-alice-token"), wantUser: "alice"},
		{name: "unknown token", cred: pat("kg-sandbox-nobody-token"), wantReason: identity.ReasonInvalid},
		{name: "revoked token", cred: pat("kg-sandbox-erin-token"), wantReason: identity.ReasonRevoked},
		{name: "token without k8s_proxy", cred: pat("kg-sandbox-frank-token"), wantReason: identity.ReasonScope},
		{name: "expired token", cred: pat("kg-sandbox-judy-token"), wantReason: identity.ReasonExpired},
		{name: "blocked user", cred: pat("kg-sandbox-mallory-token"), wantReason: identity.ReasonInactive},
		{name: "digest instead of token", cred: pat(HashToken("kg-sandbox-alice-token")), wantReason: identity.ReasonInvalid},
		{name: "oidc is not mine", cred: identity.Credential{Type: identity.AccessOIDCIDToken, Secret: "a.b.c"}, notMine: true},
		{name: "session is not mine", cred: identity.Credential{Type: identity.AccessSessionCookie, Secret: "s"}, notMine: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok, err := d.Authenticate(context.Background(), tt.cred)
			switch {
			case tt.notMine:
				if id != nil || ok || err != nil {
					t.Fatalf("want not mine, got %v %v %v", id, ok, err)
				}
			case tt.wantReason != "":
				var e *identity.Error
				if !errors.As(err, &e) || e.Reason != tt.wantReason || ok || id != nil {
					t.Fatalf("want rejection %s, got %v %v %v", tt.wantReason, id, ok, err)
				}
				if e.Public != identity.Unauthorized {
					t.Errorf("public message %q leaks detail; want %q", e.Public, identity.Unauthorized)
				}
				if strings.Contains(e.Error(), tt.cred.Secret) {
					t.Errorf("error %q contains the token", e.Error())
				}
			default:
				if err != nil || !ok || id.User.Username != tt.wantUser || id.AccessType != identity.AccessPersonalAccessToken || id.AgentID != 1 {
					t.Fatalf("want %s accepted, got %+v %v %v", tt.wantUser, id, ok, err)
				}
			}
		})
	}
}

func TestTokenExpiryBoundary(t *testing.T) {
	d, err := Parse("t", []byte(`
users: [{id: 1, username: u}]
tokens: [{user: u, name: n, digest: "`+HashToken("tok")+`", scopes: [k8s_proxy], expires_at: 2030-06-01}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		now  string
		want bool
	}{
		{"2030-05-31T23:59:59Z", true},
		{"2030-06-01T00:00:00Z", false}, // GitLab: the token stops working at 00:00 UTC on expires_at
		{"2031-01-01T00:00:00Z", false},
	} {
		now, _ := time.Parse(time.RFC3339, tt.now)
		d.now = func() time.Time { return now }
		_, ok, _ := d.Authenticate(context.Background(), pat("tok"))
		if ok != tt.want {
			t.Errorf("at %s accepted=%v, want %v", tt.now, ok, tt.want)
		}
	}
}

func TestMemberships(t *testing.T) {
	d := sandboxDir(t)
	type m = identity.Membership
	tests := []struct {
		user string
		want []m
	}{
		{"alice", []m{{Kind: identity.KindProject, ID: 1, Path: "group-1/project-1", AccessLevel: identity.Maintainer}}},
		{"bob", []m{{Kind: identity.KindProject, ID: 2, Path: "group-2/project-2", AccessLevel: identity.Reporter}}},
		// carol is a developer of group-3, the parent of the listed group-3/subgroup.
		{"carol", []m{{Kind: identity.KindGroup, ID: 4, Path: "group-3/subgroup", AccessLevel: identity.Developer}}},
		// dave is only in group-3/subgroup/team: a subgroup's membership never counts upward.
		{"dave", nil},
		// grace is a developer of group-2: she inherits project 2 and is in group 2.
		{"grace", []m{
			{Kind: identity.KindProject, ID: 2, Path: "group-2/project-2", AccessLevel: identity.Developer},
			{Kind: identity.KindGroup, ID: 2, Path: "group-2", AccessLevel: identity.Developer},
		}},
		{"heidi", []m{{Kind: identity.KindProject, ID: 1, Path: "group-1/project-1", AccessLevel: identity.Developer}}},
		// ivan maintains a project inside the listed group-3/subgroup: a group entry never expands into its projects.
		{"ivan", nil},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			u, ok := d.UserByName(tt.user)
			if !ok {
				t.Fatalf("no user %s", tt.user)
			}
			got, err := d.Memberships(context.Background(), u, sandboxListed)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("[%d] got %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestMembershipsHighestWinsAndCase(t *testing.T) {
	d, err := Parse("t", []byte(`
users: [{id: 1, username: u}]
groups: [{id: 1, path: Top}, {id: 2, path: Top/Mid}]
projects: [{id: 9, path: Top/Mid/App}]
memberships:
  - {user: u, group: Top, role: maintainer}
  - {user: u, group: Top/Mid, access_level: 20}
  - {user: u, project: Top/Mid/App, role: guest}
`))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := d.Memberships(context.Background(), identity.User{ID: 1, Username: "u"},
		identity.Listed{Projects: []string{"top/mid/app"}, Groups: []string{"TOP/MID", "nope"}})
	want := []identity.Membership{
		{Kind: identity.KindProject, ID: 9, Path: "top/mid/app", AccessLevel: identity.Maintainer},
		{Kind: identity.KindGroup, ID: 2, Path: "TOP/MID", AccessLevel: identity.Maintainer},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	digest := HashToken("x")
	tests := []struct {
		name, doc, want string
	}{
		{"malformed yaml", "users: [", "did not find expected"},
		{"unknown top-level key", "people: []", "field people not found"},
		{"unknown user field", "users: [{id: 1, username: a, email: x}]", `line 1 column 30: unknown field "email"`},
		{"wrong type", "users: [{id: one, username: a}]", "cannot unmarshal"},
		{"duplicate user id", "users: [{id: 1, username: a}, {id: 1, username: b}]", "users[1].id 1 is used twice"},
		{"duplicate username ignoring case", "users: [{id: 1, username: a}, {id: 2, username: A}]", `users[1].username "A" is used twice`},
		{"bad state", "users: [{id: 1, username: a, state: sleepy}]", `state "sleepy"`},
		{"zero id", "groups: [{id: 0, path: g}]", "groups[0].id must be a positive number"},
		{"bad path", "groups: [{id: 1, path: 'g//h'}]", "is not a full path"},
		{"missing parent group", "groups: [{id: 1, path: a/b}]", `parent group "a" of "a/b" is not in the directory`},
		{"wrong parent", "groups: [{id: 1, path: a}, {id: 2, path: b}, {id: 3, path: a/c, parent: b}]", `parent "b" is not the parent of "a/c"`},
		{"project without group", "projects: [{id: 1, path: g/p}]", `namespace group "g" of "g/p" is not in the directory`},
		{"project at top level", "projects: [{id: 1, path: p}]", "is not a full path like group/project"},
		{"membership unknown user", "groups: [{id: 1, path: g}]\nmemberships: [{user: x, group: g, role: developer}]", `user "x" is not in users`},
		{"membership both targets", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nprojects: [{id: 1, path: g/p}]\nmemberships: [{user: a, group: g, project: g/p, role: developer}]", "exactly one of project or group"},
		{"membership bad role", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: admin}]", `unknown role "admin"`},
		{"membership bad level", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, access_level: 35}]", "access_level 35 is not one of"},
		{"duplicate membership", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: developer}, {user: a, group: G, role: owner}]", "already a member of group G"},
		{"duplicate project membership, apart, by the line reader", "users:\n  - {id: 1, username: a}\n  - {id: 2, username: b}\ngroups:\n  - {id: 1, path: g}\nprojects:\n  - {id: 1, path: g/p}\nmemberships:\n  - {user: a, project: g/p, role: developer}\n  - {user: b, project: g/p, role: developer}\n  - {user: A, project: G/P, role: owner}\n", "line 11: memberships[2]: A is already a member of project G/P"},
		{"repeat only among refused memberships", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: admin}, {user: a, group: g, role: admin}]", `memberships[1]: unknown role "admin"`},
		{"plaintext token", "users: [{id: 1, username: a}]\ntokens: [{user: a, name: n, digest: glpat-xyz}]", `digest must look like "sha256:`},
		{"duplicate digest", "users: [{id: 1, username: a}]\ntokens: [{user: a, name: n, digest: '" + digest + "'}, {user: a, name: m, digest: '" + digest + "'}]", "tokens[1].digest is used twice"},
		{"bad expiry", "users: [{id: 1, username: a}]\ntokens: [{user: a, name: n, digest: '" + digest + "', expires_at: tomorrow}]", `expires_at "tomorrow"`},
		{"duplicate mapping key", "users: [{id: 1, id: 2, username: a}]", "already defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse("dir.yaml", []byte(tt.doc))
			if err == nil || d != nil {
				t.Fatalf("want error containing %q, got %v", tt.want, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "dir.yaml") {
				t.Fatalf("error %q does not contain %q and the file name", err, tt.want)
			}
		})
	}
}

func TestHashTokenMatchesDirectory(t *testing.T) {
	d, err := Parse("t", []byte("users: [{id: 1, username: a}]\ntokens: [{user: a, name: n, scopes: [k8s_proxy], digest: '"+HashToken("s3cret:with:colons")+"'}]"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := d.Authenticate(context.Background(), pat("s3cret:with:colons")); !ok || err != nil {
		t.Fatalf("token from hash-token not accepted: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: developer}]"))
	f.Add([]byte("tokens: [{user: a, digest: x}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz", data)
		if (d == nil) == (err == nil) {
			t.Fatalf("exactly one of directory and error must be set: %v %v", d, err)
		}
	})
}

// TestRepeatedMembershipsNamedOnce: repeats are found after the memberships are
// read (repeatedMemberships); the messages are the ones a set would give: the later
// entry each time, none for entries refused for another reason, none when nothing
// repeats.
func TestRepeatedMembershipsNamedOnce(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want int // "already a member" messages
	}{
		{"three times", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: developer}, {user: a, group: g, role: owner}, {user: a, group: g, role: guest}]", 2},
		{"refused entries do not count", "users: [{id: 1, username: a}]\ngroups: [{id: 1, path: g}]\nmemberships: [{user: a, group: g, role: admin}, {user: a, group: g, role: admin}, {user: a, group: g, role: developer}]", 0},
		{"a project and a group of one id are not a repeat", "users: [{id: 1, username: a}, {id: 2, username: b}]\ngroups: [{id: 7, path: g}]\nprojects: [{id: 7, path: g/p}]\nmemberships: [{user: a, group: g, role: developer}, {user: a, project: g/p, role: developer}, {user: b, group: g, role: admin}]", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("dir.yaml", []byte(tt.doc))
			if err == nil {
				t.Fatal("the directory loaded; every case has an error")
			}
			if got := strings.Count(err.Error(), "already a member"); got != tt.want {
				t.Fatalf("%d repeat messages, want %d:\n%v", got, tt.want, err)
			}
		})
	}
}
