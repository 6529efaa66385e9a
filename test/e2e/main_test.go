// Package e2e proves the whole path against a real kube-apiserver: kubectl and
// client-go → the data plane running the bootstrap `kubegate envoy render` produced
// → kubegate authz, extproc and xds (the real binary, as processes) → the API
// server's impersonation and RBAC. Every denial is checked from the attacker's side:
// the request is refused AND nothing of it reached the API server (neither the
// upstream stack.Recorder nor the API server's audit log saw it).
package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/stack"
)

var (
	gw       *stack.Stack
	cfgFile  string // the agent config authz serves; tests may rewrite it
	kubecfg  string // kubeconfig with one context per sandbox user
	upstream stack.Recorder
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "kubegate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(work)
		}
	}()
	cfgFile = filepath.Join(work, "agent-config.yaml")
	sandboxCfg, err := os.ReadFile(filepath.Join(stack.ModuleRoot(), "deploy", "sandbox", "agent-config.yaml"))
	if err == nil {
		err = os.WriteFile(cfgFile, sandboxCfg, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gw, err = stack.Start(ctx, stack.Options{
		WorkDir:     filepath.Join(work, "stack"),
		AgentConfig: cfgFile,
		PolicyDir:   filepath.Join(stack.ModuleRoot(), "policy", "testdata", "operator"),
		Observe:     upstream.Add,
		Kubelet:     true, // pods_test.go: exec, logs, attach, cp, port-forward
		Logf:        func(f string, a ...any) { fmt.Fprintf(os.Stderr, "[e2e] "+f+"\n", a...) },
		// Every test and the benchmarks call from 127.0.0.1: one client address to
		// the per-client rate limit, whose default (50/s, burst 300) a benchmark
		// exceeds on purpose. The limit itself is tested from the attacker's side in
		// test/dataplane (TestClientRateLimitFromTheAttackersSide).
		RenderArgs: []string{"--client-rate-limit=1000000", "--client-rate-burst=1000000"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the stack:", err)
		return 1
	}
	defer gw.Stop()
	cs, err := kubernetes.NewForConfig(gw.Cluster.AdminConfig())
	if err == nil {
		err = stack.SeedDemo(ctx, cs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	kubecfg = filepath.Join(work, "kubeconfig")
	var users []stack.KubeconfigUser
	for _, u := range []string{"alice", "bob", "carol", "dave", "grace", "erin", "frank", "judy"} {
		users = append(users, stack.KubeconfigUser{Name: u, Token: "kg-sandbox-" + u + "-token"})
	}
	if err := gw.WriteKubeconfig(kubecfg, users...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		keep = true
		fmt.Fprintf(os.Stderr, "[e2e] failed: logs kept in %s\n", filepath.Join(work, "stack", "logs"))
		for _, svc := range []*stack.Service{gw.Authz, gw.ExtProc, gw.XDS} {
			fmt.Fprintf(os.Stderr, "[e2e] %s log: %s\n", svc.Name, svc.LogPath())
		}
	}
	return code
}

// marker makes a unique string to put in a request, so the recorder and the audit
// log can be searched for exactly that request.
func marker(t *testing.T) string {
	t.Helper()
	return "e2e-" + strings.ToLower(rand.Text()[:12])
}

// neverReachedAPIServer asserts that no request carrying mark went upstream and the
// API server never logged one. A sentinel request sent afterwards through the
// gateway, and found in the audit log, shows the log had caught up.
func neverReachedAPIServer(t *testing.T, mark string) {
	t.Helper()
	if got := upstream.Matching(mark); len(got) > 0 {
		t.Fatalf("a refused request reached the API server: %+v", got)
	}
	sentinel := marker(t)
	if _, err := adminGet(t, "/api/v1/namespaces/demo/configmaps?labelSelector=sentinel%3D"+sentinel); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := gw.Cluster.WaitForAuditEvent(ctx, func(e *auditv1.Event) bool { return strings.Contains(e.RequestURI, sentinel) }); err != nil {
		t.Fatal(err)
	}
	events, err := gw.Cluster.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if strings.Contains(e.RequestURI, mark) {
			t.Fatalf("the API server saw the refused request: %s %s as %s", e.Verb, e.RequestURI, e.User.Username)
		}
	}
}

// waitAudit returns the audit event of the request carrying mark.
func waitAudit(t *testing.T, mark string) *auditv1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := gw.Cluster.WaitForAuditEvent(ctx, func(e *auditv1.Event) bool {
		return strings.Contains(e.RequestURI, mark) && e.Stage == auditv1.StageResponseComplete
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}
