package main

// Tests of `kubegate agent list` and `update-kubeconfig --all-agents`. The gateway
// here is an httptest TLS server answering contract.AgentsPath with a
// contract.AgentList and Kubernetes Status denials, as kubegate authz does (the
// real endpoint and its end-to-end test come with the authz side); the GitLab is
// gitlabtest's stand-in, whose GET /projects/:id/cluster_agents pages as
// https://docs.gitlab.com/api/rest/#pagination documents. Kubeconfigs are read
// and written by client-go's clientcmd.

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

const (
	gatewayUserToken = "glpat-alice-k8s-proxy-0000000"
	forbiddenToken   = "glpat-forbidden-000000000000"
)

// fakeGateway answers the agent list endpoint like kubegate authz: 200 with the
// agents for alice's credential naming agent 1 or 2, a 403 Status for
// forbiddenToken, a 401 Status for anything else. It records every request path.
type fakeGateway struct {
	*httptest.Server
	caFile string
	mu     sync.Mutex
	paths  []string
	creds  []string
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	g := &fakeGateway{}
	status := func(w http.ResponseWriter, code int, reason, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": msg})
	}
	g.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.paths = append(g.paths, r.URL.Path)
		g.creds = append(g.creds, r.Header.Get("Authorization"))
		g.mu.Unlock()
		if r.URL.Path != contract.AgentsPath || r.Method != http.MethodGet {
			status(w, 404, "NotFound", "not found")
			return
		}
		switch r.Header.Get("Authorization") {
		case "Bearer pat:1:" + gatewayUserToken, "Bearer pat:2:" + gatewayUserToken:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(contract.AgentList{Agents: []contract.AgentInfo{
				{ID: 3, Name: "staging", ConfigProjectID: 2, AccessAs: "agent"},
				{ID: 1, Name: "prod", ConfigProjectID: 1, AccessAs: "user"},
			}})
		case "Bearer pat:1:" + forbiddenToken:
			status(w, 403, "Forbidden", "you are not a Developer of any project or group an agent of this gateway lists")
		default:
			status(w, 401, "Unauthorized", "Unauthorized")
		}
	}))
	t.Cleanup(g.Close)
	g.caFile = filepath.Join(t.TempDir(), "gateway-ca.pem")
	if err := os.WriteFile(g.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *fakeGateway) requests() ([]string, []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.paths), slices.Clone(g.creds)
}

