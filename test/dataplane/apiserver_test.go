package dataplane

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/cluster"
)

// TestAgainstKubeAPIServer runs the whole chain of the rendered bootstrap — real
// kubegate authz, extproc and xds, this data plane — in front of a real
// kube-apiserver, with client-go talking to it as kubectl does (HTTP/2, bearer
// token). RBAC on the impersonated identity decides; the user's token never
// reaches the API server.
func TestAgainstKubeAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	kc := cluster.StartForTest(t, cluster.Options{})
	ctx := t.Context()
	admin := clientsetFor(t, kc.AdminConfig())

	// Maintainers of project 1 (alice, in the sandbox directory) may read namespaces.
	const maintainers = "gitlab:project_role:1:maintainer"
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "dataplane-test-namespace-reader"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}}},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "dataplane-test-maintainers"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "dataplane-test-namespace-reader"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: maintainers}},
		}, metav1.CreateOptions{})
		return err
	})

	c := newCerts(t)
	_, xds := realXDS(t, kc.AgentTokens[0])
	var obs observed
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: kc.URL, caFile: kc.CAFile}), Options{OnUpstreamRequest: obs.record})

	ca, err := os.ReadFile(filepath.Join(c.dir, devcert.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	through := func(token string) *rest.Config {
		return &rest.Config{Host: dp.URL() + "/k8s-proxy", BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Timeout: 30 * time.Second}
	}
	alice := clientsetFor(t, through("pat:1:kg-sandbox-alice-token"))

	// RBAC reads bindings through informers: wait until the binding is in effect.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := alice.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("alice listing namespaces through the data plane: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("the API server sees the impersonated user", func(t *testing.T) {
		r, err := alice.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ui := r.Status.UserInfo
		if ui.Username != "gitlab:user:alice" {
			t.Errorf("user %q", ui.Username)
		}
		for _, g := range []string{"gitlab:user", maintainers, "system:authenticated"} {
			if !slices.Contains(ui.Groups, g) {
				t.Errorf("groups %q lack %q", ui.Groups, g)
			}
		}
		for k, want := range map[string][]string{
			"agent.gitlab.com/id": {"1"}, "agent.gitlab.com/username": {"alice"},
			"agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"1"},
		} {
			if got := []string(ui.Extra[k]); !slices.Equal(got, want) {
				t.Errorf("extra %s = %q, want %q", k, got, want)
			}
		}
	})

	t.Run("a watch streams through", func(t *testing.T) {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second) // a hang guard only
		defer cancel()
		w, err := alice.CoreV1().Namespaces().Watch(wctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		mustCreate(t, func() error {
			_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "watched"}}, metav1.CreateOptions{})
			return err
		})
		for ev := range w.ResultChan() {
			if ns, ok := ev.Object.(*corev1.Namespace); ok && ev.Type == watch.Added && ns.Name == "watched" {
				return
			}
		}
		t.Fatal("the watch ended without the new namespace")
	})

	t.Run("denials come from the gateway, not the cluster", func(t *testing.T) {
		before := len(obs.all())
		bob := clientsetFor(t, through("pat:1:kg-sandbox-bob-token")) // reporter only
		_, err := bob.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "kubegate") {
			t.Errorf("bob: %v, want the gateway's 403", err)
		}
		imp := through("pat:1:kg-sandbox-alice-token")
		imp.Impersonate = rest.ImpersonationConfig{UserName: "system:admin"}
		_, err = clientsetFor(t, imp).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "impersonation") {
			t.Errorf("client impersonation: %v, want the gateway's 403", err)
		}
		if n := len(obs.all()) - before; n != 0 {
			t.Errorf("%d denied requests reached the API server", n)
		}
	})

	// Envoy continues a request unmodified when the processor closes its stream
	// with gRPC OK before answering (ext_proc client_impl.cc onRemoteClose). Such a
	// request still carries the Impersonate-User kubegate authz set, so the API
	// server sees the user without groups; and the agent's own identity has no
	// rights beyond impersonation, so nothing is readable as the agent either.
	t.Run("a request ext_proc skips cannot act as the agent", func(t *testing.T) {
		var skipped observed
		dp2 := start(t, render(t, c, setup{authz: realAuthz(t), extproc: closingProcessor().serve(t), xds: xds, apiserver: kc.URL, caFile: kc.CAFile}), Options{OnUpstreamRequest: skipped.record})
		cfg := through("pat:1:kg-sandbox-alice-token")
		cfg.Host = dp2.URL() + "/k8s-proxy"
		aliceSkipped := clientsetFor(t, cfg)
		r, err := aliceSkipped.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ui := r.Status.UserInfo; ui.Username != "gitlab:user:alice" || !slices.Equal(ui.Groups, []string{"system:authenticated"}) || len(ui.Extra) != 0 {
			t.Errorf("the API server saw %+v, want gitlab:user:alice with no groups of the gateway's and no extras", ui)
		}
		_, err = aliceSkipped.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `User "gitlab:user:alice" cannot list resource "namespaces"`) {
			t.Errorf("listing namespaces without the groups: %v, want the API server's Forbidden for gitlab:user:alice", err)
		}
		for _, u := range skipped.all() {
			if got := u.Values("impersonate-user"); !slices.Equal(got, []string{"gitlab:user:alice"}) {
				t.Errorf("%s %s went upstream with impersonate-user %q", u.Method, u.Target, got)
			}
		}

		agent := clientsetFor(t, kc.AgentConfig())
		reads := map[string]func() error{
			"list namespaces": func() error { _, err := agent.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err },
			"list pods":       func() error { _, err := agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
			"list secrets":    func() error { _, err := agent.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); return err },
			"get configmap": func() error {
				_, err := agent.CoreV1().ConfigMaps("kube-system").Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
				return err
			},
		}
		for name, read := range reads {
			if err := read(); !apierrors.IsForbidden(err) {
				t.Errorf("the agent's own identity may %s (%v): in user mode it must hold impersonation rights only", name, err)
			}
		}
	})

	t.Run("only the agent token reaches the API server", func(t *testing.T) {
		for _, u := range obs.all() {
			if got := u.Values("authorization"); !slices.Equal(got, []string{"Bearer " + kc.AgentTokens[0]}) {
				t.Errorf("%s %s carried authorization %q", u.Method, u.Target, got)
			}
			for _, h := range u.Header {
				if strings.Contains(h.Value, "kg-sandbox-") {
					t.Errorf("%s %s: header %s carries the user's token", u.Method, u.Target, h.Name)
				}
			}
		}
	})
}

func clientsetFor(t testing.TB, cfg *rest.Config) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func mustCreate(t testing.TB, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}
