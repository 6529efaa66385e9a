package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// KubeletNode is the node KWOK simulates when Options.Kubelet is set. There is no
// scheduler in the test bed: a pod runs on it only when its spec.nodeName says so.
const KubeletNode = "kwok-node"

// kwokNodeAnnotation marks the node KWOK manages
// (--manage-nodes-with-annotation-selector; KWOK's docs,
// site/content/en/docs/user/kwok-manage-nodes-and-pods.md).
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// kwokGroup is the API group of KWOK's configuration resources
// (sigs.k8s.io/kwok/pkg/apis/v1alpha1).
var kwokGroup = schema.GroupVersion{Group: "kwok.x-k8s.io", Version: "v1alpha1"}

// kwokKinds are the per-pod and cluster-wide resources that say what KWOK's kubelet
// server does for exec, logs, attach and port-forward. Start installs them as CRDs
// and runs kwok with --enable-crds, so tests add them while the cluster runs
// (sigs.k8s.io/kwok/pkg/kwok/cmd/root.go: crdDefines; pkg/kwok/server/server.go:
// initWatchCRD watches each enabled kind).
var kwokKinds = []struct {
	kind, plural string
	namespaced   bool
}{
	{"Exec", "execs", true}, {"ClusterExec", "clusterexecs", false},
	{"Logs", "logs", true}, {"ClusterLogs", "clusterlogs", false},
	{"Attach", "attaches", true}, {"ClusterAttach", "clusterattaches", false},
	{"PortForward", "portforwards", true}, {"ClusterPortForward", "clusterportforwards", false},
}

