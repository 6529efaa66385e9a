// Command sandbox is `make sandbox`: a real local kubegate stack with a demo
// directory. It starts etcd, kube-apiserver, kube-controller-manager and KWOK (the
// simulated kubelet of one node, so the demo pods run), the
// kubegate authz, extproc and xds services, and a data plane running the bootstrap
// `kubegate envoy render` produced (Envoy if an `envoy` binary is on PATH, otherwise
// kubegate's test data plane), seeds demo RBAC, writes sandbox.kubeconfig and prints
// kubectl commands to try. Ctrl-C stops everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/stack"
)

func main() {
	root := stack.ModuleRoot()
	addr := flag.String("listen", "127.0.0.1:8443", "address of the gateway (the kubeconfig's server)")
	workDir := flag.String("work-dir", filepath.Join(root, ".sandbox"), "where the sandbox keeps its state and logs")
	binary := flag.String("kubegate", filepath.Join(root, "bin", "kubegate"), "the kubegate binary (make build)")
	kubeconfig := flag.String("kubeconfig", filepath.Join(root, "sandbox.kubeconfig"), "the kubeconfig to write")
	policy := flag.String("policy", "", "a directory of operator Rego modules for kubegate authz")
	flag.Parse()
	if err := run(*addr, *workDir, *binary, *kubeconfig, *policy); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func run(addr, workDir, binary, kubeconfig, policy string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("%s: %v (run make build, or make sandbox which builds it)", binary, err)
	}
	// A previous run's cluster state is discarded; the gateway's CA is kept so an
	// existing sandbox.kubeconfig stays valid.
	for _, d := range []string{"cluster", "logs"} {
		if err := os.RemoveAll(filepath.Join(workDir, d)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return err
	}
	started := time.Now()
	logf := func(format string, args ...any) { fmt.Printf("[sandbox] "+format+"\n", args...) }
	s, err := stack.Start(ctx, stack.Options{
		WorkDir: workDir, Binary: binary, GatewayAddr: addr, PolicyDir: policy, UseEnvoy: true, Kubelet: true, Browser: true, Logf: logf,
	})
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping everything")
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox: stopping:", err)
		}
	}()
	cs, err := kubernetes.NewForConfig(s.Cluster.AdminConfig())
	if err != nil {
		return err
	}
	if err := stack.SeedDemo(ctx, cs); err != nil {
		return err
	}
	// kubectl exec runs a real shell on this machine: only offer it when the gateway
	// is reachable from this machine alone (the demo tokens are public).
	execOK := isLoopback(addr)
	if !execOK {
		logf("the gateway listens on %s, beyond loopback: kubectl exec and cp into the demo pods are off (they would run a shell on this machine)", addr)
	}
	pods, err := stack.StartDemoPods(ctx, s.Cluster, filepath.Join(workDir, "pods"), execOK)
	if err != nil {
		return err
	}
	defer pods.Close()
	if err := stack.SeedDemoDeployment(ctx, cs, 2); err != nil {
		return err
	}
	users := []stack.KubeconfigUser{}
	for _, u := range []string{"alice", "bob", "carol", "dave", "grace", "heidi", "erin"} {
		users = append(users, stack.KubeconfigUser{Name: u, Token: "kg-sandbox-" + u + "-token"})
	}
	if err := s.WriteKubeconfig(kubeconfig, users...); err != nil {
		return err
	}
	banner(s, kubeconfig, workDir, time.Since(started))
	<-ctx.Done()
	fmt.Println()
	return nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func banner(s *stack.Stack, kubeconfig, workDir string, took time.Duration) {
	line := strings.Repeat("─", 78)
	fmt.Println(line)
	if s.DataPlane == stack.DataPlaneTest {
		fmt.Println("  NOTE: no `envoy` binary on PATH, so the gateway is kubegate's TEST DATA PLANE,")
		fmt.Println("  a Go stand-in that runs the same rendered bootstrap. It is a test tool, not a")
		fmt.Println("  production data plane: use Envoy (docker-compose.yaml) for anything real.")
		fmt.Println(line)
	}
	fmt.Printf(`  kubegate sandbox is up (%s, data plane: %s)

  gateway     %s
  Dashboard   %s
              log in as alice / alice-sandbox-password (allowed) or bob / bob-sandbox-password
              (refused: a reporter); the browser must trust %s
  API server  %s (kubegate authz/extproc/xds in front of it)
  bootstrap   %s
  logs        %s

  Try, in another terminal:

    export KUBECONFIG=%s

    kubectl get pods                      # alice (maintainer of group-1/project-1): allowed
    kubectl get configmap welcome -o yaml # she can read what the 'view' role allows
    kubectl auth whoami                   # the identity the API server sees (impersonated)
    kubectl get --raw /readyz             # the API's top-level paths work too (kubectl --raw skips /k8s-proxy)
    kubectl create namespace x            # refused by the API server's RBAC, not by kubegate
    kubectl --context bob get pods        # bob is only a reporter: 403 from kubegate
    kubectl --context carol get pods      # developer of group-3, parent of a listed group: allowed
    kubectl --context dave get pods       # only in a subgroup of a listed group: 403
    kubectl --context erin get pods       # revoked token: 401
    kubectl --context alice --as=admin get pods   # client impersonation: 403

    kubectl logs -f web                   # a Running pod (KWOK's node) whose log grows
    kubectl exec -it web -- sh            # a shell in the pod's directory (on this machine)
    kubectl port-forward web 8080:8080    # then: curl http://127.0.0.1:8080/
    kubectl --context heidi exec web -- ls  # heidi may only view: the API server's Forbidden

  Press Ctrl-C to stop everything.
%s
`, took.Round(100*time.Millisecond), s.DataPlane, s.GatewayURL, s.DashboardURL, s.GatewayCA, s.Cluster.URL, s.Bootstrap, filepath.Join(workDir, "logs"), kubeconfig, line)
}
