package main

import (
	"bytes"
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
