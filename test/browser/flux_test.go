package browser_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/test/cluster"
)

// fluxRequestedAt asks a Flux controller to reconcile now (fluxcd/pkg apis/meta
// ReconcileRequestAnnotation; flux reconcile sets it).
const fluxRequestedAt = "reconcile.fluxcd.io/requestedAt"

// kustomizeController is the kustomize-controller release whose CRD the test
// installs: the newest whose go.mod accepts this machine's Go (v1.10 needs 1.27).
const kustomizeController = "github.com/fluxcd/kustomize-controller@v1.9.6"

var kustomizationGVR = schema.GroupVersionResource{Group: "kustomize.toolkit.fluxcd.io", Version: "v1", Resource: "kustomizations"}

// installFluxKustomization installs the Kustomization CRD kustomize-controller ships
// (config/crd/bases), read from Go's module cache, and waits until it is served.
func installFluxKustomization(t *testing.T, c *cluster.Cluster) dynamic.Interface {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", kustomizeController)
	cmd.Dir = t.TempDir() // outside kubegate's module: the CRD is not a dependency
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &mod); err != nil || jerr != nil || mod.Dir == "" {
		t.Fatalf("go mod download -json %s: %v %v %s %s", kustomizeController, err, jerr, mod.Error, out)
	}
	data, err := os.ReadFile(filepath.Join(mod.Dir, "config", "crd", "bases", "kustomize.toolkit.fluxcd.io_kustomizations.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &crd.Object); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := dyn.Resource(crdGVR).Create(t.Context(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the Kustomization CRD served", func() bool {
		_, err := dyn.Resource(kustomizationGVR).Namespace("default").List(t.Context(), metav1.ListOptions{})
		return err == nil
	})
	return dyn
}

var helmReleaseGVR = schema.GroupVersionResource{Group: "helm.toolkit.fluxcd.io", Version: "v2", Resource: "helmreleases"}

// installHelmReleaseStandIn installs a schema-less CRD with HelmRelease's group,
// version and names. It is a stand-in: helm-controller's own CRD is not in any
// module the Go module proxy serves (github.com/fluxcd/helm-controller is refused;
// its api module has no CRDs), so the Dashboard's HelmRelease path is tested
// against the API shape (helm.toolkit.fluxcd.io/v2, status.conditions, spec.suspend),
// not against the real schema.
func installHelmReleaseStandIn(t *testing.T, c *cluster.Cluster) dynamic.Interface {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "helmreleases.helm.toolkit.fluxcd.io"},
		"spec": map[string]any{
			"group": "helm.toolkit.fluxcd.io", "scope": "Namespaced",
			"names": map[string]any{"kind": "HelmRelease", "listKind": "HelmReleaseList", "plural": "helmreleases", "singular": "helmrelease"},
			"versions": []any{map[string]any{
				"name": "v2", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
			}},
		},
	}}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := dyn.Resource(crdGVR).Create(t.Context(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the HelmRelease stand-in CRD served", func() bool {
		_, err := dyn.Resource(helmReleaseGVR).Namespace("default").List(t.Context(), metav1.ListOptions{})
		return err == nil
	})
	return dyn
}

func grantFlux(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	_, err := cs.RbacV1().Roles(ns).Create(t.Context(), &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "flux-operator"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"kustomize.toolkit.fluxcd.io", "helm.toolkit.fluxcd.io"}, Resources: []string{"kustomizations", "helmreleases"},
			Verbs: []string{"get", "list", "watch", "patch"},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.RbacV1().RoleBindings(ns).Create(t.Context(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flux-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "flux-operator"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: testGroups[1]}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}
