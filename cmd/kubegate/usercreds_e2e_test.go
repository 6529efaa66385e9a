package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/cmd/kubegate/internal/kubeconfig"
	"kubegate.dev/kubegate/test/stack"
)

// testBedMissing says why the test bed cannot start, or "" when its binaries are
// there. Only then is the end-to-end test skipped: anything else is a failure.
func testBedMissing() string {
	root := stack.ModuleRoot()
	out, err := exec.Command(filepath.Join(root, "test", "tools", "build.sh"), "--print-dir").Output()
	if err != nil {
		return "test/tools/build.sh --print-dir failed: " + err.Error()
	}
	dir := strings.TrimSpace(string(out))
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode().Perm()&0o111 == 0 {
			return "test bed binary " + filepath.Join(dir, b) + " is missing: run `make tools` (builds etcd, kube-apiserver and kube-controller-manager once, several minutes)"
		}
	}
	return ""
}

// sandboxToken reads a demo token from deploy/sandbox/demo-tokens.env.
func sandboxToken(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(stack.ModuleRoot(), "deploy", "sandbox", "demo-tokens.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+"="); ok {
			return v
		}
	}
	t.Fatalf("%s not in demo-tokens.env", name)
	return ""
}

// TestKubectlThroughSandbox is the user's path end to end: update-kubeconfig against
// the sandbox gateway (real kube-apiserver, the kubegate services, the data plane
// running the rendered bootstrap), then plain kubectl, which runs `kubegate get-token`
// through the exec plugin and reaches the API server as alice.
func TestKubectlThroughSandbox(t *testing.T) {
	if why := testBedMissing(); why != "" {
		t.Skip(why)
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl is not on PATH; the end-to-end test runs the real kubectl")
	}
	bin := kubegateBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{Binary: bin, Logf: t.Logf})
	if err != nil {
		t.Fatalf("starting the sandbox stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, svc := range []*stack.Service{s.Authz, s.ExtProc, s.XDS} {
				if data, err := os.ReadFile(svc.LogPath()); err == nil {
					t.Logf("--- %s log ---\n%s", svc.Name, data)
				}
			}
		}
		if err := s.Stop(); err != nil {
			t.Errorf("stopping the stack: %v", err)
		}
	})
	cs, err := kubernetes.NewForConfig(s.Cluster.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.SeedDemo(ctx, cs); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "alice.token")
	must(t, os.WriteFile(tokenFile, []byte(sandboxToken(t, "ALICE_TOKEN")+"\n"), 0o600))
	kc := filepath.Join(dir, "kubeconfig")
	// The user's kubeconfig already has another context, current: it must survive.
	must(t, os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters:
- name: elsewhere
  cluster: {server: "https://elsewhere.example.com"}
users:
- name: someone
  user: {token: other-token}
contexts:
- name: elsewhere
  context: {cluster: elsewhere, user: someone}
current-context: elsewhere
`), 0o600))
	env := userEnv(t, "KUBECONFIG="+kc)
	runIn := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}

	// The stack's GatewayURL is the kubeconfig server, <base>/k8s-proxy; --server
	// takes the base.
	base := strings.TrimSuffix(s.GatewayURL, kubeconfig.ProxyPath)
	update := []string{"update-kubeconfig", "--server", base, "--ca", s.GatewayCA, "--agent", "1", "--token-file", tokenFile, "--use-context"}
	runIn(bin, update...)
	runIn(kubectl, "config", "set-context", "--current", "--namespace", stack.DemoNamespace)
	if out := runIn(bin, update...); !strings.Contains(out, "already up to date") {
		t.Fatalf("a second update-kubeconfig changed the kubeconfig: %s", out)
	}

	if out := runIn(kubectl, "get", "pods", "-o", "name"); out != "pod/web" {
		t.Fatalf("kubectl get pods = %q, want pod/web", out)
	}
	if out := runIn(kubectl, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); out != "gitlab:user:alice" {
		t.Fatalf("the API server saw %q, want gitlab:user:alice", out)
	}
	if out := runIn(kubectl, "config", "get-contexts", "-o", "name"); !strings.Contains(out, "elsewhere") {
		t.Fatalf("the existing context is gone: %q", out)
	}
}
