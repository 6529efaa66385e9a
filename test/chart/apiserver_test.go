package chart

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/stack"
)

// crdKinds are the rendered kinds whose CRDs the test bed does not have: the
// Prometheus operator's ServiceMonitor and cert-manager's Certificate. Their CRDs
// are not in any module kubegate depends on, so they are checked by TestValueSets
// only, never applied; every other kind must be.
var crdKinds = []string{"ServiceMonitor", "Certificate"}

// warningRecorder collects the API server's Warning headers (PodSecurity's warn
// mode answers a Deployment whose template violates the level with one).
type warningRecorder struct {
	mu  sync.Mutex
	all []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all = append(w.all, text)
}

func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.all
	w.all = nil
	return out
}

type testbed struct {
	c        *cluster.Cluster
	cs       kubernetes.Interface
	dyn      dynamic.Interface
	mapper   meta.RESTMapper
	warnings *warningRecorder
}

// restrictedNamespace creates ns enforcing (and warning and auditing) the
// restricted Pod Security Standard: the API server's PodSecurity admission then
// refuses any pod there that is not restricted
// (kubernetes.io/docs/concepts/security/pod-security-admission/).
func (tb *testbed) restrictedNamespace(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	labels := map[string]string{}
	for _, mode := range []string{"enforce", "warn", "audit"} {
		labels["pod-security.kubernetes.io/"+mode] = "restricted"
		labels["pod-security.kubernetes.io/"+mode+"-version"] = "latest"
	}
	if _, err := tb.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// applyAll applies every object server-side (no dry run: each is really created),
// with strict field validation, and fails on any warning. It returns the kinds it
// skipped (only crdKinds may be).
func (tb *testbed) applyAll(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	var skipped []string
	tb.warnings.take()
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := tb.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) && slices.Contains(crdKinds, gvk.Kind) {
			skipped = append(skipped, gvk.Kind)
			continue
		}
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, o.GetName(), err)
		}
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = tb.dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = tb.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		force := true
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: "kubegate-chart-test", Force: &force, FieldValidation: "Strict"}); err != nil {
			t.Errorf("the API server refused %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		if w := tb.warnings.take(); len(w) > 0 {
			t.Errorf("%s %s: the API server warned: %q", gvk.Kind, o.GetName(), w)
		}
	}
	return skipped
}

// podFromTemplate creates the Deployment's pod as a Pod (what its ReplicaSet would
// create; the test bed runs no deployment controller), so the API server's
// PodSecurity admission judges the pod spec itself: for a Deployment it only warns
// (pod-security-admission.md, "Workload resources and Pod templates").
func (tb *testbed) podFromTemplate(ctx context.Context, ns string, objs []*unstructured.Unstructured, t *testing.T, mutate func(*corev1.Pod)) (*corev1.Pod, error) {
	d := deployment(t, objs)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: ns, Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations},
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	if mutate != nil {
		mutate(pod)
	}
	return tb.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{FieldValidation: "Strict"})
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// TestChartOnAPIServer: one real API server for every chart test that needs one.
func TestChartOnAPIServer(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{ControllerManager: true, AuditLog: true})
	ctx := t.Context()
	tb := &testbed{c: c, warnings: &warningRecorder{}}
	cfg := &rest.Config{Host: c.URL, BearerToken: c.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM},
		WarningHandler: tb.warnings}
	var err error
	if tb.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if tb.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	tb.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(tb.cs.Discovery()))
	if err := stack.SeedDemo(ctx, tb.cs); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		v    values
	}{
		{"minimal", minimal(t)},
		{"browser", withBrowser(t)},
		{"production", production(t)},
	} {
		t.Run("apply "+tc.name, func(t *testing.T) {
			ns := "kg-" + tc.name
			tb.restrictedNamespace(ctx, t, ns)
			objs := render(t, "kg", ns, tc.v)
			skipped := tb.applyAll(ctx, t, objs)
			for _, k := range skipped {
				t.Logf("not applied: %s (its CRD is not available to the test bed)", k)
			}
			if _, err := tb.podFromTemplate(ctx, ns, objs, t, nil); err != nil {
				t.Fatalf("the restricted namespace refused the Deployment's pod: %v", err)
			}
		})
	}

	// The namespace really enforces: the same pod with one container allowed to
	// escalate privileges is refused by the API server.
	t.Run("restricted is enforced", func(t *testing.T) {
		ns := "kg-minimal"
		_, err := tb.podFromTemplate(ctx, ns, render(t, "kg", ns, minimal(t)), t, func(p *corev1.Pod) {
			yes := true
			p.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = &yes
		})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
			t.Fatalf("a pod allowing privilege escalation: err = %v, want PodSecurity's Forbidden", err)
		}
	})

	t.Run("agent rights", func(t *testing.T) { agentRights(ctx, t, tb, "kg-minimal", "kg-kubegate") })
	t.Run("pod as processes", func(t *testing.T) { podAsProcesses(ctx, t, tb) })
}