// kwokStages is the kwok configuration file: the Stages that drive the node and pod
// lifecycle. The kwok binary loads no stages of its own (kwokctl writes KWOK's
// defaults from kustomize/stage/{node,pod}/fast into its config; without any, kwok
// exits with "no stages found", pkg/kwok/cmd/root.go), so these are the test bed's:
// the managed node becomes Ready and reports the kubelet endpoint the API server
// dials; a pod bound to it goes Pending → Running with every container running; an
// ephemeral container added by `kubectl debug` is reported running (KWOK's own
// stages do not, so kubectl debug would wait forever); a deleted pod is removed at
// once. Template functions (Now, Quote, NodeIP, NodePort)
// are KWOK's (site/content/en/docs/user/go-template.md, stages-configuration.md).
const kwokStages = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubegate-node-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - type: Ready
        status: "True"
        reason: KubeletReady
        message: "kwok simulates this node's kubelet"
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      addresses:
      - type: InternalIP
        address: {{ NodeIP | Quote }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ NodePort }}
      allocatable: {cpu: "32", memory: 64Gi, pods: "110"}
      capacity: {cpu: "32", memory: 64Gi, pods: "110"}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: kwok
        containerRuntimeVersion: kwok
        kernelVersion: kwok
        kubeProxyVersion: kwok
        bootID: ""
        machineID: ""
        osImage: ""
        systemUUID: ""
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubegate-pod-running
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.phase'
      operator: In
      values: ['Pending']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIP | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubegate-pod-ephemeral-running
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.phase'
      operator: In
      values: ['Running']
    - key: '((.spec.ephemeralContainers // []) | length) > ((.status.ephemeralContainerStatuses // []) | length)'
      operator: In
      values: ['true']
  next:
    statusTemplate: |
      {{ $now := Now }}
      ephemeralContainerStatuses:
      {{ range .spec.ephemeralContainers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: false
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubegate-pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: Exists
  next:
    delete: true
`

// kubeletAPIServerFlags make the API server reach KWOK's kubelet server like a real
// kubelet: over TLS verified against the test bed's CA (the kubelet certificate is for
// 127.0.0.1, the node's only address), with a client certificate. kwok does not check
// client certificates (pkg/kwok/server/server.go: Run serves TLS without
// ClientAuth), but the API server's side is configured as in a real cluster.
func kubeletAPIServerFlags(p *pki) []string {
	return []string{
		"--kubelet-client-certificate=" + p.kubeletClientCert,
		"--kubelet-client-key=" + p.kubeletClientKey,
		"--kubelet-certificate-authority=" + p.caFile,
		// Only the InternalIP: the default order tries the node's Hostname first.
		"--kubelet-preferred-address-types=InternalIP",
	}
}

// startKubelet installs KWOK's CRDs, creates KubeletNode and runs kwok as its kubelet,
// returning once the node is Ready and kwok's kubelet server answers on TLS.
func (c *Cluster) startKubelet(ctx context.Context, opts Options, bin string, p *pki) error {
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(c.AdminConfig())
	if err != nil {
		return err
	}
	if err := installKWOKCRDs(ctx, dyn, opts.ReadyTimeout); err != nil {
		return err
	}
	configFile := filepath.Join(c.WorkDir, "kwok.yaml")
	if err := os.WriteFile(configFile, []byte(kwokStages), 0o644); err != nil {
		return err
	}
	kinds := make([]string, len(kwokKinds))
	for i, k := range kwokKinds {
		kinds[i] = k.kind
	}
	return c.startWithFreePorts(ctx, 1, func(ports []int) (*process, readyCheck, error) {
		// A node from an earlier attempt reports that attempt's port.
		if err := recreateNode(ctx, cs); err != nil {
			return nil, nil, err
		}
		port := strconv.Itoa(ports[0])
		// Flags: sigs.k8s.io/kwok/pkg/kwok/cmd/root.go (NewCommand) and
		// pkg/config/flags.go (--config).
		args := []string{
			"--kubeconfig=" + c.AdminKubeconfig,
			"--config=" + configFile,
			"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
			"--node-ip=127.0.0.1",
			"--node-port=" + port,
			"--server-address=127.0.0.1:" + port,
			"--tls-cert-file=" + p.kubeletCert,
			"--tls-private-key-file=" + p.kubeletKey,
			"--enable-crds=" + strings.Join(kinds, ","),
		}
		proc, err := startProcess(kwokBinary, bin, args, filepath.Join(c.LogDir, "kwok.log"))
		return proc, c.kubeletReady(cs, "https://127.0.0.1:"+port+"/healthz"), err
	}, opts.ReadyTimeout)
}

func recreateNode(ctx context.Context, cs kubernetes.Interface) error {
	zero := int64(0)
	err := cs.CoreV1().Nodes().Delete(ctx, KubeletNode, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting node %s: %w", KubeletNode, err)
	}
	_, err = cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        KubeletNode,
		Annotations: map[string]string{kwokNodeAnnotation: "fake"},
		Labels:      map[string]string{"kubernetes.io/hostname": KubeletNode, "type": "kwok"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", KubeletNode, err)
	}
	return nil
}

// kubeletReady: the node is Ready with the kubelet port KWOK was given, and that port
// serves /healthz over TLS with the kubelet certificate the API server will verify.
func (c *Cluster) kubeletReady(cs kubernetes.Interface, healthz string) readyCheck {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return func(ctx context.Context) error {
		node, err := cs.CoreV1().Nodes().Get(ctx, KubeletNode, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
		}
		if !ready {
			return fmt.Errorf("node %s is not Ready yet", KubeletNode)
		}
		if got := strconv.Itoa(int(node.Status.DaemonEndpoints.KubeletEndpoint.Port)); !strings.HasSuffix(healthz, ":"+got+"/healthz") {
			return fmt.Errorf("node %s reports kubelet port %s, not the one kwok serves (%s)", KubeletNode, got, healthz)
		}
		_, err = get(ctx, client, healthz, "")
		return err
	}
}

// installKWOKCRDs creates a CRD for each of kwokKinds with an open schema: kwok
// reads them through its own typed client, so the API server need not validate
// them (KWOK's full schemas are in its kustomize/crd/bases).
func installKWOKCRDs(ctx context.Context, dyn dynamic.Interface, timeout time.Duration) error {
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, k := range kwokKinds {
		scope := "Cluster"
		if k.namespaced {
			scope = "Namespaced"
		}
		crd := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1",
			"kind":       "CustomResourceDefinition",
			"metadata":   map[string]any{"name": k.plural + "." + kwokGroup.Group},
			"spec": map[string]any{
				"group": kwokGroup.Group,
				"scope": scope,
				"names": map[string]any{"kind": k.kind, "listKind": k.kind + "List", "plural": k.plural, "singular": strings.ToLower(k.kind)},
				"versions": []any{map[string]any{
					"name": kwokGroup.Version, "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{
						"type": "object", "x-kubernetes-preserve-unknown-fields": true,
					}},
				}},
			},
		}}
		if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("installing KWOK's %s CRD: %w", k.kind, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for _, k := range kwokKinds {
		for {
			obj, err := crds.Get(ctx, k.plural+"."+kwokGroup.Group, metav1.GetOptions{})
			if err == nil && crdEstablished(obj) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("KWOK's %s CRD not established after %s (last error: %v)", k.kind, timeout, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func crdEstablished(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// PodSimulation says what the simulated kubelet does for one pod (all its
// containers). SimulatePod writes it as KWOK's namespaced Exec, Logs, Attach and
// PortForward resources named after the pod (KWOK's docs:
// site/content/en/docs/user/{exec,logs,attach,port-forward}-configuration.md).
type PodSimulation struct {
	// ExecWorkDir, if set, makes `kubectl exec` run the command as a local process of
	// kwok in this directory, with the stream's stdin, stdout, stderr (or a pty with
	// -t). There is no container filesystem: absolute paths are this machine's. The
	// end of stdin is not passed on without -t (KWOK v0.8.0, pkg/utils/exec/exec.go,
	// leaves the command's stdin pipe open), so `cat` never ends; `head -n 1` does.
	ExecWorkDir string
	// LogsFile is what `kubectl logs` (and -f, which follows appended lines) streams;
	// it must be in the CRI log format (AppendContainerLog writes it).
	LogsFile string
	// AttachFile is what `kubectl attach` streams: lines appended after it attached
	// (KWOK's attach follows a file from its end and ignores stdin).
	AttachFile string
	// PortForward maps a pod port to a local TCP address (host:port) kwok dials for
	// `kubectl port-forward`.
	PortForward map[int32]string
}

// SimulatePod creates (or replaces) the KWOK resources for pod namespace/name. Create
// them before the pod, so kwok knows them when the pod is Running.
func (c *Cluster) SimulatePod(ctx context.Context, namespace, name string, sim PodSimulation) error {
	dyn, err := dynamic.NewForConfig(c.AdminConfig())
	if err != nil {
		return err
	}
	specs := map[string]map[string]any{}
	if sim.ExecWorkDir != "" {
		specs["execs"] = map[string]any{"execs": []any{map[string]any{"local": map[string]any{"workDir": sim.ExecWorkDir}}}}
	}
	if sim.LogsFile != "" {
		specs["logs"] = map[string]any{"logs": []any{map[string]any{"logsFile": sim.LogsFile, "follow": true}}}
	}
	if sim.AttachFile != "" {
		specs["attaches"] = map[string]any{"attaches": []any{map[string]any{"logsFile": sim.AttachFile}}}
	}
	if len(sim.PortForward) > 0 {
		var forwards []any
		ports := make([]int32, 0, len(sim.PortForward))
		for p := range sim.PortForward {
			ports = append(ports, p)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, p := range ports {
			host, portStr, ok := strings.Cut(sim.PortForward[p], ":")
			target, err := strconv.Atoi(portStr)
			if !ok || err != nil {
				return fmt.Errorf("port-forward target for port %d is %q, want host:port", p, sim.PortForward[p])
			}
			forwards = append(forwards, map[string]any{
				"ports":  []any{int64(p)},
				"target": map[string]any{"address": host, "port": int64(target)},
			})
		}
		specs["portforwards"] = map[string]any{"forwards": forwards}
	}
	if len(specs) == 0 {
		return errors.New("SimulatePod: the simulation is empty (set ExecWorkDir, LogsFile, AttachFile or PortForward)")
	}
	for _, k := range kwokKinds {
		spec, ok := specs[k.plural]
		if !ok || !k.namespaced {
			continue
		}
		res := dyn.Resource(kwokGroup.WithResource(k.plural)).Namespace(namespace)
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": kwokGroup.String(), "kind": k.kind,
			"metadata": map[string]any{"name": name, "namespace": namespace},
			"spec":     spec,
		}}
		err := res.Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replacing KWOK %s %s/%s: %w", k.kind, namespace, name, err)
		}
		if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating KWOK %s %s/%s: %w", k.kind, namespace, name, err)
		}
	}
	return nil
}

// WaitPodRunning waits until the pod's phase is Running (KWOK's stage made it so).
func (c *Cluster) WaitPodRunning(ctx context.Context, namespace, name string) error {
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return err
	}
	for {
		pod, err := cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil && pod.Status.Phase == corev1.PodRunning {
			return nil
		}
		select {
		case <-ctx.Done():
			phase := "unknown"
			if pod != nil {
				phase = string(pod.Status.Phase)
			}
			return fmt.Errorf("pod %s/%s not Running (phase %s, last error %v): is it bound to node %s "+
				"(spec.nodeName) and was the cluster started with Options.Kubelet? %w", namespace, name, phase, err, KubeletNode, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// AppendContainerLog appends one line to a container log file in the CRI logging
// format the kubelet's log reader expects ("<RFC3339Nano> stdout F <line>"; KWOK
// reads logs with k8s.io/cri-client/pkg/logs).
func AppendContainerLog(path, line string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s stdout F %s\n", time.Now().UTC().Format(time.RFC3339Nano), line)
	return errors.Join(err, f.Close())
}
