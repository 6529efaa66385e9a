package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/cmd/kubegate/internal/explain"
	"kubegate.dev/kubegate/cmd/kubegate/internal/kubeconfig"
	"kubegate.dev/kubegate/test/stack"
)

// TestExplainAgainstTheCluster runs explain against the real API server of the test
// bed, behind the sandbox gateway, with RoleBindings that allow, deny and partly
// match: the cluster part is the API server's own SubjectAccessReview answer, and
// the bindings named are exactly those whose subjects match the identity the gateway
// sends, each saying whether it grants the request. Then as users without directory
// access, through the gateway's explain endpoint with their own credentials.
func TestExplainAgainstTheCluster(t *testing.T) {
	if why := testBedMissing(); why != "" {
		t.Skip(why)
	}
	bin := kubegateBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{Binary: bin, Logf: t.Logf})
	if err != nil {
		t.Fatalf("starting the sandbox stack: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping the stack: %v", err)
		}
	})
	cs, err := kubernetes.NewForConfig(s.Cluster.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	must(t, stack.SeedDemo(ctx, cs))
	seedExplainRBAC(ctx, t, cs)

	admin := []string{"--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory, "--kubeconfig", s.Cluster.AdminKubeconfig}
	type binding struct {
		name   string // <Kind> <namespace/>name
		grants bool
	}
	tests := []struct {
		name         string
		args         []string
		wantCode     int
		wantBy       string
		wantCluster  bool
		wantBindings []binding // must be among the matches
		notBindings  []string  // must not be
	}{
		{name: "alice lists pods: allowed by two bindings, one more matches in part",
			args: []string{"--user", "alice", "GET", "/api/v1/namespaces/demo/pods"}, wantCode: 0, wantCluster: true,
			wantBindings: []binding{{"RoleBinding demo/project-1-developers-view", true}, {"RoleBinding demo/project-1-maintainers-edit", true}, {"RoleBinding demo/everyone-reads-configmaps", false}},
			notBindings:  []string{"RoleBinding demo/project-2-developers-edit", "ClusterRoleBinding grace-reads-nodes"}},
		{name: "carol deletes a pod: the gateway allows, RBAC refuses",
			args: []string{"--user", "carol", "DELETE", "/api/v1/namespaces/demo/pods/web"}, wantCode: 1, wantBy: "cluster",
			wantBindings: []binding{{"RoleBinding demo/subgroup-developers-view", false}, {"RoleBinding demo/everyone-reads-configmaps", false}},
			notBindings:  []string{"RoleBinding demo/project-1-developers-view"}},
		{name: "alice reads nodes: only cluster bindings apply, none grants",
			args: []string{"--user", "alice", "GET", "/api/v1/nodes"}, wantCode: 1, wantBy: "cluster",
			wantBindings: []binding{{"ClusterRoleBinding system:basic-user", false}},
			notBindings:  []string{"RoleBinding demo/project-1-developers-view", "ClusterRoleBinding grace-reads-nodes"}},
		{name: "grace reads nodes through her own ClusterRoleBinding",
			args: []string{"--user", "grace", "GET", "/api/v1/nodes"}, wantCode: 0, wantCluster: true,
			wantBindings: []binding{{"ClusterRoleBinding grace-reads-nodes", true}}},
		{name: "bob: the gateway refuses, the cluster is not asked",
			args: []string{"--user", "bob", "GET", "/api/v1/namespaces/demo/pods"}, wantCode: 1, wantBy: "gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, errOut, code := explainJSON(t, append(admin, tt.args...)...)
			if code != tt.wantCode || r.Result.RefusedBy != tt.wantBy {
				t.Fatalf("code %d refused by %q, want %d %q: %s\n%+v", code, r.Result.RefusedBy, tt.wantCode, tt.wantBy, errOut, r.Result)
			}
			if tt.wantBy == "gateway" {
				if r.Cluster != nil {
					t.Fatalf("the cluster was asked for a request the gateway refuses: %+v", r.Cluster)
				}
				return
			}
			if r.Cluster == nil || r.Cluster.Allowed != tt.wantCluster || r.Cluster.BindingsError != "" {
				t.Fatalf("cluster %+v", r.Cluster)
			}
			if want := "gitlab:user:" + tt.args[1]; r.Cluster.AskedAs.User != want || !contains(r.Cluster.AskedAs.Groups, "system:authenticated") {
				t.Fatalf("asked as %+v, want %s with system:authenticated", r.Cluster.AskedAs, want)
			}
			got := map[string]explain.BindingMatch{}
			for _, b := range r.Cluster.Bindings {
				name := b.Kind + " " + b.Name
				if b.Namespace != "" {
					name = b.Kind + " " + b.Namespace + "/" + b.Name
				}
				got[name] = b
			}
			for _, w := range tt.wantBindings {
				b, ok := got[w.name]
				if !ok || b.Grants != w.grants || (b.Grants && b.Rule == "") || (!b.Grants && b.Why == "") {
					t.Errorf("binding %s: %+v (found %v), want grants=%v; all: %+v", w.name, b, ok, w.grants, r.Cluster.Bindings)
				}
			}
			for _, n := range tt.notBindings {
				if b, ok := got[n]; ok {
					t.Errorf("binding %s does not match the identity, yet is listed: %+v", n, b)
				}
			}
			// The explanation agrees with the API server: some binding grants the
			// request exactly when the SubjectAccessReview allows it (RBAC is this
			// test bed's only authorizer besides system:masters).
			granting := false
			for _, b := range r.Cluster.Bindings {
				granting = granting || b.Grants
			}
			if granting != r.Cluster.Allowed {
				t.Errorf("a binding grants: %v; the API server allows: %v", granting, r.Cluster.Allowed)
			}
		})
	}

	t.Run("the tree names the cluster's verdict and the bindings", func(t *testing.T) {
		out, _, code := run(t, "", append(append([]string{"explain"}, admin...), "--user", "carol", "DELETE", "/api/v1/namespaces/demo/pods/web")...)
		t.Log("\n" + out)
		for _, want := range []string{
			"Cluster:      no (SubjectAccessReview for gitlab:user:carol)",
			"- RoleBinding demo/subgroup-developers-view -> ClusterRole/view (subject Group gitlab:group_role:4:developer): ClusterRole/view grants no delete pods web",
			"Result:       allowed by the gateway, refused by the cluster: no RBAC rule allows it",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the tree lacks %q", want)
			}
		}
		if code != 1 {
			t.Fatalf("code %d", code)
		}
	})
	t.Run("agent mode asks for the agent's own identity", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "agent.yaml")
		must(t, os.WriteFile(cfg, []byte("user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n"), 0o600))
		r, errOut, code := explainJSON(t, "--agent-id", "1", "--config-project-id", "1", "--agent-config", cfg, "--directory", sandboxDirectory,
			"--kubeconfig", s.Cluster.AdminKubeconfig, "--agent-user", s.Cluster.AgentUser, "--user", "alice", "GET", "/api/v1/namespaces/demo/pods")
		if code != 1 || r.Result.RefusedBy != "cluster" || r.Cluster == nil || r.Cluster.AskedAs.User != s.Cluster.AgentUser {
			t.Fatalf("code %d %+v %+v: %s", code, r.Result, r.Cluster, errOut)
		}
		impersonator := false
		for _, b := range r.Cluster.Bindings {
			if b.Subject == "User "+s.Cluster.AgentUser && !b.Grants {
				impersonator = true
			}
		}
		if !impersonator {
			t.Fatalf("the agent's impersonation binding is not named as matching without granting: %+v", r.Cluster.Bindings)
		}
	})

	// Users without directory access ask the gateway as themselves.
	dir := t.TempDir()
	base := strings.TrimSuffix(s.GatewayURL, kubeconfig.ProxyPath)
	userKubeconfig := func(name string) (string, []string) {
		tokenFile := filepath.Join(dir, name+".token")
		must(t, os.WriteFile(tokenFile, []byte(sandboxToken(t, strings.ToUpper(name)+"_TOKEN")+"\n"), 0o600))
		kc := filepath.Join(dir, name+".kubeconfig")
		env := userEnv(t, "KUBECONFIG="+kc)
		cmd := exec.CommandContext(ctx, bin, "update-kubeconfig", "--server", base, "--ca", s.GatewayCA, "--agent", "1", "--token-file", tokenFile, "--use-context")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("update-kubeconfig for %s: %v\n%s", name, err, out)
		}
		return kc, env
	}
	viaGateway := func(t *testing.T, env []string, args ...string) (explain.Report, string, int) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, append([]string{"explain", "--via-gateway", "-o", "json"}, args...)...)
		cmd.Env = env
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		noSecrets(t, string(out)+stderr.String())
		var r explain.Report
		if len(out) > 0 {
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}
		return r, stderr.String(), code
	}
	aliceKC, aliceEnv := userKubeconfig("alice")
	_, bobEnv := userKubeconfig("bob")

	t.Run("alice through the gateway: her SelfSubjectAccessReview says yes", func(t *testing.T) {
		r, errOut, code := viaGateway(t, aliceEnv, "GET", "/api/v1/namespaces/demo/pods")
		if code != 0 || r.Via != "gateway" || r.User.Username != "alice" || r.Cluster == nil || !r.Cluster.Allowed {
			t.Fatalf("code %d: %s\n%+v", code, errOut, r)
		}
		if r.Cluster.BindingsError == "" {
			t.Fatalf("alice may not list bindings (view has no rbac), yet they were read: %+v", r.Cluster.Bindings)
		}
		if r.OtherListedEntries != 3 || len(r.Gateway.Entries) != 1 {
			t.Fatalf("the endpoint named entries beyond alice's own: %+v (%d others)", r.Gateway.Entries, r.OtherListedEntries)
		}
	})
	t.Run("alice through the gateway: RBAC refuses nodes", func(t *testing.T) {
		r, errOut, code := viaGateway(t, aliceEnv, "--gateway-kubeconfig", aliceKC, "GET", "/api/v1/nodes")
		if code != 1 || r.Result.RefusedBy != "cluster" {
			t.Fatalf("code %d: %s\n%+v", code, errOut, r.Result)
		}
	})
	t.Run("bob through the gateway learns only about himself", func(t *testing.T) {
		r, errOut, code := viaGateway(t, bobEnv, "GET", "/api/v1/namespaces/demo/pods")
		if code != 1 || r.Result.RefusedBy != "gateway" || r.User.Username != "bob" || r.Cluster != nil {
			t.Fatalf("code %d: %s\n%+v", code, errOut, r)
		}
		raw, _ := json.Marshal(r)
		for _, other := range []string{"alice", "carol", "group-1/project-1", "group-3/subgroup"} {
			if strings.Contains(string(raw), other) {
				t.Fatalf("bob's explanation names %q: %s", other, raw)
			}
		}
	})
}

