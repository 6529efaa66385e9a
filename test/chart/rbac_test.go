package chart

import (
	"path/filepath"
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"kubegate.dev/kubegate/test/cluster"
)

// grants flattens RBAC rules to sorted group/resource/verb triples.
func grants(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out = append(out, g+"|"+res+"|"+v)
				}
			}
		}
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			out = append(out, "unexpected resourceNames or nonResourceURLs")
		}
	}
	slices.Sort(out)
	return out
}

// TestChartRoleIsTheShippedRole: the chart's ClusterRole grants exactly what
// deploy/kubernetes/impersonation-clusterrole.yaml (the role the test bed, the
// compose file and the e2e tests use) grants, so the two cannot drift apart.
func TestChartRoleIsTheShippedRole(t *testing.T) {
	shipped, err := cluster.ParseImpersonatorClusterRole([]byte(readFile(t, filepath.Join(root, "deploy", "kubernetes", "impersonation-clusterrole.yaml"))))
	if err != nil {
		t.Fatal(err)
	}
	var chart rbacv1.ClusterRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(find(t, render(t, "kg", "kubegate", minimal(t)), "ClusterRole", "").Object, &chart, true); err != nil {
		t.Fatal(err)
	}
	if got, want := grants(chart.Rules), grants(shipped.Rules); !slices.Equal(got, want) {
		t.Errorf("the chart's ClusterRole grants\n%q\nthe shipped one\n%q", got, want)
	}
}
