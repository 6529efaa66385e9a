package chartmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/test/cluster"
	"sigs.k8s.io/yaml"
)

// probeTemplate renders the pod additions of templates/mesh/_mesh.tpl the way the
// core Deployment includes them, in a Pod and a NetworkPolicy of their own, so
// the fragments meet the real API server: admission with the restricted Pod
// Security Standard, and the paths the EnvoyFilter's listener reads. The pod has
// no pod-level securityContext: the istio-proxy container must be restricted by
// itself.
const probeTemplate = `{{- if eq (include "kubegate.mesh.mode" .) "istio" }}
apiVersion: v1
kind: Pod
metadata:
  name: mesh-probe
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "kubegate.selectorLabels" . | nindent 4 }}
    {{- include "kubegate.mesh.podLabels" . | nindent 4 }}
  annotations:
    {{- include "kubegate.mesh.podAnnotations" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "kubegate.fullname" . }}
  containers:
  {{- include "kubegate.mesh.proxyContainer" (dict "root" . "socketsVolume" "sockets" "tlsVolume" "tls") | nindent 2 }}
  volumes:
  - name: sockets
    emptyDir: {}
  - name: tls
    secret:
      secretName: {{ include "kubegate.fullname" . }}-tls
  {{- include "kubegate.mesh.volumes" . | nindent 2 }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: mesh-probe
  namespace: {{ .Release.Namespace }}
spec:
  podSelector:
    matchLabels:
      {{- include "kubegate.selectorLabels" . | nindent 6 }}
  policyTypes: [Egress]
  egress:
  {{- include "kubegate.mesh.networkPolicyEgress" . | nindent 2 }}
{{- end }}
`

