package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the kubegate command line in-process and returns stdout, stderr and
// the process exit code main would use.
func run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	code := 0
	if err := root.Execute(); err != nil {
		errb.WriteString(err.Error())
		code = exitCode(err)
	}
	return out.String(), errb.String(), code
}

const (
	sandboxConfig    = "../../deploy/sandbox/agent-config.yaml"
	sandboxDirectory = "../../deploy/sandbox/directory.yaml"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		file     string
		wantCode int
		wantOut  string
		wantErr  []string
	}{
		{"sandbox config", sandboxConfig, 0, "ok\n", nil},
		{"no user_access warns", write("none.yaml", "ci_access: {}\n"), 0, "ok\n", []string{"no user_access section"}},
		{"every problem listed", write("bad.yaml", "user_access:\n  access_as: {agent: {}, user: {}}\n  groups: [{id: \"\"}]\n"), 1, "",
			[]string{"bad.yaml:2:14: user_access.access_as:", "bad.yaml:3:17: user_access.groups[0].id: is empty", "2 problem(s)"}},
		{"missing file", filepath.Join(dir, "nope.yaml"), 1, "", []string{"nope.yaml: cannot read the agent configuration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, "", "config", "check", tt.file)
			if code != tt.wantCode || out != tt.wantOut {
				t.Fatalf("code=%d out=%q stderr=%q; want %d %q", code, out, errOut, tt.wantCode, tt.wantOut)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
		})
	}
}

func TestExplain(t *testing.T) {
	base := []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory}
	t.Run("alice allowed in user mode", func(t *testing.T) {
		out, errOut, code := run(t, "", append(base, "--user", "alice", "GET", "/api/v1/namespaces/demo/pods?watch=1")...)
		if code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		var d struct {
			Allowed     bool   `json:"allowed"`
			AccessAs    string `json:"access_as"`
			Impersonate struct {
				User   string              `json:"user"`
				Groups []string            `json:"groups"`
				Extra  map[string][]string `json:"extra"`
			} `json:"impersonate"`
			Request map[string]any `json:"request"`
		}
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !d.Allowed || d.AccessAs != "user" || d.Impersonate.User != "gitlab:user:alice" || d.Impersonate.Groups[0] != "gitlab:user" ||
			d.Impersonate.Groups[len(d.Impersonate.Groups)-1] != "gitlab:project_role:1:maintainer" || d.Impersonate.Extra["agent.gitlab.com/username"][0] != "alice" {
			t.Fatalf("unexpected decision %s", out)
		}
		if d.Request["verb"] != "watch" || d.Request["namespace"] != "demo" || d.Request["resource"] != "pods" {
			t.Fatalf("request %v", d.Request)
		}
		if strings.Count(out, "\n") != 1 {
			t.Errorf("want one JSON object on one line, got %q", out)
		}
	})
	t.Run("bob denied without impersonation", func(t *testing.T) {
		out, _, code := run(t, "", append(base, "--user", "bob", "GET", "/api/v1/pods")...)
		if code != 0 || !strings.Contains(out, `"allowed":false`) || !strings.Contains(out, `"reason":"not_a_member"`) || strings.Contains(out, "impersonate") {
			t.Fatalf("code %d, %s", code, out)
		}
	})
	t.Run("operator module denial carries its message", func(t *testing.T) {
		out, _, code := run(t, "", append(base, "--policy", "../../policy/testdata/operator", "--user", "alice", "GET", "/api/v1/namespaces/kube-system/secrets")...)
		if code != 0 || !strings.Contains(out, `"reason":"policy_denied"`) || !strings.Contains(out, "reading secrets in kube-system") {
			t.Fatalf("code %d, %s", code, out)
		}
	})
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown user", []string{"--user", "zed", "GET", "/api"}, `user "zed" is not an active user`},
		{"blocked user", []string{"--user", "mallory", "GET", "/api"}, `user "mallory" is not an active user`},
		{"bad path", []string{"--user", "alice", "GET", "api/v1"}, "not a valid origin-form request target"},
		{"bad access type", []string{"--user", "alice", "--access-type", "password", "GET", "/api"}, `--access-type "password"`},
		{"ambiguous query, as the gateway refuses it", []string{"--user", "alice", "GET", "/api/v1/pods?watch=false&%77atch=true"}, "the gateway refuses this query (ambiguous_query)"},
		{"repeated watch", []string{"--user", "alice", "GET", "/api/v1/pods?watch=false&watch=true"}, "watch appears 2 times"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, "", append(base, tt.args...)...)
			if code != 1 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code=%d out=%q err=%q, want %q", code, out, errOut, tt.want)
			}
		})
	}
}

func TestHashToken(t *testing.T) {
	out, _, code := run(t, "kg-sandbox-alice-token\n", "directory", "hash-token", "--stdin")
	if code != 0 || out != "sha256:23a0d2a4bea170a62c0a9aa8e5faec532776ff19edbd83e441a7471e1ba5f68a\n" {
		t.Fatalf("code %d out %q", code, out)
	}
	if _, errOut, code := run(t, "", "directory", "hash-token", "--stdin"); code != 1 || !strings.Contains(errOut, "no token on stdin") {
		t.Fatalf("code %d err %q", code, errOut)
	}
	a, _, _ := run(t, "", "directory", "hash-token")
	b, _, _ := run(t, "", "directory", "hash-token")
	if a == b || !strings.HasPrefix(a, "token:  kgpat-") || !strings.Contains(a, "digest: sha256:") {
		t.Fatalf("generated tokens %q %q", a, b)
	}
}
