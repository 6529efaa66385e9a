package cluster_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/test/cluster"
)

// alice is the identity kubegate sends for a GitLab user "alice" who maintains
// project 123 (access.md §3): user, groups and the four agent.gitlab.com extras.
var alice = rest.ImpersonationConfig{
	UserName: "gitlab:user:alice",
	Groups:   []string{"gitlab:user", "gitlab:project_role:123:maintainer"},
	Extra: map[string][]string{
		"agent.gitlab.com/id":                {"42"},
		"agent.gitlab.com/username":          {"alice"},
		"agent.gitlab.com/access_type":       {"personal_access_token"},
		"agent.gitlab.com/config_project_id": {"123"},
	},
}

const (
	namespace       = "team-a"
	podName         = "web"
	maintainerGroup = "gitlab:project_role:123:maintainer"
)

// TestAgentImpersonation checks, against a real API server with the shipped
// ClusterRole, everything kubegate relies on: the agent has no rights of its own, may
// impersonate exactly kubegate's identity shape, and RBAC then decides on the
// impersonated user and groups; the audit log shows both identities.
func TestAgentImpersonation(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{ControllerManager: true, AuditLog: true})
	ctx := t.Context()
	admin := clientset(t, c.AdminConfig())

	// The admin creates a namespace and a pod object (no kubelet: it only has to exist).
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creating namespace: %v", err)
	}
	// The ServiceAccount admission plugin rejects a pod whose service account does not
	// exist, and the serviceaccount controller that would create "default" is not run.
	if _, err := admin.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creating the default service account: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: podName},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.invalid/web:1"}}},
	}
	if _, err := admin.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creating pod: %v", err)
	}
	// The built-in view role (filled by the controller manager's aggregation) for the
	// maintainers of project 123, in that namespace only.
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "project-123-maintainers-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: maintainerGroup}},
	}
	if _, err := admin.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creating role binding: %v", err)
	}
	// RBAC reads bindings through informers: wait until the new one is in effect.
	waitListAllowed(t, clientset(t, impersonating(c.AgentConfig(), alice)))

	t.Run("each agent token authenticates as the agent and nothing more", func(t *testing.T) {
		for i, token := range c.AgentTokens {
			cfg := c.AgentConfig()
			cfg.BearerToken = token
			got := selfSubject(t, clientset(t, cfg))
			want := authenticationv1.UserInfo{Username: cluster.AgentUser, UID: cluster.AgentUser, Groups: []string{"system:authenticated"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("token %d: SelfSubjectReview = %+v, want %+v", i, got, want)
			}
		}
		if c.AgentTokens[0] == c.AgentTokens[1] {
			t.Errorf("the two agent tokens are equal")
		}
	})

	t.Run("listing pods", func(t *testing.T) {
		withoutGroup := alice
		withoutGroup.Groups = slices.DeleteFunc(slices.Clone(alice.Groups), func(g string) bool { return g == maintainerGroup })
		tests := []struct {
			name          string
			cfg           *rest.Config
			wantForbidden bool
		}{
			{name: "agent by itself", cfg: c.AgentConfig(), wantForbidden: true},
			{name: "agent with the second token", cfg: withToken(c.AgentConfig(), c.AgentTokens[1]), wantForbidden: true},
			{name: "agent impersonating alice as maintainer of project 123", cfg: impersonating(c.AgentConfig(), alice)},
			{name: "agent impersonating alice without the maintainer group", cfg: impersonating(c.AgentConfig(), withoutGroup), wantForbidden: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				pods, err := clientset(t, tt.cfg).CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{})
				if tt.wantForbidden {
					if !apierrors.IsForbidden(err) {
						t.Fatalf("list pods: err = %v, want Forbidden", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("list pods: %v", err)
				}
				if len(pods.Items) != 1 || pods.Items[0].Name != podName {
					t.Errorf("list pods = %v, want just %s", podNames(pods.Items), podName)
				}
			})
		}
	})

	t.Run("SelfSubjectReview shows exactly the impersonated identity", func(t *testing.T) {
		got := selfSubject(t, clientset(t, impersonating(c.AgentConfig(), alice)))
		// The API server appends system:authenticated to impersonated groups
		// (k8s.io/apiserver endpoints/filters/impersonation: "When impersonating a
		// non-anonymous user, include the 'system:authenticated' group").
		want := authenticationv1.UserInfo{
			Username: alice.UserName,
			Groups:   append(slices.Clone(alice.Groups), "system:authenticated"),
			Extra:    extraValues(alice.Extra),
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("SelfSubjectReview =\n %+v\nwant\n %+v", got, want)
		}
	})

	t.Run("impersonation outside the ClusterRole is refused", func(t *testing.T) {
		withExtra := alice
		withExtra.Extra = maps.Clone(alice.Extra)
		withExtra.Extra["agent.gitlab.com/not_granted"] = []string{"x"}
		withUID := alice
		withUID.UID = "1234"
		serviceAccount := rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:default"}
		// Since 1.36 the API server tries the constrained impersonation modes
		// (KEP-5284) and the legacy "impersonate" verb, starting with the mode that last
		// succeeded for this requestor, and reports the first mode's error. The agent
		// has already succeeded with the legacy verb above, so the 403 names the
		// legacy check that failed; for a requestor that never succeeded it would name
		// a constrained verb (impersonate-on:user-info:<verb>) instead.
		tests := []struct {
			name        string
			as          rest.ImpersonationConfig
			wantMessage string // the 403 names what was refused
		}{
			{name: "extra key not listed", as: withExtra, wantMessage: "userextras/agent.gitlab.com/not_granted"},
			{name: "uid", as: withUID, wantMessage: "uids"},
			{name: "service account", as: serviceAccount, wantMessage: "serviceaccounts"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := clientset(t, impersonating(c.AgentConfig(), tt.as)).CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{})
				if !apierrors.IsForbidden(err) {
					t.Fatalf("err = %v, want Forbidden", err)
				}
				if !strings.Contains(err.Error(), tt.wantMessage) {
					t.Errorf("err = %q, want it to name %q", err, tt.wantMessage)
				}
			})
		}
	})

	t.Run("audit log records the agent and the impersonated user", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		e, err := c.WaitForAuditEvent(ctx, func(e *auditv1.Event) bool {
			return e.Verb == "list" && e.ObjectRef != nil && e.ObjectRef.Resource == "pods" &&
				e.ObjectRef.Namespace == namespace && e.ResponseStatus != nil && e.ResponseStatus.Code == 200 &&
				e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == alice.UserName
		})
		if err != nil {
			t.Fatalf("waiting for the impersonated list in the audit log: %v", err)
		}
		if e.User.Username != cluster.AgentUser {
			t.Errorf("audit user = %q, want the agent %q", e.User.Username, cluster.AgentUser)
		}
		if !slices.Contains(e.ImpersonatedUser.Groups, maintainerGroup) {
			t.Errorf("audit impersonated groups = %v, want %s among them", e.ImpersonatedUser.Groups, maintainerGroup)
		}
		if want := extraValues(alice.Extra); !reflect.DeepEqual(e.ImpersonatedUser.Extra, want) {
			t.Errorf("audit impersonated extras = %v, want %v", e.ImpersonatedUser.Extra, want)
		}
	})
}

