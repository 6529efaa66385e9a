package chart

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubegate.dev/kubegate/test/dataplane"
	"kubegate.dev/kubegate/test/stack"
)

// In-image paths of the two programs the pod runs (Dockerfile; Envoy's image).
const (
	imageKubegate = "/usr/local/bin/kubegate"
	imageEnvoy    = "/usr/local/bin/envoy"
)

// podAsProcesses installs the chart for the test bed (apiServer.url is the test API
// server: the only value a real cluster would not need), creates its pod from the
// Deployment's template, and runs that pod here: every volume materialised the way
// the kubelet writes it, from the API server's objects (ConfigMaps, Secrets, a
// TokenRequest bound to the pod for the projected token); every container's command
// and arguments as rendered, with only the mount-path prefixes rewritten to the
// volumes' directories; the init container to completion; authz, extproc and xds as
// processes; and the test data plane (test/dataplane) in place of the Envoy
// container, fed the bootstrap the init container wrote. Then kubectl goes through
// it as alice, and alice and bob log in to the browser half (browser.enabled) with
// the sandbox's demo passwords. A wrong flag, path, mount or socket in the chart
// fails here.
func podAsProcesses(ctx context.Context, t *testing.T, tb *testbed) {
	const ns, release = "kg-proc", "kg"
	ports := freePorts(t, 4)
	publicURL := fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	v := withBrowser(t).merge(values{
		"apiServer": values{"url": tb.c.URL},
		"listener":  values{"port": ports[0], "tls": values{"generated": values{"hosts": []any{"127.0.0.1"}}}},
		"authz":     values{"metricsPort": ports[1]},
		"extproc":   values{"metricsPort": ports[2]},
		"browser":   values{"port": ports[3], "publicURL": publicURL},
		"replicas":  1,
		// An operator module, mounted from the chart's ConfigMap.
		"policy": values{"modules": values{"no-configmaps.rego": "package kubegate.operator.noconfigmaps\n\n" +
			"deny contains \"configmaps are off limits here\" if input.request.resource == \"configmaps\"\n"}},
	})
	tb.restrictedNamespace(ctx, t, ns)
	// What an administrator creates before installing (README), and what
	// kube-controller-manager's root-ca-cert-publisher puts in every namespace (the
	// test bed does not run it): the cluster CA in kube-root-ca.crt.
	if _, err := tb.cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "kubegate-directory"},
		Data:       map[string][]byte{"directory.yaml": []byte(readFile(t, filepath.Join(root, "deploy", "sandbox", "directory.yaml")))},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The session key Secret, as values.yaml's browser.sessionKey says to create it.
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "kubegate-session-key"},
		Data:       map[string][]byte{"session.key": []byte(base64.StdEncoding.EncodeToString(key) + "\n")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
		Data:       map[string]string{"ca.crt": string(tb.c.CAPEM)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	objs := render(t, release, ns, v)
	tb.applyAll(ctx, t, objs)
	pod, err := tb.podFromTemplate(ctx, ns, objs, t, nil)
	if err != nil {
		t.Fatalf("the restricted namespace refused the Deployment's pod: %v", err)
	}

	dir := tempDir(t)
	vols := materialise(ctx, t, tb, pod, filepath.Join(dir, "v"))
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := kubegateBinary(t)
	var bootstrap string
	var renderView view
	for _, c := range pod.Spec.InitContainers {
		cmd, args := command(t, c, vols)
		if cmd != imageKubegate {
			t.Fatalf("init container %s runs %s; the test runs only %s", c.Name, cmd, imageKubegate)
		}
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("init container %s (kubegate %s): %v\n%s", c.Name, strings.Join(args, " "), err, out)
		}
		if c.Name == "render-envoy" {
			bootstrap = optionValue(args, "--output")
			renderView = viewOf(t, c, vols)
		}
	}
	if bootstrap == "" {
		t.Fatal("no init container rendered the Envoy bootstrap (render-envoy --output)")
	}
	if out, err := exec.CommandContext(ctx, bin, "envoy", "validate", bootstrap).CombinedOutput(); err != nil {
		t.Fatalf("kubegate envoy validate of the rendered bootstrap: %v\n%s", err, out)
	}

	health := map[string]string{"authz": "envoy.service.auth.v3.Authorization", "extproc": "envoy.service.ext_proc.v3.ExternalProcessor", "xds": ""}
	var envoyArgs []string
	var envoyView view
	for _, c := range pod.Spec.Containers {
		cmd, args := command(t, c, vols)
		switch cmd {
		case imageEnvoy:
			envoyArgs, envoyView = args, viewOf(t, c, vols)
			continue
		case imageKubegate:
		default:
			t.Fatalf("container %s runs %s; the test knows %s and %s", c.Name, cmd, imageKubegate, imageEnvoy)
		}
		if len(args) == 0 {
			t.Fatalf("container %s has no kubegate subcommand", c.Name)
		}
		hs, ok := health[args[0]]
		if !ok {
			t.Fatalf("container %s runs kubegate %s; the test runs authz, extproc and xds", c.Name, args[0])
		}
		svc := &stack.Service{Name: c.Name, Bin: bin, Addr: optionValue(args, "--listen"), Health: hs, LogDir: logs, Args: args}
		if err := svc.Start(ctx); err != nil {
			t.Fatalf("container %s: %v", c.Name, err)
		}
		t.Cleanup(svc.Stop)
	}
	if envoyArgs == nil {
		t.Fatal("no Envoy container")
	}
	config := envoyConfigPath(t, envoyArgs)
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatalf("the Envoy container's --config-path: %v (the init container wrote %s)", err, bootstrap)
	}
	// The bootstrap's paths are the pod's (the render container's mounts turned
	// back into their mount paths); Envoy sees them through its own mounts.
	data = []byte(envoyView.toHost(renderView.toPod(string(data))))
	dpLog, err := os.Create(filepath.Join(logs, "dataplane.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer dpLog.Close()
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"dataplane.log", "authz.log", "extproc.log", "xds.log"} {
				b, _ := os.ReadFile(filepath.Join(logs, f))
				t.Logf("--- %s ---\n%s", f, tail(string(b), 30))
			}
		}
	})
	dp, err := dataplane.Start(ctx, data, dataplane.Options{AccessLog: dpLog,
		Logger: slog.New(slog.NewJSONHandler(dpLog, nil))})
	if err != nil {
		t.Fatalf("the test data plane refused the chart's bootstrap: %v", err)
	}
	t.Cleanup(func() { dp.Close() })

	t.Run("helm test pod", func(t *testing.T) { helmTestPod(ctx, t, tb, objs, filepath.Join(dir, "hook")) })

	// kubectl as alice and bob, with the generated listener CA.
	tlsSecret, err := tb.cs.CoreV1().Secrets(ns).Get(ctx, "kg-kubegate-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubegate"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://127.0.0.1:%d/k8s-proxy", ports[0]), CertificateAuthorityData: tlsSecret.Data["ca.crt"]}
	for _, u := range []string{"alice", "bob"} {
		cfg.AuthInfos[u] = &clientcmdapi.AuthInfo{Token: fmt.Sprintf("pat:1:kg-sandbox-%s-token", u)}
		cfg.Contexts[u] = &clientcmdapi.Context{Cluster: "kubegate", AuthInfo: u, Namespace: stack.DemoNamespace}
	}
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	kubectl := func(user string, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig, "--context", user, "--cache-dir", filepath.Join(dir, "kcache")}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	t.Run("alice lists pods", func(t *testing.T) {
		out, err := kubectl("alice", "get", "pods", "-o", "name")
		if err != nil || !strings.Contains(out, "pod/web") {
			t.Fatalf("kubectl get pods as alice: %v\n%s", err, out)
		}
	})
	t.Run("alice is herself", func(t *testing.T) {
		out, err := kubectl("alice", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		if err != nil || strings.TrimSpace(out) != "gitlab:user:alice" {
			t.Fatalf("kubectl auth whoami as alice = %q, %v", out, err)
		}
	})
	t.Run("the operator module denies", func(t *testing.T) {
		out, err := kubectl("alice", "get", "configmaps")
		if err == nil || !strings.Contains(out, "configmaps are off limits here") {
			t.Fatalf("kubectl get configmaps as alice: %v\n%s", err, out)
		}
	})
	t.Run("bob is refused", func(t *testing.T) {
		out, err := kubectl("bob", "get", "pods")
		if err == nil || !strings.Contains(out, "Forbidden") {
			t.Fatalf("kubectl get pods as bob (a reporter): %v\n%s", err, out)
		}
	})
	t.Run("browser", func(t *testing.T) {
		browserThroughPod(ctx, t, tb, publicURL, tlsSecret.Data["ca.crt"])
	})
	// The API server saw the chart's ServiceAccount, through the projected token
	// bound to this pod, impersonating alice.
	t.Run("upstream identity is the pod's ServiceAccount", func(t *testing.T) {
		sa := fmt.Sprintf("system:serviceaccount:%s:%s", ns, pod.Spec.ServiceAccountName)
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ev, err := tb.c.WaitForAuditEvent(actx, func(e *auditv1.Event) bool {
			return e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice" && e.User.Username == sa
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := ev.User.Extra["authentication.kubernetes.io/pod-name"]; !slices.Equal(got, authenticationv1.ExtraValue{pod.Name}) {
			t.Errorf("the agent token is bound to pod %v, want %s", got, pod.Name)
		}
	})
}

// helmTestPod runs the chart's `helm test` pod the same way: its init container
// renders the bootstrap into its volume, and its Envoy container's arguments must
// name that file for `envoy --mode validate`, which kubegate envoy validate stands
// in for here.
func helmTestPod(ctx context.Context, t *testing.T, tb *testbed, objs []*unstructured.Unstructured, dir string) {
	var pod corev1.Pod
	for _, o := range objs {
		if o.GetKind() == "Pod" && o.GetAnnotations()["helm.sh/hook"] == "test" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &pod, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	if pod.Name == "" {
		t.Fatal("no helm test pod rendered")
	}
	vols := materialise(ctx, t, tb, &pod, dir)
	bin := kubegateBinary(t)
	for _, c := range pod.Spec.InitContainers {
		cmd, args := command(t, c, vols)
		if cmd != imageKubegate {
			t.Fatalf("init container %s runs %s", c.Name, cmd)
		}
		if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("init container %s: %v\n%s", c.Name, err, out)
		}
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("the helm test pod has %d containers, want the Envoy validator only", len(pod.Spec.Containers))
	}
	cmd, args := command(t, pod.Spec.Containers[0], vols)
	if cmd != imageEnvoy || len(args) < 2 || args[0] != "--mode" || args[1] != "validate" {
		t.Fatalf("the helm test container runs %s %q, want envoy --mode validate", cmd, args)
	}
	config := envoyConfigPath(t, args[2:])
	if out, err := exec.CommandContext(ctx, bin, "envoy", "validate", config).CombinedOutput(); err != nil {
		t.Fatalf("kubegate envoy validate %s (what the helm test pod's Envoy validates): %v\n%s", config, err, out)
	}
}

// optionValue returns the value of --name=value or --name value in args.
func optionValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// envoyConfigPath reads the Envoy container's arguments, refusing any option the
// test does not know (Envoy's options: envoyproxy.io/docs/envoy/latest/operations/cli).
func envoyConfigPath(t *testing.T, args []string) string {
	t.Helper()
	var config string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--config-path", "-c":
			if i+1 == len(args) {
				t.Fatalf("envoy %s without a value", args[i])
			}
			config = args[i+1]
			i++
		case "--log-level", "-l":
			i++
		case "--disable-hot-restart":
		default:
			t.Fatalf("the Envoy container passes %q, which this test does not emulate", args[i])
		}
	}
	if config == "" {
		t.Fatal("the Envoy container has no --config-path")
	}
	return config
}

// command returns c's program and arguments with every path under one of c's own
// mounts rewritten to the directory materialise made for that volume. Only c's
// mounts: a path the container does not mount stays as it is, and fails.
func command(t *testing.T, c corev1.Container, vols map[string]string) (string, []string) {
	t.Helper()
	v := viewOf(t, c, vols)
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = v.toHost(a)
	}
	return c.Command[0], args
}

