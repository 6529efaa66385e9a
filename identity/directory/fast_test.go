package directory

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// TestFlowLinesAgreeWithYAML: whenever the line reader accepts a file, it reads
// exactly what the YAML decoder reads (entries, values, line numbers); on anything
// it is unsure of it declines and the YAML decoder decides. Each case is one entry
// line in a small file; the interesting ones are those YAML reads differently from
// how they look.
func TestFlowLinesAgreeWithYAML(t *testing.T) {
	const head = "# a directory\nusers:\n  - {id: 1, username: alice}   # trailing comment\n\n"
	tests := []struct {
		name, section, line string
		wantFast            bool // the line reader handles it
	}{
		{"plain user", "users", "{id: 2, username: bob}", true},
		{"user with state", "users", "{id: 2, username: bob, state: blocked}", true},
		{"quoted username", "users", `{id: 2, username: "bob"}`, true},
		{"username yes is a bool to YAML 1.1", "users", "{id: 2, username: yes}", false},
		{"username null", "users", "{id: 2, username: null}", false},
		{"username a number", "users", "{id: 2, username: 123}", false},
		{"id in hex", "users", "{id: 0x10, username: bob}", false},
		{"id with underscores", "users", "{id: 1_0, username: bob}", false},
		{"id quoted", "users", `{id: "2", username: bob}`, false},
		{"unknown field", "users", "{id: 2, username: bob, admin: true}", false},
		{"repeated field", "users", "{id: 2, username: bob, username: eve}", false},
		{"escape in quotes", "users", `{id: 2, username: "b\u006fb"}`, false},
		{"anchor", "users", "{id: 2, username: &a bob}", false},
		{"trailing comma", "users", "{id: 2, username: bob,}", false},
		{"group with parent", "groups", "{id: 5, path: org/team, parent: org}", true},
		{"project", "projects", "{id: 7, path: org/team/app, namespace: org/team}", true},
		{"membership by role", "memberships", "{user: alice, group: org, role: maintainer}", true},
		{"membership by level", "memberships", "{user: alice, project: org/app, access_level: 30}", true},
		{"token", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", scopes: [k8s_proxy, read_api], revoked: true}`, true},
		{"token with empty scopes", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", scopes: []}`, true},
		{"token expiring on a date", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", expires_at: 2027-12-31}`, true},
		{"token expiring at a time", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", expires_at: 2027-12-31T10:00:00+02:00}`, true},
		{"revoked True", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", revoked: True}`, false},
		{"revoked yes", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", revoked: yes}`, false},
		{"scopes not a list", "tokens", `{user: alice, name: laptop, digest: "sha256:ab", scopes: k8s_proxy}`, false},
		{"a comment inside", "users", "{id: 2, username: bob #x}", false},
		{"argon2id password hash", "users", `{id: 2, username: bob, password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaC+/aGFzaGhhc2g"}`, true},
		{"bcrypt password hash", "users", `{id: 2, username: bob, password_hash: "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}`, true},
		{"bcrypt password hash unquoted", "users", `{id: 2, username: bob, password_hash: $2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy}`, false},
		{"password hash a list", "users", `{id: 2, username: bob, password_hash: [a]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := head + tt.section + ":\n  - " + tt.line + "\n"
			if tt.section == "users" {
				doc = head + "  - " + tt.line + "\n"
			}
			compare(t, doc, tt.wantFast)
		})
	}
	for _, tt := range []struct{ name, doc string }{
		{"block mapping", "users:\n  - id: 1\n    username: alice\n"},
		{"unknown section", "people:\n  - {id: 1, username: alice}\n"},
		{"repeated section", "users:\n  - {id: 1, username: alice}\nusers:\n  - {id: 2, username: bob}\n"},
		{"other indentation", "users:\n- {id: 1, username: alice}\n"},
		{"document marker", "---\nusers:\n  - {id: 1, username: alice}\n"},
		{"tab", "users:\n\t- {id: 1, username: alice}\n"},
	} {
		t.Run(tt.name, func(t *testing.T) { compare(t, tt.doc, false) })
	}
	t.Run("empty file", func(t *testing.T) { compare(t, "", true) })
	t.Run("sandbox directory", func(t *testing.T) {
		_, file, _, _ := runtime.Caller(0)
		data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "sandbox", "directory.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		compare(t, string(data), true)
	})
}

// compare checks that the line reader declines doc, or reads what YAML reads.
func compare(t *testing.T, doc string, wantFast bool) {
	t.Helper()
	fast, ok := parseFlowLines(doc)
	if ok != wantFast {
		t.Fatalf("line reader ok=%v, want %v for\n%s", ok, wantFast, doc)
	}
	if !ok {
		return
	}
	slow, err := decodeYAML(doc)
	if err != nil {
		t.Fatalf("the line reader accepted what YAML refuses (%v):\n%s", err, doc)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("line reader and YAML differ on\n%s\nfast %+v\nyaml %+v", doc, fast, slow)
	}
	if !strings.Contains(doc, "\n") && doc != "" {
		t.Fatal("test documents have lines")
	}
}

// FuzzFlowLinesAgreeWithYAML: for any input, when the line reader accepts a file it
// reads exactly what the YAML decoder reads. The directory is read by two parsers, so
// any input they read differently is a finding.
func FuzzFlowLinesAgreeWithYAML(f *testing.F) {
	for _, seed := range []string{
		"users:\n  - {id: 1, username: alice}\n",
		"users:\n  - {id: 1, username: alice, state: blocked}\ngroups:\n  - {id: 5, path: org/team, parent: org}\n",
		"memberships:\n  - {user: alice, project: org/app, access_level: 30}\n",
		`tokens:` + "\n" + `  - {user: alice, name: laptop, digest: "sha256:ab", scopes: [k8s_proxy], expires_at: 2027-12-31, revoked: true}` + "\n",
		"users:\n  - {id: 2, username: \"b\\u006fb\"}\n",
		"users: # c\n  - {id: 1, username: alice}   # trailing\n\n",
		"users:\n  - {id: 1, username: alice, password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFz+/aGFzaGhhc2g\"}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		fast, ok := parseFlowLines(string(doc))
		if !ok {
			return
		}
		slow, err := decodeYAML(string(doc))
		if err != nil {
			t.Fatalf("the line reader accepted what YAML refuses (%v):\n%q", err, doc)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("line reader and YAML differ on\n%q\nfast %+v\nyaml %+v", doc, fast, slow)
		}
	})
}

// A large section is parsed in chunks on every core: the result, line numbers
// included, is the YAML decoder's, whatever sits at the cut (a comment, a blank
// line, an entry with a trailing comment), and a bad line in any chunk leaves the
// whole file to YAML.
func TestChunkedSectionsAgreeWithYAML(t *testing.T) {
	var b strings.Builder
	b.WriteString("# a directory in several large sections\nusers:\n")
	for i := range 9000 {
		if i%3 == 0 { // a password digest, with the ',' '$' '+' '/' of PHC strings, on every third user
			fmt.Fprintf(&b, "  - {id: %d, username: user%d, password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ%d$aGFz+/aGFzaGhhc2hoYXNo\"}\n", i+1, i, i)
			continue
		}
		fmt.Fprintf(&b, "  - {id: %d, username: user%d}\n", i+1, i)
		if i%997 == 0 {
			b.WriteString("  # a comment among the users\n\n")
		}
	}
	b.WriteString("memberships:\n")
	for i := range 20000 {
		fmt.Fprintf(&b, "  - {user: user%d, project: org/p%d, role: developer}   # line %d\n", i%9000, i%300, i)
	}
	doc := b.String()
	plans, ok := planSections(doc)
	if !ok {
		t.Fatal("the plan refused the file")
	}
	if n := len(plans[1].split(4)); n != 4 {
		t.Fatalf("the memberships were cut into %d chunks, want 4", n)
	}
	fast, ok := parseFlowLines(doc)
	if !ok {
		t.Fatal("the line reader refused the file")
	}
	slow, err := decodeYAML(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatal("the chunked line reader and YAML read the file differently")
	}
	if fast.Users[3].PasswordHash == "" || fast.Users[4].PasswordHash != "" {
		t.Fatal("the password digests were not read where they were written")
	}
	if got := fast.Memberships[len(fast.Memberships)-1].line; got != strings.Count(b.String(), "\n") {
		t.Fatalf("the last membership is on line %d, want %d", got, strings.Count(b.String(), "\n"))
	}
	bad := strings.Replace(b.String(), "role: developer}   # line 19999", "role: developer, nope: 1}   # line 19999", 1)
	if bad == b.String() {
		t.Fatal("the test did not plant its bad line")
	}
	if _, ok := parseFlowLines(bad); ok {
		t.Fatal("a bad line in the last chunk was accepted")
	}
}