// TestMissingBinaries: without the binaries, Start fails at once and says to run
// `make tools`.
func TestMissingBinaries(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) cluster.Options
	}{
		{name: "empty tools cache", setup: func(t *testing.T) cluster.Options {
			t.Setenv(cluster.ToolsDirEnv, t.TempDir())
			return cluster.Options{}
		}},
		{name: "empty BinDir", setup: func(t *testing.T) cluster.Options {
			return cluster.Options{BinDir: t.TempDir()}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.setup(t)
			opts.WorkDir = filepath.Join(t.TempDir(), "work")
			c, err := cluster.Start(t.Context(), opts)
			if err == nil {
				_ = c.Stop()
				t.Fatal("Start succeeded without binaries")
			}
			if !strings.Contains(err.Error(), "make tools") {
				t.Errorf("error %q does not say to run `make tools`", err)
			}
			if _, statErr := os.Stat(opts.WorkDir); !os.IsNotExist(statErr) {
				t.Errorf("Start wrote %s before finding the binaries", opts.WorkDir)
			}
		})
	}
}

// TestShippedClusterRole: the shipped manifest grants impersonation of exactly what
// kubegate sends, and nothing else (the live test above proves each rule works; this
// one guards against a rule being widened, such as a "*" added "to make it work").
func TestShippedClusterRole(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", cluster.ImpersonatorManifest))
	if err != nil {
		t.Fatal(err)
	}
	role, err := cluster.ParseImpersonatorClusterRole(data)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: want no resourceNames or nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, v+" "+g+"/"+res)
				}
			}
		}
	}
	slices.Sort(got)
	want := []string{
		"impersonate /groups",
		"impersonate /users",
		"impersonate authentication.k8s.io/userextras/agent.gitlab.com/access_type",
		"impersonate authentication.k8s.io/userextras/agent.gitlab.com/config_project_id",
		"impersonate authentication.k8s.io/userextras/agent.gitlab.com/id",
		"impersonate authentication.k8s.io/userextras/agent.gitlab.com/username",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants\n %s\nwant\n %s", strings.Join(got, "\n "), strings.Join(want, "\n "))
	}
}

