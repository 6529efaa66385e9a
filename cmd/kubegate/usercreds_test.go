package main

// Tests of `kubegate update-kubeconfig` and `kubegate get-token` (access.md §6). The
// GitLab they talk to is gitlabtest's stand-in with its user API enabled, which
// follows GitLab's REST API documentation (see identity/gitlab/gitlabtest): a real
// GitLab cannot run here.

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

const (
	aliceGitLabToken = "glpat-alice-api-cli-000000000"
	serviceReadToken = "glpat-kubegate-service-read-0"
)

// userGitLab starts the stand-in GitLab with the sandbox's users and projects, alice's
// api-scoped token, a read_api service token and agent 1 in group-1/project-1.
func userGitLab(t *testing.T) (*gitlabtest.Server, *gitlabtest.UserAPI) {
	t.Helper()
	s := gitlabtest.New(time.Now())
	t.Cleanup(s.Close)
	s.Sandbox()
	s.AddUser(gitlabtest.User{ID: 100, Username: "kubegate-bot"})
	s.AddToken(aliceGitLabToken, gitlabtest.Token{ID: 1, UserID: 1, Name: "cli", Scopes: []string{"api"}})
	s.AddToken(serviceReadToken, gitlabtest.Token{ID: 2, UserID: 100, Name: "kubegate", Scopes: []string{"read_api"}})
	api := s.EnableUserAPI()
	api.AddAgent("group-1/project-1", 1, "sandbox-agent")
	return s, api
}

// userEnv is a clean environment for a kubegate or kubectl child: its own cache
// directory and home, and the given extra variables.
func userEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	home := t.TempDir()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	return append(env, extra...)
}

func cacheHome(env []string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "XDG_CACHE_HOME="); ok {
			return v
		}
	}
	return ""
}

