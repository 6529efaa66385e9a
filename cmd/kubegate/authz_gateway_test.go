package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

func agentRequest(path, agent, token string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Id: "t", Method: "GET", Path: path,
		HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "authorization", RawValue: []byte("Bearer pat:" + agent + ":" + token)}}},
	}}}}
}

func writeTestFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// gatewayFile writes a gateway configuration of agents 1 (alpha) and 2 (beta),
// each with its agent configuration file in dir.
func gatewayFile(t *testing.T, dir string, extra string) string {
	t.Helper()
	for _, f := range []string{"ca.pem", "alpha.token", "beta.token"} {
		writeTestFile(t, filepath.Join(dir, f), "x")
	}
	file := filepath.Join(dir, "gateway.yaml")
	writeTestFile(t, file, `agents:
  - id: 1
    name: alpha
    config_project_id: 11
    agent_config: {file: alpha.yaml}
    upstream: {server: "https://alpha.example:6443", ca_file: ca.pem, token_file: alpha.token}
  - id: 2
    name: beta
    config_project_id: 12
    agent_config: {file: beta.yaml}
    upstream: {server: "https://beta.example:6443", ca_file: ca.pem, token_file: beta.token}
`+extra)
	return file
}

// TestAuthzGatewayConfig runs kubegate authz over a gateway configuration of two
// agents, one of whose agent configuration does not validate at start: the
// other serves, routed to its own cluster; the broken one answers 503 until it is
// fixed; an agent id the gateway does not serve is refused like an invalid token.
func TestAuthzGatewayConfig(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "alpha.yaml"), string(data))
	writeTestFile(t, filepath.Join(dir, "beta.yaml"), "user_access:\n  projects: [{id: \"\"}]\n")
	file := gatewayFile(t, dir, "")
	sock := "unix://" + filepath.Join(dir, "authz.sock")
	metricsAddr := freeAddr(t)
	p := startProcess(t, "authz", "--gateway-config", file, "--directory", sandboxDirectory, "--listen", sock, "--metrics-listen", metricsAddr, "--log-level", "info")
	conn := dial(t, sock)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)
	check := func(agent, token string) *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(context.Background(), agentRequest("/k8s-proxy/api/v1/pods", agent, token))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := check("1", "kg-sandbox-alice-token")
	if resp.GetOkResponse() == nil {
		t.Fatalf("alice on alpha: %v", resp)
	}
	routed := ""
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == contract.HeaderUpstream {
			routed = h.GetHeader().GetValue()
		}
	}
	if routed != "kubegate_apiserver_1" {
		t.Fatalf("alice on alpha routed to %q", routed)
	}
	if code := check("2", "kg-sandbox-alice-token").GetDeniedResponse().GetStatus().GetCode(); code != 503 {
		t.Fatalf("beta without a valid configuration: %d", code)
	}
	unserved, invalid := check("3", "kg-sandbox-alice-token"), check("1", "kg-guess-0000")
	if unserved.GetDeniedResponse().GetBody() != invalid.GetDeniedResponse().GetBody() || unserved.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("an unserved agent answers differently from an invalid token:\n%v\n%v", unserved, invalid)
	}

	// Fixing beta's configuration brings it in; alpha never stopped.
	writeTestFile(t, filepath.Join(dir, "beta.yaml"), "user_access:\n  access_as: {agent: {}}\n  groups: [{id: group-2}]\n")
	waitFor(t, "beta to serve grace", func() bool { return check("2", "kg-sandbox-grace-token").GetOkResponse() != nil })
	m := metrics(t, metricsAddr)
	for _, want := range []string{
		`kubegate_authz_reloads_total{agent="2",result="failure"}`,
		`kubegate_authz_reloads_total{agent="2",result="success"}`,
		`kubegate_authz_reloads_total{agent="1",result="success"}`,
		`kubegate_authz_decisions_total{agent="1",reason="allowed",result="allowed"}`,
		`kubegate_authz_decisions_total{agent="2",reason="agent_not_ready",result="denied"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(m, `agent="3"`) {
		t.Error("an agent id a client made up became a metric label")
	}
	sigterm(t, p)
	if logs := p.log(); !strings.Contains(logs, "beta.yaml:2:19: user_access.projects[0].id: is empty") || !strings.Contains(logs, "serving only some agents") {
		t.Errorf("the log lacks beta's configuration error:\n%s", logs)
	}
}

func TestAuthzGatewayConfigRefusals(t *testing.T) {
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "alpha.yaml"), "user_access:\n  projects: [{id: \"\"}]\n")
	writeTestFile(t, filepath.Join(dir, "beta.yaml"), "user_access:\n  projects: [{id: \"\"}]\n")
	file := gatewayFile(t, dir, "")
	gitlabDir := t.TempDir()
	gitlabFile := gatewayFile(t, gitlabDir, `  - id: 3
    name: gamma
    config_project_id: 13
    agent_config: {gitlab: {}}
    upstream: {server: "https://gamma.example:6443", ca_file: ca.pem, token_file: gamma.token}
`)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"single-agent flags with a gateway configuration", []string{"--gateway-config", file, "--agent-id", "1", "--agent-config", "x.yaml"},
			[]string{"--agent-id is for a gateway of one agent", "--agent-config is for a gateway of one agent"}},
		{"no agent has a valid configuration", []string{"--gateway-config", file},
			[]string{"no agent has a valid configuration", "alpha.yaml:2:19: user_access.projects[0].id: is empty", "beta.yaml:2:19"}},
		{"a gateway configuration that does not validate", []string{"--gateway-config", filepath.Join(dir, "missing.yaml")},
			[]string{"cannot read the gateway configuration"}},
		{"an agent configuration in GitLab without the GitLab identity source", []string{"--gateway-config", gitlabFile},
			[]string{"agents[2].agent_config.gitlab", "--identity-source=gitlab"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"authz", "--directory", sandboxDirectory, "--listen", freeAddr(t), "--start-wait", "10s"}, tt.args...)
			out, err := exec.Command(kubegateBinary(t), args...).CombinedOutput()
			if err == nil {
				t.Fatalf("started: %s", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestAuthzGatewayConfigWithGitLab: an agent whose configuration lives in its
// config project is served from what GitLab holds (the in-test GitLab,
// gitlabtest, follows the repository files API), next to an agent with a file,
// and a push that changes it is applied at the next check.
// gitlabGateway is a GitLab stand-in holding beta's agent configuration in
// group-2/project-2 and a gateway configuration whose alpha reads a file and
// whose beta reads GitLab every interval.
func gitlabGateway(t *testing.T, interval string) (gl *gitlabtest.Server, dir, file string) {
	t.Helper()
	gl = gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-service-token-000", gitlabtest.Token{ID: 100, UserID: 100, Name: "kubegate", Scopes: []string{"api"}})
	gl.AddToken("glpat-grace-kubectl-000000000", gitlabtest.Token{ID: 7, UserID: 7, Name: "kubectl", Scopes: []string{"k8s_proxy"}})
	gl.SetDefaultBranch("group-2/project-2", "main")
	gl.PushFile("group-2/project-2", "main", ".gitlab/agents/beta/config.yaml", []byte("user_access:\n  access_as: {agent: {}}\n  groups: [{id: group-2}]\n"))

	dir = t.TempDir()
	data, err := os.ReadFile(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "alpha.yaml"), string(data))
	writeTestFile(t, filepath.Join(dir, "gitlab-token"), "glpat-admin-service-token-000\n")
	for _, f := range []string{"ca.pem", "alpha.token", "beta.token"} {
		writeTestFile(t, filepath.Join(dir, f), "x")
	}
	file = filepath.Join(dir, "gateway.yaml")
	writeTestFile(t, file, `agents:
  - id: 1
    name: alpha
    config_project_id: 1
    agent_config: {file: alpha.yaml}
    upstream: {server: "https://alpha.example:6443", ca_file: ca.pem, token_file: alpha.token}
  - id: 2
    name: beta
    config_project_id: 2
    agent_config: {gitlab: {interval: `+interval+`}}
    upstream: {server: "https://beta.example:6443", ca_file: ca.pem, token_file: beta.token}
`)
	return gl, dir, file
}

func TestAuthzGatewayConfigWithGitLab(t *testing.T) {
	gl, dir, file := gitlabGateway(t, "5s")
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	p := startProcess(t, "authz", "--listen", addr, "--metrics-listen", metricsAddr, "--gateway-config", file,
		"--identity-source", "gitlab", "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file", filepath.Join(dir, "gitlab-token"))
	conn := dial(t, addr)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)
	check := func(agent string) *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(context.Background(), agentRequest("/k8s-proxy/api/v1/pods", agent, "glpat-grace-kubectl-000000000"))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := check("2"); resp.GetOkResponse() == nil {
		t.Fatalf("grace on beta, from GitLab's copy: %v", resp)
	}
	if check("1").GetOkResponse() == nil { // the sandbox configuration lists group-2 too
		t.Fatal("grace on alpha, from its file")
	}
	// A push that drops group-2 revokes grace on beta at the next check.
	gl.PushFile("group-2/project-2", "main", ".gitlab/agents/beta/config.yaml", []byte("user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n"))
	waitFor(t, "beta's new configuration", func() bool { return check("2").GetDeniedResponse().GetStatus().GetCode() == 403 })
	if check("1").GetOkResponse() == nil {
		t.Fatal("beta's change touched alpha")
	}
	if m := metrics(t, metricsAddr); !strings.Contains(m, `kubegate_authz_reloads_total{agent="2",result="success"} 2`) {
		t.Errorf("beta's two loads are not counted:\n%s", m)
	}
	sigterm(t, p)
}

// TestAuthzGitLabWebhook: with an interval of an hour, beta's configuration changes
// only when GitLab's push webhook says so, and only with the secret token.
func TestAuthzGitLabWebhook(t *testing.T) {
	gl, dir, file := gitlabGateway(t, "1h")
	secretFile := filepath.Join(dir, "webhook-secret")
	writeTestFile(t, secretFile, "a-webhook-secret-of-some-length\n")
	addr, hook := freeAddr(t), freeAddr(t)
	p := startProcess(t, "authz", "--listen", addr, "--gateway-config", file,
		"--identity-source", "gitlab", "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file", filepath.Join(dir, "gitlab-token"),
		"--gitlab-webhook-listen", hook, "--gitlab-webhook-secret-file", secretFile)
	conn := dial(t, addr)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)
	graceOnBeta := func() *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(context.Background(), agentRequest("/k8s-proxy/api/v1/pods", "2", "glpat-grace-kubectl-000000000"))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if graceOnBeta().GetOkResponse() == nil {
		t.Fatal("grace on beta, from GitLab's copy")
	}
	gl.PushFile("group-2/project-2", "main", ".gitlab/agents/beta/config.yaml", []byte("user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n"))
	post := func(token string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+hook+"/", strings.NewReader(`{"object_kind":"push","project_id":2}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Gitlab-Event", "Push Hook")
		if token != "" {
			req.Header.Set("X-Gitlab-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, bad := range []string{"", "not-the-secret-at-all-000"} {
		if code := post(bad); code != http.StatusUnauthorized {
			t.Fatalf("webhook with token %q: %d, want 401", bad, code)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if graceOnBeta().GetOkResponse() == nil {
		t.Fatal("a webhook call without the secret made authz re-read beta's configuration")
	}
	if code := post("a-webhook-secret-of-some-length"); code != http.StatusOK {
		t.Fatalf("webhook with the secret: %d", code)
	}
	waitFor(t, "beta's pushed configuration after the webhook", func() bool { return graceOnBeta().GetDeniedResponse().GetStatus().GetCode() == 403 })
	sigterm(t, p)
}
