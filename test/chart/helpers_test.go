package chart

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/test/stack"
)

// kubeVersion is what helm template assumes of the cluster (the test bed's version;
// the chart's kubeVersion refuses helm's default v1.20).
const kubeVersion = "v1.37.2"

var (
	root     = stack.ModuleRoot()
	chartDir = filepath.Join(root, "deploy", "helm", "kubegate")

	helmOnce sync.Once
	helmBin  string
	helmErr  error
)

func helm(t testing.TB) string {
	t.Helper()
	helmOnce.Do(func() { helmBin, helmErr = Helm(root) })
	if helmErr != nil {
		t.Fatal(helmErr)
	}
	return helmBin
}

// runHelm runs helm with args and returns stdout, stderr and the error.
func runHelm(t testing.TB, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helm(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// helm keeps its caches and repository config under these; keep them out of $HOME.
	tmp := tempDir(t)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(tmp, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(tmp, "config"), "HELM_DATA_HOME="+filepath.Join(tmp, "data"))
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// values is a values tree, merged over the chart's values.yaml by helm.
type values map[string]any

// merge returns a copy of v with over deep-merged into it.
func (v values) merge(over values) values {
	out := maps.Clone(v)
	for k, x := range over {
		if sub, ok := x.(values); ok {
			if cur, ok := out[k].(values); ok {
				out[k] = cur.merge(sub)
				continue
			}
		}
		out[k] = x
	}
	return out
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// sandboxAgentConfig is the sandbox's agent configuration (user_access lists
// project 1, which alice maintains).
func sandboxAgentConfig(t testing.TB) string {
	return readFile(t, filepath.Join(root, "deploy", "sandbox", "agent-config.yaml"))
}

// minimal is the smallest value set the chart accepts: what README's "Install on a
// cluster" passes.
func minimal(t testing.TB) values {
	return values{
		"agent":         values{"id": 1, "configProjectId": 1, "config": values{"inline": sandboxAgentConfig(t)}},
		"identity":      values{"directory": values{"existingSecret": "kubegate-directory"}},
		"networkPolicy": values{"apiServer": values{"cidrs": []any{"10.0.0.1/32"}}},
	}
}

// withBrowser is minimal with the browser half: what README's chart section sets
// (one replica: the default memory session store refuses more).
func withBrowser(t testing.TB) values {
	return minimal(t).merge(values{
		"replicas": 1,
		"browser": values{"enabled": true, "publicURL": "https://kubegate.example.com",
			"sessionKey": values{"existingSecret": "kubegate-session-key"}},
	})
}

// production is testdata/production.yaml: GitLab, OIDC, cert-manager, a
// LoadBalancer, HPA, ServiceMonitor, operator policy.
func production(t testing.TB) values {
	var v values
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join("testdata", "production.yaml"))), &v); err != nil {
		t.Fatal(err)
	}
	return toValues(v)
}

// toValues turns the map[string]any of a decoded YAML tree into values, so merge
// can descend into it.
func toValues(v map[string]any) values {
	out := values{}
	for k, x := range v {
		if m, ok := x.(map[string]any); ok {
			out[k] = toValues(m)
		} else {
			out[k] = x
		}
	}
	return out
}

// template runs helm template for release in namespace with v and returns stdout,
// stderr and the error.
func template(t testing.TB, release, namespace string, v values, extra ...string) (string, string, error) {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(tempDir(t), "values.yaml")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion, "--values", f}, extra...)
	return runHelm(t, args...)
}

// render is template that must succeed; it returns the objects in order.
func render(t testing.TB, release, namespace string, v values) []*unstructured.Unstructured {
	t.Helper()
	out, stderr, err := template(t, release, namespace, v)
	if err != nil {
		t.Fatalf("helm template %s: %v\n%s", release, err, stderr)
	}
	objs, err := decodeObjects(out)
	if err != nil {
		t.Fatalf("helm template %s: %v", release, err)
	}
	return objs
}

func decodeObjects(manifest string) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// find returns the one object of kind (and name, if not ""), or fails.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %q among the rendered objects, found %d", kind, name, len(found))
	}
	return found[0]
}

func has(objs []*unstructured.Unstructured, kind string) bool {
	for _, o := range objs {
		if o.GetKind() == kind {
			return true
		}
	}
	return false
}

func deployment(t testing.TB, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(find(t, objs, "Deployment", "").Object, &d, true); err != nil {
		t.Fatalf("the rendered Deployment: %v", err)
	}
	return &d
}

// tempDir is a short temporary directory without the test's name: helm splits
// --values on commas, and unix socket paths must stay short.
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kgchart")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