// agentRights asks the API server's RBAC what the chart's ServiceAccount may do:
// impersonate users, groups and exactly the four agent.gitlab.com/* extras; nothing
// else (kubernetes.io/docs/reference/access-authn-authz/user-impersonation/).
func agentRights(ctx context.Context, t *testing.T, tb *testbed, ns, sa string) {
	user := fmt.Sprintf("system:serviceaccount:%s:%s", ns, sa)
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	extra := func(key string) authorizationv1.ResourceAttributes {
		return authorizationv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Subresource: key}
	}
	tests := []struct {
		name  string
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{"impersonates users", authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users", Name: "gitlab:user:alice"}, true},
		{"impersonates groups", authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: "gitlab:project_role:1:maintainer"}, true},
		{"impersonates extra agent.gitlab.com/id", extra("agent.gitlab.com/id"), true},
		{"impersonates extra agent.gitlab.com/username", extra("agent.gitlab.com/username"), true},
		{"impersonates extra agent.gitlab.com/access_type", extra("agent.gitlab.com/access_type"), true},
		{"impersonates extra agent.gitlab.com/config_project_id", extra("agent.gitlab.com/config_project_id"), true},
		{"cannot impersonate another extra", extra("scopes"), false},
		{"cannot impersonate another agent.gitlab.com extra", extra("agent.gitlab.com/admin"), false},
		{"cannot impersonate service accounts", authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "serviceaccounts", Namespace: "kube-system", Name: "default"}, false},
		{"cannot impersonate a uid", authorizationv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "uids", Name: "0"}, false},
		{"cannot impersonate nodes", authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "nodes", Name: "node-1"}, false},
		{"cannot read secrets in its namespace", authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: ns, Name: "kubegate-directory"}, false},
		{"cannot list secrets anywhere", authorizationv1.ResourceAttributes{Verb: "list", Resource: "secrets"}, false},
		{"cannot list pods", authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}, false},
		{"cannot create pods", authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: ns}, false},
		{"cannot create tokens", authorizationv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: ns, Name: sa}, false},
		{"cannot escalate roles", authorizationv1.ResourceAttributes{Verb: "escalate", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"}, false},
	}
	review := func(attrs authorizationv1.ResourceAttributes) *authorizationv1.SubjectAccessReview {
		t.Helper()
		got, err := tb.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &attrs}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// RBAC reads bindings through informers: wait (bounded) for every expected allow;
	// once they hold, a denial means the chart does not grant it.
	for _, tt := range tests {
		if !tt.want {
			continue
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			return review(tt.attrs).Status.Allowed, nil
		}); err != nil {
			t.Errorf("%s: never allowed: %v", tt.name, err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := review(tt.attrs); got.Status.Allowed != tt.want {
				t.Fatalf("allowed = %v, want %v (%s)", got.Status.Allowed, tt.want, got.Status.Reason)
			}
		})
	}
}
