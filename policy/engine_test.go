package policy

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
)

var update = flag.Bool("update", false, "rewrite golden files")

var sandboxAgent = Agent{ID: 1, ConfigProjectID: 1}

func mustConfig(t testing.TB, doc string) *AgentConfig {
	t.Helper()
	cfg, err := ParseAgentConfig("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustEngine(t testing.TB, cfg *AgentConfig, mods ...Module) *Engine {
	t.Helper()
	e, err := NewEngine(context.Background(), sandboxAgent, cfg, mods)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustRequest(t testing.TB, method, target string) Request {
	t.Helper()
	r, err := ParseRequest(method, target)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func who(name string, id int64) identity.Identity {
	return identity.Identity{User: identity.User{ID: id, Username: name}, AccessType: identity.AccessPersonalAccessToken, AgentID: 1}
}

func proj(id int64, path string, l identity.AccessLevel) identity.Membership {
	return identity.Membership{Kind: identity.KindProject, ID: id, Path: path, AccessLevel: l}
}

func grp(id int64, path string, l identity.AccessLevel) identity.Membership {
	return identity.Membership{Kind: identity.KindGroup, ID: id, Path: path, AccessLevel: l}
}

const seedUserConfig = `
user_access:
  access_as:
    user: {}
  projects:
    - id: group-1/project-1
    - id: group-2/project-2
  groups:
    - id: group-2
    - id: group-3/subgroup
`

// TestDecisionAccessRules covers access.md §3 bullet by bullet.
func TestDecisionAccessRules(t *testing.T) {
	userMode := mustConfig(t, seedUserConfig)
	agentMode := mustConfig(t, strings.Replace(seedUserConfig, "user: {}", "agent: {}", 1))
	pods := mustRequest(t, "GET", "/api/v1/namespaces/default/pods")
	tests := []struct {
		name       string
		cfg        *AgentConfig
		ms         []identity.Membership
		wantAllow  bool
		wantReason Reason
		wantGroups []string // user mode only, after gitlab:user
	}{
		{name: "no memberships", cfg: userMode, wantReason: ReasonNotMember},
		{name: "reporter of a listed project is not enough", cfg: userMode, ms: []identity.Membership{proj(2, "group-2/project-2", identity.Reporter)}, wantReason: ReasonNotMember},
		{name: "guest and planner are not enough", cfg: userMode, ms: []identity.Membership{proj(1, "group-1/project-1", identity.Guest), grp(2, "group-2", identity.Planner)}, wantReason: ReasonNotMember},
		{name: "developer of a listed project", cfg: userMode, ms: []identity.Membership{proj(1, "group-1/project-1", identity.Developer)}, wantAllow: true,
			wantGroups: []string{"gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter", "gitlab:project_role:1:developer"}},
		{name: "owner gets every role", cfg: userMode, ms: []identity.Membership{grp(4, "group-3/subgroup", identity.Owner)}, wantAllow: true,
			wantGroups: []string{"gitlab:group_role:4:guest", "gitlab:group_role:4:planner", "gitlab:group_role:4:reporter", "gitlab:group_role:4:developer", "gitlab:group_role:4:maintainer", "gitlab:group_role:4:owner"}},
		{name: "unlisted entries do not count", cfg: userMode, ms: []identity.Membership{proj(9, "group-9/other", identity.Owner), grp(3, "group-3", identity.Owner)}, wantReason: ReasonNotMember},
		{name: "paths compare case-insensitively", cfg: userMode, ms: []identity.Membership{proj(1, "GROUP-1/Project-1", identity.Developer)}, wantAllow: true,
			wantGroups: []string{"gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter", "gitlab:project_role:1:developer"}},
		{name: "only qualifying entries become groups", cfg: userMode, ms: []identity.Membership{proj(1, "group-1/project-1", identity.Reporter), grp(2, "group-2", identity.Developer)}, wantAllow: true,
			wantGroups: []string{"gitlab:group_role:2:guest", "gitlab:group_role:2:planner", "gitlab:group_role:2:reporter", "gitlab:group_role:2:developer"}},
		{name: "agent mode allows without impersonation", cfg: agentMode, ms: []identity.Membership{proj(1, "group-1/project-1", identity.Maintainer)}, wantAllow: true},
		{name: "agent mode still requires developer", cfg: agentMode, ms: []identity.Membership{proj(1, "group-1/project-1", identity.Reporter)}, wantReason: ReasonNotMember},
		{name: "config without user_access grants nobody", cfg: mustConfig(t, "ci_access: {}"), ms: []identity.Membership{proj(1, "group-1/project-1", identity.Owner)}, wantReason: ReasonNotMember},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustEngine(t, tt.cfg)
			d, err := e.Decide(context.Background(), Input{Identity: who("alice", 1), Memberships: tt.ms, Request: pods})
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tt.wantAllow {
				t.Fatalf("allowed=%v (%s: %s), want %v", d.Allowed, d.Reason, d.Message, tt.wantAllow)
			}
			if !d.Allowed {
				if d.Reason != tt.wantReason || d.Impersonate != nil || d.Message == "" {
					t.Fatalf("denial %+v, want reason %s with a message and no identity", d, tt.wantReason)
				}
				return
			}
			if d.AccessAs != tt.cfg.UserAccess.AccessAs {
				t.Fatalf("access_as %s, want %s", d.AccessAs, tt.cfg.UserAccess.AccessAs)
			}
			if d.AccessAs == AccessAsAgent {
				if d.Impersonate != nil {
					t.Fatalf("agent mode must not impersonate: %+v", d.Impersonate)
				}
				return
			}
			want := append([]string{"gitlab:user"}, tt.wantGroups...)
			if got := d.Impersonate.Groups(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("groups\n got %v\nwant %v", got, want)
			}
			if d.Impersonate.User() != "gitlab:user:alice" {
				t.Errorf("user %q", d.Impersonate.User())
			}
			wantExtra := map[string][]string{ExtraAgentID: {"1"}, ExtraUsername: {"alice"}, ExtraAccessType: {"personal_access_token"}, ExtraConfigProjectID: {"1"}}
			if fmt.Sprint(d.Impersonate.Extra()) != fmt.Sprint(wantExtra) {
				t.Errorf("extra %v, want %v", d.Impersonate.Extra(), wantExtra)
			}
		})
	}
}

// TestSeedExample is the worked example of GitLab's documentation, resolved through
// the sandbox directory: a member of only group-1 gets only project 1 roles; a member
// of group-2 gets both project 2 and group 2 roles.
func TestSeedExample(t *testing.T) {
	dir, err := directory.Load("../deploy/sandbox/directory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := mustEngine(t, mustConfig(t, seedUserConfig))
	for _, tt := range []struct {
		user   string
		prefix []string // every group must start with one of these
		want   int      // number of groups after gitlab:user
	}{
		{"heidi", []string{"gitlab:project_role:1:"}, 4},
		{"grace", []string{"gitlab:project_role:2:", "gitlab:group_role:2:"}, 8},
	} {
		u, _ := dir.UserByName(tt.user)
		ms, _ := dir.Memberships(context.Background(), u, e.Listed())
		d, err := e.Decide(context.Background(), Input{Identity: identity.Identity{User: u, AccessType: identity.AccessPersonalAccessToken, AgentID: 1}, Memberships: ms})
		if err != nil || !d.Allowed {
			t.Fatalf("%s: %+v %v", tt.user, d, err)
		}
		groups := d.Impersonate.Groups()[1:]
		if len(groups) != tt.want {
			t.Fatalf("%s: groups %v, want %d", tt.user, groups, tt.want)
		}
		for _, g := range groups {
			ok := false
			for _, p := range tt.prefix {
				ok = ok || strings.HasPrefix(g, p)
			}
			if !ok {
				t.Errorf("%s: unexpected group %s", tt.user, g)
			}
		}
	}
}

// TestImpersonationGolden pins the exact identity (order included) for every sandbox user.
func TestImpersonationGolden(t *testing.T) {
	dir, err := directory.Load("../deploy/sandbox/directory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadAgentConfig("../deploy/sandbox/agent-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := mustEngine(t, cfg)
	for _, name := range []string{"alice", "bob", "carol", "dave", "grace", "heidi", "ivan"} {
		t.Run(name, func(t *testing.T) {
			u, _ := dir.UserByName(name)
			ms, _ := dir.Memberships(context.Background(), u, e.Listed())
			d, err := e.Decide(context.Background(), Input{Identity: identity.Identity{User: u, AccessType: identity.AccessPersonalAccessToken, AgentID: 1}, Memberships: ms,
				Request: mustRequest(t, "GET", "/api/v1/namespaces/demo/pods")})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.MarshalIndent(d, "", "  ")
			golden := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -run Golden -update to create it)", err)
			}
			if string(want) != string(got)+"\n" {
				t.Fatalf("decision differs from %s:\n got %s\nwant %s", golden, got, want)
			}
		})
	}
}

func TestOperatorModules(t *testing.T) {
	mods, err := LoadModules("testdata/operator")
	if err != nil {
		t.Fatal(err)
	}
	e := mustEngine(t, mustConfig(t, seedUserConfig), mods...)
	maint := []identity.Membership{proj(1, "group-1/project-1", identity.Maintainer)}
	dev2 := []identity.Membership{grp(2, "group-2", identity.Developer)}
	tests := []struct {
		name      string
		ms        []identity.Membership
		method    string
		target    string
		wantAllow bool
		wantMsg   string
	}{
		{"exec denied for group 2 developers", dev2, "POST", "/api/v1/namespaces/demo/pods/web/exec?command=sh", false, "exec is not allowed for members of group-2"},
		{"exec via GET upgrade denied too", dev2, "GET", "/api/v1/namespaces/demo/pods/web/exec?command=sh&stdin=true", false, "exec is not allowed"},
		{"other requests of group 2 pass", dev2, "GET", "/api/v1/namespaces/demo/pods", true, ""},
		{"exec for project 1 maintainers passes", maint, "POST", "/api/v1/namespaces/demo/pods/web/exec", true, ""},
		{"kube-system secrets denied for everyone", maint, "GET", "/api/v1/namespaces/kube-system/secrets", false, "secrets in kube-system"},
		{"denials accumulate", dev2, "POST", "/api/v1/namespaces/kube-system/pods/x/exec", false, "exec is not allowed for members of group-2; no exec into kube-system"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.Decide(context.Background(), Input{Identity: who("alice", 1), Memberships: tt.ms, Request: mustRequest(t, tt.method, tt.target)})
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tt.wantAllow {
				t.Fatalf("allowed=%v %+v", d.Allowed, d)
			}
			if !d.Allowed && (d.Reason != ReasonPolicyDenied || !strings.Contains(d.Message, tt.wantMsg) || d.Impersonate != nil) {
				t.Fatalf("denial %+v, want policy_denied with %q", d, tt.wantMsg)
			}
		})
	}
}

