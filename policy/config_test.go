package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAgentConfigValid(t *testing.T) {
	tests := []struct {
		name     string
		doc      string
		present  bool
		accessAs AccessAs
		projects []string
		groups   []string
	}{
		{name: "empty file", doc: "", accessAs: AccessAsAgent},
		{name: "only other keys", doc: "ci_access:\n  projects: [{id: a/b}]\ngitops: {}\nobservability: {logging: {level: debug}}\n", accessAs: AccessAsAgent},
		{name: "seed agent example", present: true, accessAs: AccessAsAgent,
			doc:      "user_access:\n  access_as:\n    agent: {}\n  projects:\n  - id: group-1/project-1\n  - id: group-2/project-2\n  groups:\n  - id: group-2\n  - id: group-3/subgroup\n",
			projects: []string{"group-1/project-1", "group-2/project-2"}, groups: []string{"group-2", "group-3/subgroup"}},
		{name: "user mode", doc: "user_access: {access_as: {user: {}}, groups: [{id: g}]}", present: true, accessAs: AccessAsUser, groups: []string{"g"}},
		{name: "user mode null body", doc: "user_access: {access_as: {user: }, groups: [{id: g}]}", present: true, accessAs: AccessAsUser, groups: []string{"g"}},
		{name: "access_as missing means agent", doc: "user_access: {projects: [{id: a/b}]}", present: true, accessAs: AccessAsAgent, projects: []string{"a/b"}},
		{name: "access_as empty means agent", doc: "user_access: {access_as: {}, projects: [{id: a/b}]}", present: true, accessAs: AccessAsAgent, projects: []string{"a/b"}},
		{name: "empty user_access", doc: "user_access:\n", present: true, accessAs: AccessAsAgent},
		{name: "other keys beside user_access", doc: "gitops: {manifest_projects: [{id: x/y}]}\nuser_access: {access_as: {agent: {}}, projects: [{id: x/y}]}\nremote_development: {enabled: true}", present: true, accessAs: AccessAsAgent, projects: []string{"x/y"}},
		{name: "anchors resolve", doc: "p: &p {id: a/b}\nuser_access: {projects: [*p]}", present: true, accessAs: AccessAsAgent, projects: []string{"a/b"}},
		{name: "exactly 500 projects", doc: listOf("projects", 500), present: true, accessAs: AccessAsAgent, projects: paths(500)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseAgentConfig("config.yaml", []byte(tt.doc))
			if err != nil {
				t.Fatalf("unexpected error:\n%v", err)
			}
			if cfg.Present != tt.present || cfg.UserAccess.AccessAs != tt.accessAs {
				t.Errorf("present=%v access_as=%s, want %v %s", cfg.Present, cfg.UserAccess.AccessAs, tt.present, tt.accessAs)
			}
			if got := entryPaths(cfg.UserAccess.Projects); !equal(got, tt.projects) {
				t.Errorf("projects %v, want %v", got, tt.projects)
			}
			if got := entryPaths(cfg.UserAccess.Groups); !equal(got, tt.groups) {
				t.Errorf("groups %v, want %v", got, tt.groups)
			}
		})
	}
}

func TestParseAgentConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // each problem, as "line:col: field: part of message"
	}{
		{name: "malformed yaml", doc: "user_access: [\n", want: []string{"config.yaml: not valid YAML"}},
		{name: "root is a list", doc: "- a\n", want: []string{"config.yaml:1:1: the agent configuration must be a mapping"}},
		{name: "user_access is a list", doc: "user_access: [a]", want: []string{":1:14: user_access: must be a mapping"}},
		{name: "unknown field in user_access", doc: "user_access:\n  access_as: {agent: {}}\n  namespaces: []\n", want: []string{":3:3: user_access.namespaces: unknown field"}},
		{name: "two access_as keys", doc: "user_access:\n  access_as: {agent: {}, user: {}}\n", want: []string{":2:14: user_access.access_as: has 2 keys; give exactly one"}},
		{name: "unknown access_as key", doc: "user_access:\n  access_as: {group: {}}\n", want: []string{":2:15: user_access.access_as.group: unknown field"}},
		{name: "non-empty agent body", doc: "user_access:\n  access_as:\n    agent: {foo: 1}\n", want: []string{":3:12: user_access.access_as.agent: must be empty"}},
		{name: "non-empty user body", doc: "user_access:\n  access_as:\n    user: {impersonate: true}\n", want: []string{":3:11: user_access.access_as.user: must be empty"}},
		{name: "access_as scalar", doc: "user_access: {access_as: user}", want: []string{"user_access.access_as: must be {agent: {}} or {user: {}}"}},
		{name: "projects not a list", doc: "user_access: {projects: {id: a/b}}", want: []string{"user_access.projects: must be a list"}},
		{name: "unknown field in entry", doc: "user_access:\n  projects:\n  - id: a/b\n    default_namespace: x\n", want: []string{":4:5: user_access.projects[0].default_namespace: unknown field"}},
		{name: "empty id", doc: "user_access:\n  groups:\n  - id: a\n  - id: \"\"\n", want: []string{":4:9: user_access.groups[1].id: is empty"}},
		{name: "missing id", doc: "user_access: {groups: [{}]}", want: []string{"user_access.groups[0].id: is missing"}},
		{name: "numeric id", doc: "user_access: {projects: [{id: 123}]}", want: []string{"user_access.projects[0].id: must be the project's full path as a string, not int 123"}},
		{name: "project without namespace", doc: "user_access: {projects: [{id: project}]}", want: []string{`"project" is not a full project path`}},
		{name: "malformed path", doc: "user_access: {groups: [{id: /g}, {id: g/}, {id: g//h}, {id: g h}, {id: ../g}]}",
			want: []string{"groups[0].id", "groups[1].id", "groups[2].id", "groups[3].id", "groups[4].id"}},
		{name: "duplicate project ignoring case", doc: "user_access:\n  projects:\n  - id: A/B\n  - id: x/y\n  - id: a/b\n", want: []string{`:5:9: user_access.projects[2].id: "a/b" is listed twice (first at line 3)`}},
		{name: "duplicate group", doc: "user_access: {groups: [{id: g}, {id: g}]}", want: []string{`user_access.groups[1].id: "g" is listed twice`}},
		{name: "duplicate key", doc: "user_access:\n  projects: []\n  projects: []\n", want: []string{":3:3: user_access.projects: appears twice"}},
		{name: "duplicate user_access", doc: "user_access: {}\nuser_access: {}\n", want: []string{":2:1: user_access: appears twice"}},
		{name: "501 projects", doc: listOf("projects", 501), want: []string{"user_access.projects: lists 501 projects; the limit is 500"}},
		{name: "501 groups", doc: listOf("groups", 501), want: []string{"user_access.groups: lists 501 groups; the limit is 500"}},
		{name: "two documents", doc: "user_access: {}\n---\nuser_access: {}\n", want: []string{"more than one YAML document"}},
		{name: "every problem at once", doc: "user_access:\n  access_as: {agent: {}, user: {}}\n  projects: [{id: \"\"}]\n  bogus: 1\n",
			want: []string{":2:14: user_access.access_as", ":3:19: user_access.projects[0].id", ":4:3: user_access.bogus"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseAgentConfig("config.yaml", []byte(tt.doc))
			var ce *ConfigError
			if !errors.As(err, &ce) || cfg != nil {
				t.Fatalf("want a ConfigError, got cfg=%v err=%v", cfg, err)
			}
			if len(ce.Problems) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ce.Problems), len(tt.want), err)
			}
			for i, w := range tt.want {
				if got := ce.Problems[i].String(); !strings.Contains(got, w) || !strings.HasPrefix(got, "config.yaml") {
					t.Errorf("problem %d = %q, want it to contain %q", i, got, w)
				}
			}
		})
	}
}