// renderWithProbe renders a copy of the chart with probeTemplate added.
func renderWithProbe(t testing.TB, values string) []map[string]any {
	t.Helper()
	chart := copyChart(t)
	if err := os.WriteFile(filepath.Join(chart, "templates", "zz-mesh-probe.yaml"), []byte(probeTemplate), 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := helmTemplate(t, chart, values)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func named(objs []map[string]any, kind, name string) map[string]any {
	for _, o := range find(objs, kind) {
		if o["metadata"].(map[string]any)["name"] == name {
			return o
		}
	}
	return nil
}

func decode[T any](t testing.TB, obj map[string]any) *T {
	t.Helper()
	j, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := json.Unmarshal(j, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// The parts of a Pod this test reads (not k8s.io/api's types: the test must see
// exactly what was rendered, and those types drop nothing but add defaults).
type probePod struct {
	Metadata struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers []struct {
			Name  string `json:"name"`
			Image string `json:"image"`
			Ports []struct {
				ContainerPort int `json:"containerPort"`
			} `json:"ports"`
			VolumeMounts []struct{ Name, MountPath string } `json:"volumeMounts"`
		} `json:"containers"`
		Volumes []struct {
			Name      string `json:"name"`
			Projected *struct {
				Sources []struct {
					ServiceAccountToken *struct{ Path string } `json:"serviceAccountToken"`
					ConfigMap           *struct {
						Name  string                       `json:"name"`
						Items []struct{ Key, Path string } `json:"items"`
					} `json:"configMap"`
				} `json:"sources"`
			} `json:"projected"`
		} `json:"volumes"`
	} `json:"spec"`
}

// TestIstioPodFragmentMatchesTheFragments: the istio-proxy container the chart
// asks Istio to inject mounts every file the EnvoyFilter's listener and clusters
// read, at the paths they were built with, and the EnvoyFilter selects the pod.
func TestIstioPodFragmentMatchesTheFragments(t *testing.T) {
	for _, vs := range istioValueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := renderWithProbe(t, vs.values)
			podObj := named(objs, "Pod", "mesh-probe")
			if podObj == nil {
				t.Fatal("the probe pod did not render")
			}
			pod := decode[probePod](t, podObj)
			if pod.Metadata.Labels["sidecar.istio.io/inject"] != "true" || pod.Metadata.Annotations["inject.istio.io/templates"] != "gateway" {
				t.Errorf("labels %v, annotations %v: want Istio's gateway injection", pod.Metadata.Labels, pod.Metadata.Annotations)
			}
			if strings.Contains(vs.values, "revision: canary") != (pod.Metadata.Labels["istio.io/rev"] == "canary") {
				t.Errorf("istio.io/rev label %q for values %q", pod.Metadata.Labels["istio.io/rev"], vs.values)
			}
			ef := singleEnvoyFilter(t, objs)
			sel := ef["spec"].(map[string]any)["workloadSelector"].(map[string]any)["labels"].(map[string]any)
			for k, v := range sel {
				if pod.Metadata.Labels[k] != v {
					t.Errorf("the EnvoyFilter selects %s=%v, which the pod does not carry", k, v)
				}
			}
			if len(pod.Spec.Containers) != 1 || pod.Spec.Containers[0].Name != "istio-proxy" || pod.Spec.Containers[0].Image != "auto" {
				t.Fatalf("containers %+v: want one istio-proxy with image auto", pod.Spec.Containers)
			}
			c := pod.Spec.Containers[0]
			if len(c.Ports) != 1 || c.Ports[0].ContainerPort != int(vs.port) {
				t.Errorf("ports %+v, want the listener's %d", c.Ports, vs.port)
			}
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.MountPath] = m.Name
			}
			for dir, vol := range map[string]string{socketDir: "sockets", tlsDir: "tls", tokenDir: "kubegate-mesh-token"} {
				if mounts[dir] != vol {
					t.Errorf("%s is mounted from %q, want %q (mounts %v)", dir, mounts[dir], vol, mounts)
				}
			}
			// Every file the fragments name lies in a mounted directory.
			listener, clusters := patches(t, ef)
			files := filesNamed(append([]any{listener}, clusters...))
			for _, f := range files {
				if mounts[filepath.Dir(f)] == "" {
					t.Errorf("the fragments read %s, which no mount of istio-proxy provides", f)
				}
			}
			for _, f := range []string{tlsDir + "/tls.crt", tlsDir + "/tls.key", tokenDir + "/" + envoy.CAFile, tokenDir + "/" + envoy.TokenSDSFile} {
				if !slices.Contains(files, f) {
					t.Errorf("the fragments do not read %s (found %v): the walk above missed it", f, files)
				}
			}
			// The token volume holds exactly what the fragments and the SDS file read.
			got := map[string]string{}
			for _, v := range pod.Spec.Volumes {
				if v.Name != "kubegate-mesh-token" || v.Projected == nil {
					continue
				}
				for _, s := range v.Projected.Sources {
					switch {
					case s.ServiceAccountToken != nil:
						got[s.ServiceAccountToken.Path] = "serviceAccountToken"
					case s.ConfigMap != nil:
						for _, it := range s.ConfigMap.Items {
							got[it.Path] = s.ConfigMap.Name + "/" + it.Key
						}
					}
				}
			}
			const cm = "kg-kubegate-mesh-token-sds"
			if named(objs, "ConfigMap", cm) == nil {
				t.Fatalf("no ConfigMap %s rendered", cm)
			}
			want := map[string]string{envoy.TokenFile: "serviceAccountToken", envoy.CAFile: "kube-root-ca.crt/ca.crt", envoy.TokenSDSFile: cm + "/" + envoy.TokenSDSFile}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the token volume holds %v, want %v", got, want)
			}
		})
	}
}

// filesNamed collects every "filename" and "path" string under v that is an
// absolute file path (DataSource filenames, the SDS file; not socket pipes).
func filesNamed(vs []any) []string {
	var out []string
	var walk func(any, string)
	walk = func(v any, key string) {
		switch x := v.(type) {
		case map[string]any:
			if _, pipe := x["pipe"]; pipe {
				return
			}
			for k, e := range x {
				walk(e, k)
			}
		case []any:
			for _, e := range x {
				walk(e, key)
			}
		case string:
			if (key == "filename" || key == "path") && strings.HasPrefix(x, "/") && filepath.Ext(x) != "" {
				out = append(out, x)
			}
		}
	}
	for _, v := range vs {
		walk(v, "")
	}
	return out
}

// istioCRDs reads the CustomResourceDefinitions istio.io/api ships, at the version
// test/tools/crds pins, from Go's module cache.
func istioCRDs(t testing.TB) []map[string]any {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "istio.io/api")
	cmd.Dir = filepath.Join(repoRoot(t), "test", "tools", "crds")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download -json istio.io/api in test/tools/crds: %v\n%s", err, out)
	}
	var mod struct{ Dir, Version, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download: %v %s %s", err, mod.Error, out)
	}
	data, err := os.ReadFile(filepath.Join(mod.Dir, "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatalf("istio.io/api %s: %v", mod.Version, err)
	}
	docs, err := splitDocs(data)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("istio.io/api %s: %d CRDs", mod.Version, len(docs))
	return docs
}

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	// The kinds the chart's mesh objects are; another kind is a test failure,
	// so a new mesh object is never applied unchecked.
	kindGVR = map[string]schema.GroupVersionResource{
		"EnvoyFilter":   {Group: "networking.istio.io", Version: "v1alpha3", Resource: "envoyfilters"},
		"ConfigMap":     {Version: "v1", Resource: "configmaps"},
		"Pod":           {Version: "v1", Resource: "pods"},
		"NetworkPolicy": {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	}
)