// TestOperatorModulesCannotWiden tries every way an operator module might turn a
// built-in denial into an allow, or fail open.
func TestOperatorModulesCannotWiden(t *testing.T) {
	notMember := []identity.Membership{proj(2, "group-2/project-2", identity.Reporter)}
	member := []identity.Membership{proj(1, "group-1/project-1", identity.Developer)}
	tests := []struct {
		name      string
		src       string
		ms        []identity.Membership
		loadErr   string // compile refused
		wantAllow bool
		wantErr   bool
	}{
		{name: "allow rule in operator package is ignored", ms: notMember,
			src: "package kubegate.operator.x\nallow := true\ndecision := {\"allowed\": true}\ndeny contains \"m\" if false"},
		{name: "module in built-in package refused", loadErr: "operator modules must declare package kubegate.operator.<name>",
			src: "package kubegate.builtin\nallowed := true"},
		{name: "module at operator root refused", loadErr: "must declare package kubegate.operator.<name>",
			src: "package kubegate.operator\ndeny := set()"},
		{name: "module elsewhere refused", loadErr: "is not allowed",
			src: "package authz\nallow := true"},
		{name: "deny as a boolean refused", loadErr: "deny must be written deny contains msg",
			src: "package kubegate.operator.x\ndeny := true"},
		{name: "deny as a string refused", loadErr: "deny must be written deny contains msg",
			src: "package kubegate.operator.x\ndeny := \"no\""},
		{name: "deny as an object refused", loadErr: "must be written deny contains msg",
			src: "package kubegate.operator.x\ndeny[msg] if { msg := \"no\" }"},
		{name: "deny with a ref head refused", loadErr: "must be written deny contains msg",
			src: "package kubegate.operator.x\ndeny.pods contains \"no\" if true"},
		{name: "module without deny refused", loadErr: "no module defines deny",
			src: "package kubegate.operator.x\nallow := true"},
		{name: "deny with an empty message still denies", ms: member,
			src: "package kubegate.operator.x\ndeny contains \"\" if true"},
		{name: "deny with non-string members still denies", ms: member,
			src: "package kubegate.operator.x\ndeny contains 42 if true"},
		{name: "runtime error denies", ms: member, wantErr: true,
			src: "package kubegate.operator.x\ndeny contains msg if { msg := sprintf(\"%d\", [to_number(\"x\")]) }"},
		{name: "conflict denies", ms: member, wantErr: true,
			src: "package kubegate.operator.x\nv := 1 if true\nv := 2 if true\ndeny contains \"m\" if v > 5"},
		{name: "empty deny lets the built-in decision stand", ms: member, wantAllow: true,
			src: "package kubegate.operator.x\ndeny contains \"m\" if false"},
		{name: "syntax error refused", loadErr: "rego_parse_error",
			src: "package kubegate.operator.x\ndeny contains"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := NewEngine(context.Background(), sandboxAgent, mustConfig(t, seedUserConfig), []Module{{File: "m.rego", Source: tt.src}})
			if tt.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.loadErr) {
					t.Fatalf("want load error %q, got %v", tt.loadErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := e.Decide(context.Background(), Input{Identity: who("alice", 1), Memberships: tt.ms, Request: mustRequest(t, "GET", "/api/v1/pods")})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err=%v, wantErr %v", err, tt.wantErr)
			}
			if d.Allowed != tt.wantAllow {
				t.Fatalf("allowed=%v %+v", d.Allowed, d)
			}
			if err != nil && d.Reason != ReasonPolicyError {
				t.Fatalf("reason %s, want policy_error", d.Reason)
			}
		})
	}
}