// seedExplainRBAC adds, beside the demo's bindings, one that matches every
// gateway user but grants only configmaps, one for another project's developers,
// and a ClusterRoleBinding for grace alone.
func seedExplainRBAC(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	rbac := cs.RbacV1()
	group := func(name string) []rbacv1.Subject {
		return []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: name}}
	}
	_, err := rbac.Roles(stack.DemoNamespace).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "configmap-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{})
	must(t, err)
	_, err = rbac.RoleBindings(stack.DemoNamespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "everyone-reads-configmaps"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "configmap-reader"}, Subjects: group("gitlab:user")}, metav1.CreateOptions{})
	must(t, err)
	_, err = rbac.RoleBindings(stack.DemoNamespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "project-2-developers-edit"},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"}, Subjects: group("gitlab:project_role:2:developer")}, metav1.CreateOptions{})
	must(t, err)
	_, err = rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "node-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{})
	must(t, err)
	_, err = rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "grace-reads-nodes"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "node-reader"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "gitlab:user:grace"}}}, metav1.CreateOptions{})
	must(t, err)
	// RBAC's authorizer reads bindings through informers: wait until it sees them.
	seen := func(user, resource string) bool {
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"gitlab:user"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: stack.DemoNamespace, Verb: "get", Resource: resource}}}, metav1.CreateOptions{})
		return err == nil && sar.Status.Allowed
	}
	deadline := time.Now().Add(30 * time.Second)
	for !seen("gitlab:user:grace", "nodes") || !seen("gitlab:user:nobody", "configmaps") {
		if time.Now().After(deadline) {
			t.Fatal("the API server's RBAC did not see the test bindings within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