func TestLoadAgentConfigFileErrors(t *testing.T) {
	_, err := LoadAgentConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml: cannot read the agent configuration: no such file") {
		t.Fatalf("got %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxConfigSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAgentConfig(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("got %v", err)
	}
}

func TestSandboxAgentConfigIsValid(t *testing.T) {
	cfg, err := LoadAgentConfig("../deploy/sandbox/agent-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UserAccess.AccessAs != AccessAsUser || len(cfg.UserAccess.Projects) != 2 || len(cfg.UserAccess.Groups) != 2 {
		t.Fatalf("unexpected sandbox config %+v", cfg.UserAccess)
	}
}

func FuzzParseAgentConfig(f *testing.F) {
	f.Add([]byte("user_access:\n  access_as:\n    user: {}\n  projects:\n  - id: group-1/project-1\n  groups:\n  - id: group-2\n"))
	f.Add([]byte("user_access: {access_as: {agent: {}, user: {}}, projects: [{id: 1}]}"))
	f.Add([]byte("a: &a [*a]\nuser_access: {groups: *a}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseAgentConfig("fuzz.yaml", data)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("exactly one of config and error must be set: %v %v", cfg, err)
		}
		if cfg == nil {
			return
		}
		ua := cfg.UserAccess
		if ua.AccessAs != AccessAsAgent && ua.AccessAs != AccessAsUser || len(ua.Projects) > MaxProjects || len(ua.Groups) > MaxGroups {
			t.Fatalf("accepted an invalid config: %+v", ua)
		}
		for _, e := range append(append([]Entry{}, ua.Projects...), ua.Groups...) {
			if e.Path == "" || e.Key != strings.ToLower(e.Path) {
				t.Fatalf("bad entry %+v", e)
			}
		}
	})
}

func listOf(kind string, n int) string {
	var b strings.Builder
	b.WriteString("user_access:\n  " + kind + ":\n")
	for _, p := range paths(n) {
		fmt.Fprintf(&b, "  - id: %s\n", p)
	}
	return b.String()
}

func paths(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("g%d/p%d", i, i)
	}
	return out
}

func entryPaths(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestTenTimesRealSizeAgentConfig: an agent configuration listing ten times the
// real size (5,000 projects and 5,000 groups) is refused with a message per list
// naming the count, the limit and what to do, before any entry is validated.
func TestTenTimesRealSizeAgentConfig(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("user_access:\n  access_as: {user: {}}\n  projects:\n")
	for i := range 10 * MaxProjects {
		fmt.Fprintf(&doc, "  - id: org-%02d/team-%02d/project-%d\n", i%15, i%10, i)
	}
	doc.WriteString("  groups:\n")
	for i := range 10 * MaxGroups {
		fmt.Fprintf(&doc, "  - id: org-%02d/team-%02d/squad-%d\n", i%15, i%10, i)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(doc.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadAgentConfig(file)
	for _, want := range []string{
		"user_access.projects: lists 5000 projects; the limit is 500",
		"user_access.groups: lists 5000 groups; the limit is 500",
		"split them across agents or list a parent group instead",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("LoadAgentConfig(10× config) = %v; want it to say %q", err, want)
		}
	}
}
