package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLinksNoClientset: client-go's typed clientset (k8s.io/client-go/kubernetes
// and its kubernetes/scheme) registers every built-in API group when the program
// starts, which made every kubegate process — authz, extproc and xds, which never
// use it — about 20 MB larger at rest (test/perf BenchmarkLifecycle: 44 → 68 MB
// idle). explain talks to the API server through its own small client instead.
func TestBinaryLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "kubegate.dev/kubegate/cmd/kubegate").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "k8s.io/client-go/kubernetes" || strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes/") {
			t.Errorf("the kubegate binary links %s: use cmd/kubegate/internal/explain.Client (plain JSON over rest.HTTPClientFor) instead of client-go's typed clients", pkg)
		}
	}
}