// gatewayKubeconfig writes a kubeconfig with a context per (name, server, token),
// the first current; tokens are static so that no exec plugin is needed.
func gatewayKubeconfig(t *testing.T, caFile string, contexts ...[3]string) string {
	t.Helper()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	for i, c := range contexts {
		cfg.Clusters[c[0]] = &clientcmdapi.Cluster{Server: c[1], CertificateAuthorityData: ca}
		cfg.AuthInfos[c[0]] = &clientcmdapi.AuthInfo{Token: c[2]}
		cfg.Contexts[c[0]] = &clientcmdapi.Context{Cluster: c[0], AuthInfo: c[0]}
		if i == 0 {
			cfg.CurrentContext = c[0]
		}
	}
	file := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, file); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestAgentListGateway(t *testing.T) {
	g := newFakeGateway(t)
	other := newFakeGateway(t)
	kc := gatewayKubeconfig(t, g.caFile,
		[3]string{"other-gw", other.URL + "/k8s-proxy", "pat:1:" + gatewayUserToken},
		[3]string{"gw-agent-2", g.URL + "/k8s-proxy", "pat:2:" + gatewayUserToken},
		[3]string{"gw-forbidden", g.URL + "/k8s-proxy", "pat:1:" + forbiddenToken},
		[3]string{"gw-bad", g.URL + "/k8s-proxy", "pat:1:glpat-unknown-000000000000"},
		[3]string{"not-a-gateway", g.URL, "pat:1:" + gatewayUserToken},
	)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
		wantErr  []string
		wantNone bool // the gateway saw no request
	}{
		{"--gateway picks its context, table sorted by id", []string{"--gateway", g.URL}, 0,
			[]string{"ID  NAME     CONFIG PROJECT  ACCESS\n1   prod     1               user\n3   staging  2               agent\n"}, nil, false},
		{"json", []string{"--gateway-context", "gw-agent-2", "-o", "json"}, 0,
			[]string{`"agents": [`, `"id": 1`, `"name": "prod"`, `"config_project_id": 1`, `"access_as": "user"`}, nil, false},
		{"403 prints the gateway's message", []string{"--gateway-context", "gw-forbidden"}, 1, nil,
			[]string{"403 Forbidden", "you are not a Developer of any project or group"}, false},
		{"401", []string{"--gateway-context", "gw-bad"}, 1, nil, []string{"(401 Unauthorized): Unauthorized"}, false},
		{"the current context is another gateway's: its credential is not sent to --gateway", []string{"--gateway", g.URL, "--gateway-context", "other-gw"}, 2, nil,
			[]string{"not --gateway", "not sent elsewhere"}, true},
		{"no context reaches the gateway", []string{"--gateway", "https://nowhere.example.com"}, 2, nil,
			[]string{"no context in your kubeconfig reaches https://nowhere.example.com/k8s-proxy", "update-kubeconfig"}, true},
		{"a server without /k8s-proxy", []string{"--gateway-context", "not-a-gateway"}, 2, nil, []string{"does not end in /k8s-proxy"}, true},
		{"--gateway http", []string{"--gateway", "http://" + g.Listener.Addr().String()}, 2, nil, []string{"https address"}, true},
		{"gateway and GitLab flags together", []string{"--gateway", g.URL, "--gitlab-url", "https://gitlab.example.com", "--project", "a/b"}, 2, nil, []string{"use one or the other"}, true},
		{"--project alone", []string{"--project", "a/b"}, 2, nil, []string{"needs both --gitlab-url and --project"}, true},
		{"bad -o", []string{"-o", "yaml"}, 2, nil, []string{"use table or json"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := g.requests()
			stdout, stderr, code := run(t, "", append([]string{"agent", "list", "--gateway-kubeconfig", kc}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tt.wantCode, stdout, stderr)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout %q lacks %q", stdout, w)
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			after, _ := g.requests()
			if tt.wantNone && len(after) != len(before) {
				t.Errorf("the gateway got %d request(s) %v", len(after)-len(before), after[len(before):])
			}
			for _, p := range after[len(before):] {
				if p != contract.AgentsPath {
					t.Errorf("the gateway was asked %s", p)
				}
			}
		})
	}
	if paths, _ := other.requests(); len(paths) != 0 {
		t.Errorf("the other gateway got %v: a context's credential went to a gateway not asked for", paths)
	}
}

// listingGitLab is the stand-in with 250 agents in group-1/project-1, where alice
// (api token) is a maintainer and bob is no member.
func listingGitLab(t *testing.T) *gitlabtest.Server {
	t.Helper()
	gl, api := userGitLab(t)
	for i := int64(2); i <= 250; i++ {
		api.AddAgent("group-1/project-1", i, fmt.Sprintf("agent-%03d", i))
	}
	gl.AddToken("glpat-bob-api-cli-0000000000", gitlabtest.Token{ID: 3, UserID: 2, Name: "cli", Scopes: []string{"api"}})
	return gl
}