// TestGetTokenConcurrentProcesses runs many get-token processes at once, as kubectl
// does when a shell runs several commands: they create one GitLab token and all print
// it, and the cache file is private.
func TestGetTokenConcurrentProcesses(t *testing.T) {
	bin := kubegateBinary(t)
	gl, api := userGitLab(t)
	env := userEnv(t, "GITLAB_TOKEN="+aliceGitLabToken)
	const n = 8
	outs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cmd := exec.Command(bin, "get-token", "--agent", "1", "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests")
			cmd.Env = env
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Errorf("get-token %d: %v\n%s", i, err, stderr.String())
			}
			outs[i] = string(out)
		})
	}
	wg.Wait()
	created := api.Created()
	if len(created) != 1 {
		t.Fatalf("%d concurrent get-token processes created %d tokens, want 1", n, len(created))
	}
	for i, out := range outs {
		var cred struct {
			APIVersion string `json:"apiVersion"`
			Status     struct {
				Token               string `json:"token"`
				ExpirationTimestamp string `json:"expirationTimestamp"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &cred); err != nil {
			t.Fatalf("output %d is not an ExecCredential: %v\n%s", i, err, out)
		}
		if cred.Status.Token != "pat:1:"+created[0] || cred.APIVersion != "client.authentication.k8s.io/v1" {
			t.Fatalf("output %d = %+v, want pat:1:<the created token>", i, cred)
		}
		info, _ := api.Token(created[0])
		expiry, _ := time.Parse(time.DateOnly, info.ExpiresAt)
		if cred.Status.ExpirationTimestamp != expiry.Add(-5*time.Minute).Format(time.RFC3339) {
			t.Fatalf("expirationTimestamp = %s, want 5 minutes before %s", cred.Status.ExpirationTimestamp, info.ExpiresAt)
		}
	}
	dir := filepath.Join(cacheHome(env), "kubegate")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, _ := e.Info()
		if strings.HasSuffix(e.Name(), ".json") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if bytes.Contains(data, []byte(aliceGitLabToken)) {
			t.Errorf("%s holds the user's own GitLab token", e.Name())
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

func TestGetTokenExecInfo(t *testing.T) {
	bin := kubegateBinary(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("kg-sandbox-alice-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "get-token", "--agent", "7", "--token-file", tokenFile)
	cmd.Env = userEnv(t, `KUBERNETES_EXEC_INFO={"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var cred map[string]any
	if err := json.Unmarshal(out, &cred); err != nil {
		t.Fatal(err)
	}
	status, _ := cred["status"].(map[string]any)
	if cred["apiVersion"] != "client.authentication.k8s.io/v1beta1" || status["token"] != "pat:7:kg-sandbox-alice-token" {
		t.Fatalf("ExecCredential = %s", out)
	}
	if _, has := status["expirationTimestamp"]; has {
		t.Fatalf("a static token got an expiry: %s", out)
	}
}

func TestGetTokenFlags(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no agent", []string{"--token-file", tokenFile}, "--agent is required"},
		{"no source", []string{"--agent", "1"}, "say where the token comes from"},
		{"both sources", []string{"--agent", "1", "--token-file", tokenFile, "--gitlab-url", "https://gitlab.example.com"}, "exclude each other"},
		{"static with --check-revoked", []string{"--agent", "1", "--token-file", tokenFile, "--check-revoked"}, "--check-revoked applies only with --gitlab-url"},
		{"static with expiry", []string{"--agent", "1", "--token-file", tokenFile, "--token-expiry-duration", "48h"}, "--token-expiry-duration applies only"},
		{"expiry too short", []string{"--agent", "1", "--gitlab-url", "https://gitlab.example.com", "--token-expiry-duration", "12h"}, "at least 24h"},
		{"bad GitLab URL", []string{"--agent", "1", "--gitlab-url", "gitlab.example.com"}, "must be GitLab's address"},
		{"GitLab over plain http", []string{"--agent", "1", "--gitlab-url", "http://gitlab.example.com"}, "is plain http"},
		{"static with the insecure flag", []string{"--agent", "1", "--token-file", tokenFile, "--gitlab-insecure-http-for-tests"}, "applies only with --gitlab-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := run(t, "", append([]string{"get-token"}, tt.args...)...)
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want failure with %q", code, stderr, tt.want)
			}
		})
	}
	t.Run("no GitLab token", func(t *testing.T) {
		t.Setenv("GITLAB_TOKEN", "")
		t.Setenv("XDG_CACHE_HOME", t.TempDir())
		_, stderr, code := run(t, "", "get-token", "--agent", "1", "--gitlab-url", "https://gitlab.example.com")
		if code == 0 || !strings.Contains(stderr, "no GitLab token configured") || !strings.Contains(stderr, "GITLAB_TOKEN") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("GitLab unreachable", func(t *testing.T) {
		closed := httptest.NewServer(http.NotFoundHandler())
		closed.Close()
		t.Setenv("GITLAB_TOKEN", aliceGitLabToken)
		t.Setenv("XDG_CACHE_HOME", t.TempDir())
		_, stderr, code := run(t, "", "get-token", "--agent", "1", "--gitlab-url", closed.URL, "--gitlab-insecure-http-for-tests")
		if code == 0 || !strings.Contains(stderr, "cannot reach GitLab at "+closed.URL) {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
}

func TestUpdateKubeconfigWithGitLab(t *testing.T) {
	gl, api := userGitLab(t)
	t.Setenv("GITLAB_TOKEN", aliceGitLabToken)
	dir := t.TempDir()
	kc := filepath.Join(dir, "config")
	args := []string{"update-kubeconfig", "--server", "https://gw.example.com", "--agent", "1", "--kubeconfig", kc,
		"--gitlab-url", gl.URL + "/", "--gitlab-insecure-http-for-tests", "--project", "group-1/project-1", "--check-revoked", "--token-expiry-duration", "72h"}

	stdout, stderr, code := run(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, `agent 1 is "sandbox-agent" in group-1/project-1`) || !strings.Contains(stdout, "written to "+kc) {
		t.Fatalf("stdout %q stderr %q", stdout, stderr)
	}
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.AuthInfos["kubegate-gw.example.com-agent-1"]
	if u == nil || u.Exec == nil {
		t.Fatalf("no exec user in %v", cfg.AuthInfos)
	}
	wantArgs := []string{"get-token", "--agent", "1", "--gitlab-url", gl.URL, "--token-expiry-duration", "72h0m0s", "--check-revoked", "--gitlab-insecure-http-for-tests"}
	if strings.Join(u.Exec.Args, " ") != strings.Join(wantArgs, " ") {
		t.Fatalf("exec args = %q, want %q", u.Exec.Args, wantArgs)
	}
	if raw, _ := os.ReadFile(kc); bytes.Contains(raw, []byte(aliceGitLabToken)) {
		t.Fatal("the user's GitLab token was written into the kubeconfig")
	}
	if len(api.Created()) != 0 {
		t.Fatal("update-kubeconfig created a token; only get-token should")
	}
	if cfg.CurrentContext != "" {
		t.Fatalf("current-context set to %q without --use-context", cfg.CurrentContext)
	}

	stdout, _, code = run(t, "", args...)
	if code != 0 || !strings.Contains(stdout, "already up to date") {
		t.Fatalf("second run: exit %d, %q", code, stdout)
	}

	t.Run("without --project the agent is not checked, and it says so", func(t *testing.T) {
		_, stderr, code := run(t, "", "update-kubeconfig", "--server", "https://gw.example.com", "--agent", "99", "--kubeconfig", kc, "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests")
		if code != 0 || !strings.Contains(stderr, "Agent 99 was not checked") || !strings.Contains(stderr, "--project") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})

	errs := []struct {
		name string
		env  string
		args []string
		want []string
	}{
		{"agent not found", aliceGitLabToken, []string{"--agent", "7", "--project", "group-1/project-1"}, []string{"agent not found", "no agent 7 in project group-1/project-1", "Operate > Kubernetes clusters"}},
		{"no GitLab token", "", []string{"--agent", "1"}, []string{"no GitLab token configured", "GITLAB_TOKEN", "--gitlab-token-file"}},
		{"GitLab refuses the token", "glpat-not-known-to-gitlab-00", []string{"--agent", "1"}, []string{"401 Unauthorized", "GITLAB_TOKEN"}},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GITLAB_TOKEN", tt.env)
			other := filepath.Join(t.TempDir(), "config")
			a := append([]string{"update-kubeconfig", "--server", "https://gw.example.com", "--kubeconfig", other, "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests"}, tt.args...)
			_, stderr, code := run(t, "", a...)
			if code == 0 {
				t.Fatal("succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			if _, err := os.Stat(other); err == nil {
				t.Error("a kubeconfig was written although the check failed")
			}
		})
	}
}

func TestUpdateKubeconfigFlags(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "config")
	base := []string{"update-kubeconfig", "--kubeconfig", kc}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no server", []string{"--agent", "1", "--token-file", tokenFile}, "--server is required"},
		{"http server", []string{"--server", "http://gw.example.com", "--agent", "1", "--token-file", tokenFile}, "https address"},
		{"no agent", []string{"--server", "https://gw.example.com", "--token-file", tokenFile}, "--agent is required"},
		{"no source", []string{"--server", "https://gw.example.com", "--agent", "1"}, "say where the token comes from"},
		{"--project without GitLab", []string{"--server", "https://gw.example.com", "--agent", "1", "--token-file", tokenFile, "--project", "g/p"}, "needs --gitlab-url"},
		{"CA not PEM", []string{"--server", "https://gw.example.com", "--agent", "1", "--token-file", tokenFile, "--ca", notPEM}, "holds no PEM certificate"},
		{"missing token file", []string{"--server", "https://gw.example.com", "--agent", "1", "--token-file", filepath.Join(dir, "nope")}, "--token-file"},
		{"empty context", []string{"--server", "https://gw.example.com", "--agent", "1", "--token-file", tokenFile, "--context", ""}, "--context must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := run(t, "", append(base, tt.args...)...)
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want failure with %q", code, stderr, tt.want)
			}
			if _, err := os.Stat(kc); err == nil {
				t.Fatal("a kubeconfig was written")
			}
		})
	}
}

