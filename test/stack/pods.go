package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/cluster"
)

// DemoPodPort is the port of the demo's web pod that `kubectl port-forward` reaches.
const DemoPodPort = 8080

// DemoPods runs the sandbox's pods on the KWOK node (the stack must have been started
// with Options.Kubelet): SeedDemo's "web" and a "worker", both Running, with logs
// that grow every few seconds, `kubectl exec` running a local shell in the pod's
// directory, and web's port 8080 forwarded to a small local HTTP server.
type DemoPods struct {
	// Dir holds one directory per pod (its exec working directory and log file).
	Dir string
	// HTTPAddr is the local server behind web's port 8080.
	HTTPAddr string

	srv    *http.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartDemoPods seeds the pods (after SeedDemo) and starts their logs and server.
// Close stops them.
// With exec false, `kubectl exec` (and cp) find no exec target: the sandbox turns it
// off when its gateway listens beyond loopback, because the exec'd shell is a real
// shell on this machine and the demo tokens are public.
func StartDemoPods(ctx context.Context, c *cluster.Cluster, dir string, exec bool) (_ *DemoPods, err error) {
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &DemoPods{Dir: dir, HTTPAddr: l.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod demo/web, port %d (reached through kubectl port-forward and kubegate)\n", DemoPodPort)
	})
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = d.srv.Serve(l) }()
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	logCtx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel

	for _, name := range []string{"web", "worker"} {
		podDir := filepath.Join(dir, name)
		if err := os.MkdirAll(podDir, 0o755); err != nil {
			return nil, err
		}
		logs := filepath.Join(podDir, "container.log")
		if err := os.WriteFile(logs, nil, 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(podDir, "README"), []byte("This is pod demo/"+name+"'s working directory, simulated by KWOK on this machine.\n"), 0o644); err != nil {
			return nil, err
		}
		sim := cluster.PodSimulation{LogsFile: logs, AttachFile: logs}
		if exec {
			sim.ExecWorkDir = podDir
		}
		if name == "web" {
			sim.PortForward = map[int32]string{DemoPodPort: d.HTTPAddr}
		}
		if err := c.SimulatePod(ctx, DemoNamespace, name, sim); err != nil {
			return nil, err
		}
		if err := placeOnKubeletNode(ctx, cs, name); err != nil {
			return nil, err
		}
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		err := c.WaitPodRunning(wctx, DemoNamespace, name)
		wcancel()
		if err != nil {
			return nil, err
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			growLogs(logCtx, logs, name)
		}()
	}
	return d, nil
}

// placeOnKubeletNode binds SeedDemo's pod (created without a node: there is no
// scheduler) to the KWOK node, as a scheduler would (the pods/binding subresource),
// or creates the pod bound to it.
func placeOnKubeletNode(ctx context.Context, cs kubernetes.Interface, name string) error {
	pod, err := cs.CoreV1().Pods(DemoNamespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cs.CoreV1().Pods(DemoNamespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: cluster.KubeletNode, Containers: []corev1.Container{{
				Name: name, Image: "busybox:1.37",
			}}},
		}, metav1.CreateOptions{})
		return err
	case err != nil:
		return err
	case pod.Spec.NodeName != "":
		return nil
	}
	return cs.CoreV1().Pods(DemoNamespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: cluster.KubeletNode},
	}, metav1.CreateOptions{})
}

// growLogs appends a line to the pod's log every two seconds until ctx ends.
func growLogs(ctx context.Context, path, pod string) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for n := 1; ; n++ {
		_ = cluster.AppendContainerLog(path, fmt.Sprintf("%s: handled request #%d", pod, n))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Close stops the log writers and the HTTP server.
func (d *DemoPods) Close() error {
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
	err := d.srv.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
