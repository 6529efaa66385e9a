package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity/directory"
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

func TestHashPassword(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		wantPrefix  string
		wantErr     string
	}{
		{name: "argon2id by default", stdin: "alice-sandbox-password\n", wantPrefix: "$argon2id$v=19$m=19456,t=2,p=1$"},
		{name: "without a newline", stdin: "alice-sandbox-password", wantPrefix: "$argon2id$v=19$m=19456,t=2,p=1$"},
		{name: "bcrypt", stdin: "alice-sandbox-password\r\n", args: []string{"--algorithm", "bcrypt", "--bcrypt-cost", "4"}, wantPrefix: "$2a$04$"},
		{name: "empty", stdin: "\n", wantErr: "no password on stdin"},
		{name: "nothing", stdin: "", wantErr: "no password on stdin"},
		{name: "unknown algorithm", stdin: "pw\n", args: []string{"--algorithm", "md5"}, wantErr: `--algorithm "md5"`},
		{name: "cost without bcrypt", stdin: "pw\n", args: []string{"--bcrypt-cost", "12"}, wantErr: "--bcrypt-cost is for --algorithm bcrypt"},
		{name: "bcrypt cost too high", stdin: "pw\n", args: []string{"--algorithm", "bcrypt", "--bcrypt-cost", "20"}, wantErr: "above 13"},
		{name: "bcrypt over 72 bytes", stdin: strings.Repeat("p", 73) + "\n", args: []string{"--algorithm", "bcrypt", "--bcrypt-cost", "4"}, wantErr: "72 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, tt.stdin, append([]string{"directory", "hash-password"}, tt.args...)...)
			if tt.wantErr != "" {
				if code != 1 || out != "" || !strings.Contains(errOut, tt.wantErr) {
					t.Fatalf("code %d out %q err %q, want %q", code, out, errOut, tt.wantErr)
				}
				return
			}
			if code != 0 || !strings.HasPrefix(out, tt.wantPrefix) {
				t.Fatalf("code %d out %q err %q", code, out, errOut)
			}
			// What it prints, the directory accepts, and the password checks.
			doc := fmt.Sprintf("users:\n  - {id: 1, username: alice, password_hash: %q}\n", strings.TrimSpace(out))
			d, err := directory.Parse("dir.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.CheckPassword(context.Background(), "alice", "alice-sandbox-password"); err != nil {
				t.Fatalf("the printed digest does not check: %v", err)
			}
		})
	}
}

type fakeTerminal struct{ answers []string }

func (f *fakeTerminal) ReadPassword() ([]byte, error) {
	if len(f.answers) == 0 {
		return nil, io.EOF
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	return []byte(a), nil
}

func TestReadNewPasswordFromTerminal(t *testing.T) {
	tests := []struct {
		name    string
		answers []string
		want    string
		wantErr string
	}{
		{name: "asked twice", answers: []string{"s3cret-pass", "s3cret-pass"}, want: "s3cret-pass"},
		{name: "the two differ", answers: []string{"s3cret-pass", "s3cret-pasS"}, wantErr: "the two passwords differ"},
		{name: "empty", answers: []string{""}, wantErr: "the password is empty"},
		{name: "closed", answers: nil, wantErr: "reading the password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prompts bytes.Buffer
			got, err := readNewPassword(strings.NewReader("not read\n"), &prompts, &fakeTerminal{answers: tt.answers})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q %v, want %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q %v", got, err)
			}
			if p := prompts.String(); !strings.Contains(p, "Password: ") || !strings.Contains(p, "Again: ") || strings.Contains(p, tt.want) {
				t.Fatalf("prompts %q", p)
			}
		})
	}
}