// TestUpdateKubeconfigNotWritable runs update-kubeconfig as a user who may read but
// not write the kubeconfig (root ignores file permissions, so as root the child runs
// as nobody).
func TestUpdateKubeconfigNotWritable(t *testing.T) {
	bin := kubegateBinary(t)
	dir, err := os.MkdirTemp("", "kubegate-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o755); _ = os.RemoveAll(dir) })
	// Everything the child needs is readable by anyone; nothing in dir is writable
	// by it.
	exe := filepath.Join(dir, "kubegate")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(exe, data, 0o755))
	tokenFile := filepath.Join(dir, "token")
	must(t, os.WriteFile(tokenFile, []byte("tok"), 0o644))
	kc := filepath.Join(dir, "config")
	must(t, os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\n"), 0o644))
	cmd := exec.Command(exe, "update-kubeconfig", "--server", "https://gw.example.com", "--agent", "1", "--token-file", tokenFile, "--kubeconfig", kc)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	if os.Geteuid() == 0 {
		must(t, os.Chmod(dir, 0o755))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	} else {
		must(t, os.Chmod(kc, 0o444))
		must(t, os.Chmod(dir, 0o555))
	}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("update-kubeconfig succeeded on a read-only kubeconfig:\n%s", out)
	}
	for _, want := range []string{"is not writable", "--kubeconfig", "permission denied"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestKubectlThroughGitLabToken is kubectl end to end with the GitLab source: kubectl
// reads the kubeconfig update-kubeconfig wrote, runs `kubegate get-token`, which
// creates a token in GitLab, and sends it to a gateway. The gateway here is a stand-in
// for Envoy and the API server (the sandbox stack serves the directory source, not
// GitLab; the static-token path through the real stack is TestKubectlThroughSandbox):
// it reads the credential with the gateway's own parser and checks it with the real
// GitLab backend against the same GitLab (access.md §2), and answers /k8s-proxy/version
// (§4) only for alice.
func TestKubectlThroughGitLabToken(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH")
	}
	bin := kubegateBinary(t)
	gl, api := userGitLab(t)
	backend, err := gitlab.New(gitlab.Config{URL: gl.URL, Token: serviceReadToken, PATCheck: gitlab.PATCheckSelf})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	gw := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, err := identity.ParseCredential(identity.Header{"authorization": r.Header.Values("Authorization")}, r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		id, ok, err := backend.Authenticate(r.Context(), cred)
		if err != nil || !ok || cred.AgentID != 1 {
			http.Error(w, fmt.Sprint("Unauthorized: ", err), http.StatusUnauthorized)
			return
		}
		path, found := strings.CutPrefix(r.URL.Path, "/k8s-proxy/")
		mu.Lock()
		seen = append(seen, id.User.Username+" "+path)
		mu.Unlock()
		if !found || path != "version" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"major":"1","minor":"32","gitVersion":"v1.32.0-through-the-gateway"}`)
	}))
	t.Cleanup(gw.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	must(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: gw.Certificate().Raw}), 0o600))

	kc := filepath.Join(t.TempDir(), "config")
	env := userEnv(t, "GITLAB_TOKEN="+aliceGitLabToken, "KUBECONFIG="+kc)
	upd := exec.Command(bin, "update-kubeconfig", "--server", gw.URL, "--ca", ca, "--agent", "1",
		"--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests", "--project", "group-1/project-1", "--use-context")
	upd.Env = env
	if out, err := upd.CombinedOutput(); err != nil {
		t.Fatalf("update-kubeconfig: %v\n%s", err, out)
	}
	for i := range 3 {
		// kubectl version needs no discovery documents from the stand-in, and it
		// authenticates like any other command.
		k := exec.Command(kubectl, "version", "-o", "json")
		k.Env = env
		out, err := k.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "v1.32.0-through-the-gateway") {
			mu.Lock()
			t.Fatalf("kubectl run %d: %v\n%s\ngateway saw %q", i, err, out, seen)
		}
	}
	if n := len(api.Created()); n != 1 {
		t.Fatalf("three kubectl processes created %d GitLab tokens, want 1 (cached)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if !strings.HasPrefix(s, "alice ") {
			t.Fatalf("gateway saw %q, want alice", s)
		}
	}
}