// view is one container's file system: its mounts, longest path first.
type view struct {
	mounts []corev1.VolumeMount
	vols   map[string]string
}

// viewOf checks c's command and mounts and returns its view.
func viewOf(t *testing.T, c corev1.Container, vols map[string]string) view {
	t.Helper()
	if len(c.Command) != 1 {
		t.Fatalf("container %s: command %q; want the program alone, its arguments in args", c.Name, c.Command)
	}
	mounts := slices.Clone(c.VolumeMounts)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPath) > len(mounts[j].MountPath) })
	for _, m := range mounts {
		if _, ok := vols[m.Name]; !ok {
			t.Fatalf("container %s mounts %s, which is not a volume of the pod", c.Name, m.Name)
		}
		if m.SubPath != "" {
			t.Fatalf("container %s mounts %s with a subPath (updates never reach it)", c.Name, m.Name)
		}
	}
	return view{mounts: mounts, vols: vols}
}

// toHost rewrites the container's paths in s to the volumes' directories, in one
// pass: at each "/" the longest mount path that is a whole path prefix (followed by
// "/" or the end) is replaced, and replaced text is not looked at again.
func (v view) toHost(arg string) string {
	var b strings.Builder
	for i := 0; i < len(arg); {
		matched := false
		if arg[i] == '/' {
			for _, m := range v.mounts { // longest first
				end := i + len(m.MountPath)
				if strings.HasPrefix(arg[i:], m.MountPath) && (end == len(arg) || arg[end] == '/') {
					b.WriteString(v.vols[m.Name])
					i = end
					matched = true
					break
				}
			}
		}
		if !matched {
			b.WriteByte(arg[i])
			i++
		}
	}
	return b.String()
}