func TestAgentListGitLab(t *testing.T) {
	gl := listingGitLab(t)
	base := []string{"agent", "list", "--gitlab-insecure-http-for-tests", "--project", "group-1/project-1"}

	// proxy serves the stand-in with its answers' headers changed, for the paging
	// variants the documentation allows (a proxy dropping the X- headers keeps Link).
	proxy := func(t *testing.T, edit func(h http.Header)) string {
		u, _ := url.Parse(gl.URL)
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ModifyResponse = func(r *http.Response) error { edit(r.Header); return nil }
		s := httptest.NewServer(rp)
		t.Cleanup(s.Close)
		return s.URL
	}

	t.Run("every page, table like glab's", func(t *testing.T) {
		t.Setenv("GITLAB_TOKEN", aliceGitLabToken)
		stdout, stderr, code := run(t, "", append(base, "--gitlab-url", gl.URL)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != 251 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "NAME") || !strings.HasSuffix(lines[0], "CREATED AT") {
			t.Fatalf("%d lines, header %q", len(lines), lines[0])
		}
		if !strings.Contains(lines[1], "sandbox-agent") || !strings.Contains(lines[250], "agent-250") || !strings.Contains(lines[250], "2025-01-02T03:04:05Z") {
			t.Errorf("first %q, last %q", lines[1], lines[250])
		}
	})

	t.Run("json, and the Link header alone pages", func(t *testing.T) {
		t.Setenv("GITLAB_TOKEN", aliceGitLabToken)
		u := proxy(t, func(h http.Header) {
			for _, k := range []string{"X-Next-Page", "X-Prev-Page", "X-Page", "X-Total", "X-Total-Pages"} {
				h.Del(k)
			}
		})
		stdout, stderr, code := run(t, "", append(base, "--gitlab-url", u, "-o", "json")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var agents []struct {
			ID            int64  `json:"id"`
			Name          string `json:"name"`
			CreatedAt     string `json:"created_at"`
			ConfigProject struct {
				ID   int64  `json:"id"`
				Path string `json:"path_with_namespace"`
			} `json:"config_project"`
		}
		if err := json.Unmarshal([]byte(stdout), &agents); err != nil {
			t.Fatal(err)
		}
		if len(agents) != 250 || agents[0].ID != 1 || agents[249].Name != "agent-250" || agents[0].ConfigProject.Path != "group-1/project-1" || agents[0].ConfigProject.ID != 1 {
			t.Errorf("%d agents, first %+v", len(agents), agents[0])
		}
	})

	t.Run("a next page that does not advance is refused", func(t *testing.T) {
		t.Setenv("GITLAB_TOKEN", aliceGitLabToken)
		u := proxy(t, func(h http.Header) { h.Set("X-Next-Page", "1") })
		_, stderr, code := run(t, "", append(base, "--gitlab-url", u)...)
		if code != 3 || !strings.Contains(stderr, "does not advance") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})

	for _, tt := range []struct {
		name, token string
		wantCode    int
		want        string
	}{
		{"not a member: GitLab's 404", "glpat-bob-api-cli-0000000000", 1, "shows no project group-1/project-1"},
		{"unknown token", "glpat-not-known-to-gitlab-00", 1, "401 Unauthorized"},
		{"no GitLab token", "", 2, "no GitLab token configured"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GITLAB_TOKEN", tt.token)
			calls := gl.TotalCalls()
			_, stderr, code := run(t, "", append(base, "--gitlab-url", gl.URL)...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d (want %d): %s", code, tt.wantCode, stderr)
			}
			if strings.Contains(stderr, "glpat-") {
				t.Errorf("the message shows a token: %s", stderr)
			}
			if tt.token == "" && gl.TotalCalls() != calls {
				t.Errorf("GitLab was called without a token")
			}
		})
	}
}

