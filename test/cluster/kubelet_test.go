package cluster_test

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubegate.dev/kubegate/test/cluster"
)

// TestKubeletRunsPods: with Options.Kubelet the node is Ready, a pod bound to it
// becomes Running, and the API server reaches KWOK's kubelet API for logs and exec
// (straight, as the admin; test/e2e does the same through the gateway).
func TestKubeletRunsPods(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{Kubelet: true})
	ctx := t.Context()
	admin := clientset(t, c.AdminConfig())

	node, err := admin.CoreV1().Nodes().Get(ctx, cluster.KubeletNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(node.Status.Addresses) != 1 || node.Status.Addresses[0].Address != "127.0.0.1" || node.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
		t.Fatalf("node %s reports addresses %v, kubelet port %d", node.Name, node.Status.Addresses, node.Status.DaemonEndpoints.KubeletEndpoint.Port)
	}

	const ns, pod = "kwok-test", "app"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No serviceaccount controller runs (see TestAgentImpersonation).
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logs := filepath.Join(dir, "app.log")
	if err := cluster.AppendContainerLog(logs, "first line"); err != nil {
		t.Fatal(err)
	}
	if err := c.SimulatePod(ctx, ns, pod, cluster.PodSimulation{ExecWorkDir: dir, LogsFile: logs}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod},
		Spec:       corev1.PodSpec{NodeName: cluster.KubeletNode, Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := c.WaitPodRunning(wctx, ns, pod); err != nil {
		t.Fatal(err)
	}

	t.Run("logs", func(t *testing.T) {
		rc, err := admin.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil || string(b) != "first line\n" {
			t.Fatalf("logs = %q, %v; want the log file's line", b, err)
		}
	})
	t.Run("exec", func(t *testing.T) {
		// kubectl: the real client for the exec stream, straight to the API server.
		cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", c.AdminKubeconfig, "exec", "-i", "-n", ns, pod, "--", "sh", "-c", "pwd; head -n 1; echo err >&2")
		var stdout, stderr bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader("from stdin\n"), &stdout, &stderr
		err := cmd.Run()
		if err != nil || stdout.String() != dir+"\nfrom stdin\n" || !strings.HasSuffix(stderr.String(), "err\n") {
			t.Fatalf("exec: err %v, stdout %q, stderr %q; want the work dir and stdin echoed, err on stderr", err, stdout.String(), stderr.String())
		}
	})
}
