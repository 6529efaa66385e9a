package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// kubegateBinary builds the real binary once for the process tests.
func kubegateBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubegate-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kubegate")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// process is a running kubegate service whose JSON log lines are collected.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	done chan error
}

func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(kubegateBinary(t), args...), done: make(chan error, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("logs of %v:\n%s", args, p.log())
		}
	})
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitServing waits until the service's gRPC health check reports SERVING.
func waitServing(t *testing.T, conn *grpc.ClientConn, service string, p *process) {
	t.Helper()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case err := <-p.done:
			t.Fatalf("the service exited: %v\n%s", err, p.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not SERVING: %v %v\n%s", resp, err, p.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sigterm(t *testing.T, p *process) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", p.log())
	}
}

func metrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func patRequest(path, token string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Id: "t", Method: "GET", Path: path,
		HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "authorization", RawValue: []byte("Bearer pat:1:" + token)}}},
	}}}}
}

func TestAuthzProcess(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent-config.yaml")
	data, err := os.ReadFile(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := "unix://" + filepath.Join(dir, "authz.sock")
	metricsAddr := freeAddr(t)
	flagsFile := filepath.Join(dir, "authz.yaml")
	// A config file supplies some flags; the command line supplies the rest.
	if err := os.WriteFile(flagsFile, []byte("agent-id: 1\nconfig-project-id: 1\ndirectory: "+sandboxDirectory+"\nlisten: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, "authz", "--config", flagsFile, "--listen", sock, "--metrics-listen", metricsAddr,
		"--agent-config", cfg, "--log-level", "info")
	conn := dial(t, sock)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)

	resp, err := client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "kg-sandbox-alice-token"))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("alice: %v %v", resp, err)
	}
	resp, _ = client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "kg-sandbox-bob-token"))
	if resp.GetDeniedResponse().GetStatus().GetCode() != 403 {
		t.Fatalf("bob: %v", resp)
	}

	// Reload: revoke everyone by emptying user_access; a broken edit in between is ignored.
	if err := os.WriteFile(cfg, []byte("user_access:\n  access_as: {agent: {}, user: {}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a failed reload", func() bool {
		return strings.Contains(metrics(t, metricsAddr), `kubegate_authz_reloads_total{agent="1",result="failure"}`)
	})
	if resp, _ := client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "kg-sandbox-alice-token")); resp.GetOkResponse() == nil {
		t.Fatalf("a broken edit replaced the good config: %v", resp)
	}
	if err := os.WriteFile(cfg, []byte("user_access:\n  access_as: {user: {}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice to lose access", func() bool {
		resp, _ := client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "kg-sandbox-alice-token"))
		return resp.GetDeniedResponse().GetStatus().GetCode() == 403
	})

	m := metrics(t, metricsAddr)
	for _, want := range []string{
		`kubegate_authz_decisions_total{agent="1",reason="allowed",result="allowed"}`,
		`kubegate_authz_decisions_total{agent="1",reason="not_a_member",result="denied"}`,
		`kubegate_authz_check_duration_seconds_bucket`,
		`kubegate_authz_reloads_total{agent="1",result="success"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	sigterm(t, p)
	logs := p.log()
	if strings.Contains(logs, "kg-sandbox-alice-token") || strings.Contains(logs, "kg-sandbox-bob-token") {
		t.Fatal("a token reached the log")
	}
	for _, want := range []string{`"msg":"decision"`, `"user":"alice"`, `"verb":"list"`, `"resource":"pods"`, `"result":"denied"`, `"reason":"not_a_member"`, "configuration reload failed", `"msg":"shutting down"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if _, err := os.Stat(strings.TrimPrefix(sock, "unix://")); !os.IsNotExist(err) {
		t.Errorf("the unix socket was not removed on shutdown: %v", err)
	}
}

func TestAuthzRefusesToStartWithBadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("user_access:\n  projects: [{id: \"\"}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubegateBinary(t), "authz", "--agent-id", "1", "--config-project-id", "1", "--agent-config", bad, "--directory", sandboxDirectory, "--listen", freeAddr(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.yaml:2:19: user_access.projects[0].id: is empty") {
		t.Fatalf("err=%v out=%s", err, out)
	}
	out, err = exec.Command(kubegateBinary(t), "authz", "--config", "/nonexistent.yaml").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--config") {
		t.Fatalf("err=%v out=%s", err, out)
	}
}

func TestExtProcProcess(t *testing.T) {
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	p := startProcess(t, "extproc", "--listen", addr, "--metrics-listen", metricsAddr)
	conn := dial(t, addr)
	waitServing(t, conn, "envoy.service.ext_proc.v3.ExternalProcessor", p)
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// No ext_authz metadata: the processor must answer, not continue.
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetImmediateResponse().GetStatus().GetCode() != 403 {
		t.Fatalf("%v %v", resp, err)
	}
	_ = stream.CloseSend()
	if m := metrics(t, metricsAddr); !strings.Contains(m, `kubegate_extproc_requests_total{mode="no_decision",result="denied"} 1`) {
		t.Fatalf("metrics:\n%s", m)
	}
	sigterm(t, p)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAuthzProcessWithGitLab runs `kubegate authz --identity-source gitlab` against
// the in-test GitLab stand-in (identity/gitlab/gitlabtest, which follows GitLab's
// REST API documentation).
func TestAuthzProcessWithGitLab(t *testing.T) {
	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-service-token-000", gitlabtest.Token{ID: 100, UserID: 100, Name: "kubegate", Scopes: []string{"api"}})
	gl.AddToken("glpat-alice-kubectl-000000000", gitlabtest.Token{ID: 1, UserID: 1, Name: "kubectl", Scopes: []string{"k8s_proxy"}})
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "gitlab-token")
	if err := os.WriteFile(tokenFile, []byte("glpat-admin-service-token-000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p := startProcess(t, "authz", "--listen", addr, "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig,
		"--identity-source", "gitlab", "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file", tokenFile)
	conn := dial(t, addr)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)
	if resp, err := client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "glpat-alice-kubectl-000000000")); err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("alice through GitLab: %v %v", resp, err)
	}
	if resp, _ := client.Check(context.Background(), patRequest("/k8s-proxy/api/v1/pods", "glpat-nobody-00000000000000000")); resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("unknown token: %v", resp)
	}
	if gl.TotalCalls() == 0 {
		t.Fatal("the GitLab stand-in was never asked")
	}
	sigterm(t, p)

	out, err := exec.Command(kubegateBinary(t), "authz", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--identity-source", "gitlab").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--gitlab-url") || !strings.Contains(string(out), "--gitlab-token-file") {
		t.Fatalf("missing GitLab flags not explained: %v %s", err, out)
	}
}