func TestLoadModulesErrors(t *testing.T) {
	if _, err := LoadModules(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no .rego files") {
		t.Fatalf("got %v", err)
	}
	if _, err := LoadModules(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("got %v", err)
	}
	if mods, err := LoadModules(""); mods != nil || err != nil {
		t.Fatalf("empty dir means no modules, got %v %v", mods, err)
	}
}

// TestLoadModulesConfigMapVolume: a module mounted from a ConfigMap (the kubelet's
// layout: the file in ..<timestamp>/, ..data linking to it, the name linking
// through ..data) is loaded once, from its name.
func TestLoadModulesConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_01_01_00_00_00.000000001")
	src := "package kubegate.operator.once\n\ndeny contains \"no\" if input.request.verb == \"delete\"\n"
	if err := os.MkdirAll(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "once.rego"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "once.rego"), filepath.Join(dir, "once.rego")); err != nil {
		t.Fatal(err)
	}
	mods, err := LoadModules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 1 || mods[0].File != filepath.Join(dir, "once.rego") {
		t.Fatalf("loaded %v, want once.rego once", mods)
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		method, target string
		want           Request
	}{
		{"GET", "/api/v1/namespaces/demo/pods", Request{Verb: "list", APIVersion: "v1", Resource: "pods", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods"}},
		{"GET", "/api/v1/namespaces/demo/pods?watch=true", Request{Verb: "watch", APIVersion: "v1", Resource: "pods", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods"}},
		{"GET", "/api/v1/namespaces/demo/pods/web/log?follow=true", Request{Verb: "get", APIVersion: "v1", Resource: "pods", Subresource: "log", Name: "web", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods/web/log"}},
		{"POST", "/api/v1/namespaces/demo/pods/web/exec?command=sh", Request{Verb: "create", APIVersion: "v1", Resource: "pods", Subresource: "exec", Name: "web", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods/web/exec"}},
		{"POST", "/apis/apps/v1/namespaces/demo/deployments", Request{Verb: "create", APIGroup: "apps", APIVersion: "v1", Resource: "deployments", Namespace: "demo", IsResourceRequest: true, Path: "/apis/apps/v1/namespaces/demo/deployments"}},
		{"DELETE", "/api/v1/namespaces/demo/pods", Request{Verb: "deletecollection", APIVersion: "v1", Resource: "pods", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods"}},
		// The API server itself reports a namespace object's own name as its namespace.
		{"GET", "/api/v1/namespaces/demo", Request{Verb: "get", APIVersion: "v1", Resource: "namespaces", Name: "demo", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo"}},
		{"GET", "/version", Request{Verb: "get", Path: "/version"}},
		{"GET", "/api/v1/namespaces/demo/pods/%65xec", Request{Verb: "get", APIVersion: "v1", Resource: "pods", Name: "exec", Namespace: "demo", IsResourceRequest: true, Path: "/api/v1/namespaces/demo/pods/exec"}},
		{"GET", "/api/v1/pods?gitlab-csrf-token=secret&watch=1", Request{Verb: "watch", APIVersion: "v1", Resource: "pods", IsResourceRequest: true, Path: "/api/v1/pods"}},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			got, err := ParseRequest(tt.method, tt.target)
			if err != nil || got != tt.want {
				t.Fatalf("got %+v %v\nwant %+v", got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "api/v1/pods", "http://x/api", "/api/v1/watch"} {
		if _, err := ParseRequest("GET", bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

// TestIdentityCacheKeyIsExact: the per-identity decision cache must never hand one
// input another's answer. Each pair differs in one thing the built-in policy reads.
func TestIdentityCacheKeyIsExact(t *testing.T) {
	e := mustEngine(t, mustConfig(t, seedUserConfig))
	pods := mustRequest(t, "GET", "/api/v1/pods")
	decide := func(id identity.Identity, ms ...identity.Membership) Decision {
		t.Helper()
		d, err := e.Decide(context.Background(), Input{Identity: id, Memberships: ms, Request: pods})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	dev := proj(1, "group-1/project-1", identity.Developer)
	alice := who("alice", 1)

	// A demotion from Developer to Reporter takes effect at once, cache or not.
	if d := decide(alice, dev); !d.Allowed {
		t.Fatalf("developer: %+v", d)
	}
	if d := decide(alice, proj(1, "group-1/project-1", identity.Reporter)); d.Allowed {
		t.Fatal("a demoted user kept a cached allow")
	}
	// A promotion changes the groups.
	if d := decide(alice, proj(1, "group-1/project-1", identity.Maintainer)); d.Impersonate.Groups()[len(d.Impersonate.Groups())-1] != "gitlab:project_role:1:maintainer" {
		t.Fatalf("promotion not reflected: %v", d.Impersonate.Groups())
	}
	// The same user through another credential type gets that access_type.
	oidc := alice
	oidc.AccessType = identity.AccessOIDCIDToken
	if d := decide(oidc, dev); d.Impersonate.Extra()[ExtraAccessType][0] != "oidc_id_token" {
		t.Fatalf("access_type %v", d.Impersonate.Extra()[ExtraAccessType])
	}
	if d := decide(alice, dev); d.Impersonate.Extra()[ExtraAccessType][0] != "personal_access_token" {
		t.Fatalf("access_type %v", d.Impersonate.Extra()[ExtraAccessType])
	}
	// Another username with the same id (a rename) is another identity.
	if d := decide(who("alice2", 1), dev); d.Impersonate.User() != "gitlab:user:alice2" {
		t.Fatalf("user %s", d.Impersonate.User())
	}
	// Another entry with the same level, and a path that looks like a key separator.
	if d := decide(alice, grp(4, "group-3/subgroup", identity.Developer)); !strings.HasPrefix(d.Impersonate.Groups()[1], "gitlab:group_role:4:") {
		t.Fatalf("groups %v", d.Impersonate.Groups())
	}
	if d := decide(alice, proj(1, "group-1/project-1|30:x", identity.Developer)); d.Allowed {
		t.Fatal("an unlisted path that embeds a key separator was allowed")
	}
}