func installCRDs(ctx context.Context, t testing.TB, dyn dynamic.Interface, crds []map[string]any) {
	t.Helper()
	for _, c := range crds {
		obj := &unstructured.Unstructured{Object: c}
		if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("installing CRD %s: %v", obj.GetName(), err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, c := range crds {
		name := (&unstructured.Unstructured{Object: c}).GetName()
		for {
			got, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(got) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established after a minute (last error %v)", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func established(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// apply server-side applies obj; a Pod only as a dry run (dryRun=All runs
// admission, Pod Security included, without a pod that nothing would run).
func apply(ctx context.Context, dyn dynamic.Interface, obj map[string]any) error {
	u := &unstructured.Unstructured{Object: obj}
	gvr, ok := kindGVR[u.GetKind()]
	if !ok {
		return fmt.Errorf("%s %s: not a kind this test knows; add it to kindGVR", u.GetKind(), u.GetName())
	}
	opts := metav1.ApplyOptions{FieldManager: "kubegate-chart-test", Force: true}
	if u.GetKind() == "Pod" {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).Apply(ctx, u.GetName(), u, opts)
	return err
}

// TestMeshObjectsApplyToTheRealCRDs installs istio.io/api's CRDs into the test API
// server and server-side applies everything each mesh value set renders, in a
// namespace that enforces the restricted Pod Security Standard; then shows that
// both the CRD schema and Pod Security do refuse (a misspelt patch target, a
// privileged proxy), so the acceptance above means something.
func TestMeshObjectsApplyToTheRealCRDs(t *testing.T) {
	crds := istioCRDs(t)
	c := cluster.StartForTest(t, cluster.Options{})
	dyn, err := dynamic.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	installCRDs(ctx, t, dyn, crds)
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": "kubegate", "labels": map[string]any{
			"pod-security.kubernetes.io/enforce":         "restricted",
			"pod-security.kubernetes.io/enforce-version": "latest",
		}},
	}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ServiceAccount",
		"metadata": map[string]any{"name": "kg-kubegate", "namespace": "kubegate"},
	}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}).Namespace("kubegate").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, vs := range istioValueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := renderWithProbe(t, vs.values)
			mesh := append(meshObjects(objs), named(objs, "Pod", "mesh-probe"), named(objs, "NetworkPolicy", "mesh-probe"))
			if len(mesh) != 4 || slices.ContainsFunc(mesh, func(o map[string]any) bool { return o == nil }) {
				t.Fatalf("%d mesh objects and probes rendered, want the EnvoyFilter, the token SDS ConfigMap and the two probes", len(mesh))
			}
			for _, o := range mesh {
				if err := apply(ctx, dyn, o); err != nil {
					y, _ := yaml.Marshal(o)
					t.Errorf("the API server refused the rendered %v: %v\n%s", o["kind"], err, y)
				}
			}
		})
	}

	t.Run("refused by the EnvoyFilter schema", func(t *testing.T) {
		ef := singleEnvoyFilter(t, render(t, istioValueSets[0].values))
		ef["spec"].(map[string]any)["configPatches"].([]any)[0].(map[string]any)["applyTo"] = "CLUSTERS"
		err := apply(ctx, dyn, ef)
		if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "applyTo") {
			t.Fatalf("got %v, want the CRD's schema to refuse applyTo CLUSTERS", err)
		}
	})
	t.Run("refused by Pod Security", func(t *testing.T) {
		pod := named(renderWithProbe(t, istioValueSets[0].values), "Pod", "mesh-probe")
		proxy := pod["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
		proxy["securityContext"].(map[string]any)["allowPrivilegeEscalation"] = true
		err := apply(ctx, dyn, pod)
		if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "restricted") {
			t.Fatalf("got %v, want the restricted Pod Security Standard to refuse allowPrivilegeEscalation", err)
		}
	})
}