func TestUpdateKubeconfigAllAgents(t *testing.T) {
	g := newFakeGateway(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(gatewayUserToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// KUBECONFIG lists two files; the first holds an entry of someone else's and
	// a single-agent kubegate entry for agent 1 with another token file.
	first, second := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	theirs := clientcmdapi.NewConfig()
	theirs.Clusters["theirs"] = &clientcmdapi.Cluster{Server: "https://elsewhere.example.com"}
	if err := clientcmd.WriteToFile(*theirs, first); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", first+string(os.PathListSeparator)+second)
	single := []string{"update-kubeconfig", "--server", g.URL, "--ca", g.caFile, "--agent", "1", "--token-file", tokenFile}
	if _, stderr, code := run(t, "", single...); code != 0 {
		t.Fatalf("single-agent update-kubeconfig: %s", stderr)
	}
	before, err := clientcmd.LoadFromFile(first)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(g.URL, "https://")

	all := []string{"update-kubeconfig", "--server", g.URL, "--agent", "1", "--token-file", tokenFile, "--all-agents"}
	stdout, stderr, code := run(t, "", all...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{`"kubegate-` + host + `-prod-agent-1" written to ` + first, `"kubegate-` + host + `-staging-agent-3" written to ` + first, "access as user"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("stdout %q lacks %q", stdout, w)
		}
	}
	if _, creds := g.requests(); !slices.Equal(creds, []string{"Bearer pat:1:" + gatewayUserToken}) {
		t.Errorf("the gateway saw credentials %q; want the --agent's once", creds)
	}
	cfg, err := clientcmd.LoadFromFile(first)
	if err != nil {
		t.Fatal(err)
	}
	for id, name := range map[string]string{"1": "prod", "3": "staging"} {
		ctxName := "kubegate-" + host + "-" + name + "-agent-" + id
		c := cfg.Contexts[ctxName]
		if c == nil || c.Cluster != "kubegate-"+host || c.AuthInfo != ctxName {
			t.Fatalf("context %s = %+v", ctxName, c)
		}
		u := cfg.AuthInfos[ctxName]
		if u == nil || u.Exec == nil || !slices.Equal(u.Exec.Args[:3], []string{"get-token", "--agent", id}) || !slices.Contains(u.Exec.Args, tokenFile) {
			t.Errorf("user %s exec %+v", ctxName, u.Exec)
		}
	}
	// The single-agent entries are as they were; the cluster (same gateway) keeps
	// the CA --ca embedded, which the listing used.
	singleName := "kubegate-" + host + "-agent-1"
	if !equalJSON(t, before.AuthInfos[singleName], cfg.AuthInfos[singleName]) || !equalJSON(t, before.Contexts[singleName], cfg.Contexts[singleName]) {
		t.Errorf("the single-agent entry changed")
	}
	if len(cfg.Clusters["kubegate-"+host].CertificateAuthorityData) == 0 {
		t.Errorf("the cluster lost its CA")
	}
	if cfg.CurrentContext != "" {
		t.Errorf("current context set to %q", cfg.CurrentContext)
	}
	if _, err := os.Stat(second); err == nil {
		t.Errorf("the second KUBECONFIG file was written")
	}
	if cfg.Clusters["theirs"] == nil || cfg.Clusters["theirs"].Server != "https://elsewhere.example.com" {
		t.Errorf("another tool's entry changed: %+v", cfg.Clusters["theirs"])
	}

	t.Run("again: nothing changes", func(t *testing.T) {
		raw, _ := os.ReadFile(first)
		stdout, stderr, code := run(t, "", all...)
		if code != 0 || strings.Count(stdout, "already up to date") != 2 {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if again, _ := os.ReadFile(first); string(again) != string(raw) {
			t.Error("the file changed")
		}
	})

	for _, tt := range []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"refused by the gateway", []string{"update-kubeconfig", "--server", g.URL, "--ca", g.caFile, "--agent", "1", "--token-file", writeToken(t, forbiddenToken), "--all-agents", "--kubeconfig", filepath.Join(t.TempDir(), "c")},
			1, "you are not a Developer"},
		{"--context names one", append(slices.Clone(all), "--context", "x"), 1, "--all-agents writes one context per agent"},
		{"--use-context names one", append(slices.Clone(all), "--use-context"), 1, "--all-agents writes one context per agent"},
		{"gateway unknown CA", []string{"update-kubeconfig", "--server", g.URL, "--agent", "1", "--token-file", tokenFile, "--all-agents", "--kubeconfig", filepath.Join(t.TempDir(), "c")},
			3, "certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := run(t, "", tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d (want %d): %s", code, tt.wantCode, stderr)
			}
			for i, a := range tt.args {
				if a == "--kubeconfig" {
					if _, err := os.Stat(tt.args[i+1]); err == nil {
						t.Error("a kubeconfig was written")
					}
				}
			}
		})
	}
}

func writeToken(t *testing.T, tok string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(x) == string(y)
}

// TestAgentListThroughExecPlugin: the real binary writes the kubeconfig with
// update-kubeconfig, and agent list --gateway gets its credential from that
// kubeconfig's get-token exec plugin, as kubectl would.
func TestAgentListThroughExecPlugin(t *testing.T) {
	bin := kubegateBinary(t)
	g := newFakeGateway(t)
	kc := filepath.Join(t.TempDir(), "config")
	tokenFile := writeToken(t, gatewayUserToken)
	env := userEnv(t)
	runBin := func(args ...string) (string, string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	if _, stderr, err := runBin("update-kubeconfig", "--server", g.URL, "--ca", g.caFile, "--agent", "2", "--token-file", tokenFile, "--kubeconfig", kc); err != nil {
		t.Fatalf("update-kubeconfig: %v: %s", err, stderr)
	}
	stdout, stderr, err := runBin("agent", "list", "--gateway", g.URL, "--gateway-kubeconfig", kc)
	if err != nil {
		t.Fatalf("agent list: %v: %s", err, stderr)
	}
	if !strings.Contains(stdout, "1   prod") || !strings.Contains(stdout, "3   staging") {
		t.Errorf("stdout %q", stdout)
	}
	if _, creds := g.requests(); !slices.Equal(creds, []string{"Bearer pat:2:" + gatewayUserToken}) {
		t.Errorf("the gateway saw %q; want the exec plugin's credential for agent 2", creds)
	}
}
