package chartmesh

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/test/chart"
)

// repoRoot is the kubegate checkout this test runs in.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "deploy", "helm", "kubegate", "Chart.yaml")); err == nil {
				return dir
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no kubegate checkout (go.mod with deploy/helm/kubegate) above the working directory")
		}
		dir = parent
	}
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "deploy", "helm", "kubegate") }

// helmBin is the helm CLI test/tools/build.sh builds and caches (helm v3.22.0),
// found by the chart tests' own locator.
func helmBin(t testing.TB) string {
	t.Helper()
	bin, err := chart.Helm(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// helmTemplate runs `helm template` on chart with the values (a YAML document)
// and returns the rendered objects, or helm's error output.
func helmTemplate(t testing.TB, chart, values string) ([]map[string]any, error) {
	t.Helper()
	// Not under t.TempDir(): helm splits --values on commas, and subtest names
	// have them.
	dir, err := os.MkdirTemp("", "kubegate-values-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	base, vf := filepath.Join(dir, "base.yaml"), filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(base, baseValues(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vf, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helmBin(t), "template", "kg", chart, "--namespace", "kubegate", "--kube-version", kubeVersion, "--values", base, "--values", vf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm template: %v: %s", err, stderr.String())
	}
	return splitDocs(stdout.Bytes())
}

func splitDocs(data []byte) ([]map[string]any, error) {
	var objs []map[string]any
	for _, doc := range strings.Split("\n"+string(data), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("rendered document does not parse: %v\n%s", err, doc)
		}
		if obj != nil {
			objs = append(objs, obj)
		}
	}
	if len(objs) == 0 {
		return nil, errors.New("helm rendered nothing")
	}
	return objs, nil
}

// find returns the rendered objects of one kind.
func find(objs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

// copyChart copies the chart to a temporary directory, for tests that add a
// template of their own to render the named templates.
func copyChart(t testing.TB) string {
	t.Helper()
	src := chartDir(t)
	dst := filepath.Join(t.TempDir(), "kubegate")
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// baseValues are the chart's required values outside mesh: (the smallest set the
// core templates accept: an agent, its configuration, an identity source, the API
// server's address for the NetworkPolicy), so each mesh value set is rendered as
// a real installation would be. Helm merges the mesh value set over them.
func baseValues(t testing.TB) []byte {
	t.Helper()
	agentConfig, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "sandbox", "agent-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.Marshal(map[string]any{
		"agent":         map[string]any{"id": 1, "configProjectId": 1, "config": map[string]any{"inline": string(agentConfig)}},
		"identity":      map[string]any{"directory": map[string]any{"existingSecret": "kubegate-directory"}},
		"networkPolicy": map[string]any{"apiServer": map[string]any{"cidrs": []any{"10.0.0.1/32"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// meshObjects are the rendered objects of templates/mesh (labelled
// app.kubernetes.io/component: mesh); the core templates' objects are the core
// chart tests' business.
func meshObjects(objs []map[string]any) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		md, _ := o["metadata"].(map[string]any)
		labels, _ := md["labels"].(map[string]any)
		if labels["app.kubernetes.io/component"] == "mesh" {
			out = append(out, o)
		}
	}
	return out
}