// toPod turns the host directories of this container's mounts in s back into its
// mount paths: what s says inside the pod.
func (v view) toPod(s string) string {
	var pairs []string
	for _, m := range v.mounts {
		pairs = append(pairs, v.vols[m.Name], m.MountPath)
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

// materialise writes each of the pod's volumes into its own directory under dir,
// laid out as the kubelet's atomic writer does (a ..<timestamp> directory, a ..data
// symlink to it, and one symlink per file: k8s.io/kubernetes
// pkg/volume/util/atomic_writer.go), with the objects' contents read from the API
// server. It returns volume name → directory.
func materialise(ctx context.Context, t *testing.T, tb *testbed, pod *corev1.Pod, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		d := filepath.Join(dir, v.Name)
		out[v.Name] = d
		files := map[string][]byte{}
		var mode int32 = 0o644
		pick := func(data map[string][]byte, items []corev1.KeyToPath, what string) {
			if len(items) == 0 {
				for k, b := range data {
					files[k] = b
				}
				return
			}
			for _, it := range items {
				b, ok := data[it.Key]
				if !ok {
					t.Fatalf("volume %s: %s has no key %q (the kubelet would not start the pod)", v.Name, what, it.Key)
				}
				files[it.Path] = b
			}
		}
		switch {
		case v.EmptyDir != nil:
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		case v.ConfigMap != nil:
			cm, err := tb.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("volume %s: %v", v.Name, err)
			}
			data := map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			pick(data, v.ConfigMap.Items, "ConfigMap "+cm.Name)
			if v.ConfigMap.DefaultMode != nil {
				mode = *v.ConfigMap.DefaultMode
			}
		case v.Secret != nil:
			s, err := tb.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("volume %s: %v", v.Name, err)
			}
			pick(s.Data, v.Secret.Items, "Secret "+s.Name)
			if v.Secret.DefaultMode != nil {
				mode = *v.Secret.DefaultMode
			}
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				p := src.ServiceAccountToken
				if p == nil {
					t.Fatalf("volume %s: the test materialises only serviceAccountToken projections", v.Name)
				}
				// What the kubelet asks for (an empty audience: the API server's own).
				var aud []string
				if p.Audience != "" {
					aud = []string{p.Audience}
				}
				tr, err := tb.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
					Spec: authenticationv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: p.ExpirationSeconds,
						BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("volume %s: TokenRequest for %s: %v", v.Name, pod.Spec.ServiceAccountName, err)
				}
				files[p.Path] = []byte(tr.Status.Token)
			}
			if v.Projected.DefaultMode != nil {
				mode = *v.Projected.DefaultMode
			}
		default:
			t.Fatalf("volume %s: a kind the test does not materialise", v.Name)
		}
		ts := filepath.Join(d, "..2026_01_01_00_00_00.000000001")
		for name, b := range files {
			p := filepath.Join(ts, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			// The kubelet gives the files to fsGroup with this mode; here the test's
			// user owns them, so the owner bits decide.
			if err := os.WriteFile(p, b, os.FileMode(mode)&0o777); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(filepath.Base(ts), filepath.Join(d, "..data")); err != nil {
			t.Fatal(err)
		}
		tops := map[string]bool{}
		for name := range files {
			tops[strings.SplitN(name, "/", 2)[0]] = true
		}
		for top := range tops {
			if err := os.Symlink(filepath.Join("..data", top), filepath.Join(d, top)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