func clientset(t testing.TB, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func impersonating(cfg *rest.Config, as rest.ImpersonationConfig) *rest.Config {
	cfg.Impersonate = as
	return cfg
}

func withToken(cfg *rest.Config, token string) *rest.Config {
	cfg.BearerToken = token
	return cfg
}

func selfSubject(t *testing.T, cs kubernetes.Interface) authenticationv1.UserInfo {
	t.Helper()
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	return r.Status.UserInfo
}

func extraValues(extra map[string][]string) map[string]authenticationv1.ExtraValue {
	out := make(map[string]authenticationv1.ExtraValue, len(extra))
	for k, v := range extra {
		out[k] = v
	}
	return out
}

func podNames(pods []corev1.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	return names
}

// waitListAllowed waits until cs may list pods in the namespace (RBAC changes reach
// the authorizer through informers, a few milliseconds after the write).
func waitListAllowed(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := cs.CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{})
		if err == nil {
			return
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("waiting for the view binding to take effect: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRestartAPIServer crashes kube-apiserver (SIGKILL) and starts it again: same
// URL and credentials, the data kept in etcd, the audit log appended to, the old
// process gone, and Stop still stopping everything without complaint.
func TestRestartAPIServer(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{AuditLog: true})
	ctx := t.Context()
	admin := clientset(t, c.AdminConfig())
	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "before-crash"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	oldPID := 0
	for _, p := range c.Processes() {
		if p.Name == "kube-apiserver" {
			oldPID = p.PID
		}
	}
	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatalf("RestartAPIServer: %v", err)
	}
	var newPID int
	for _, p := range c.Processes() {
		if p.Name == "kube-apiserver" {
			if newPID != 0 {
				t.Errorf("two kube-apiserver processes listed: %+v", c.Processes())
			}
			newPID = p.PID
		}
	}
	if newPID == 0 || newPID == oldPID {
		t.Fatalf("kube-apiserver pid %d before, %d after: want a new process", oldPID, newPID)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(oldPID))); err == nil {
		t.Errorf("the killed kube-apiserver (pid %d) still exists", oldPID)
	}
	if _, err := admin.CoreV1().ConfigMaps("default").Get(ctx, "before-crash", metav1.GetOptions{}); err != nil {
		t.Fatalf("after the restart, the ConfigMap made before it: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.WaitForAuditEvent(wctx, func(e *auditv1.Event) bool {
		return strings.Contains(e.RequestURI, "/configmaps/before-crash") && e.Verb == "get"
	}); err != nil {
		t.Fatalf("the restarted API server's audit events: %v", err)
	}
	events, err := c.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	created := false
	for _, e := range events {
		created = created || (e.Verb == "create" && e.ObjectRef != nil && e.ObjectRef.Name == "before-crash")
	}
	if !created {
		t.Error("the audit log lost the events written before the crash")
	}
}
