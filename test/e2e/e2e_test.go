package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/test/stack"
)

// userClient is client-go talking to the gateway as a sandbox user.
func userClient(t *testing.T, user string) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host:            gw.GatewayURL,
		BearerToken:     "pat:1:kg-sandbox-" + user + "-token",
		TLSClientConfig: rest.TLSClientConfig{CAFile: gw.GatewayCA},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func adminClient(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(gw.Cluster.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestAliceThroughKubectl: alice lists pods where a RoleBinding grants view to
// gitlab:project_role:1:developer; creating a namespace is refused by the API
// server's RBAC, not by kubegate.
func TestAliceThroughKubectl(t *testing.T) {
	out, err := kubectl(t, "--context", "alice", "get", "pods", "-n", "demo", "-o", "name")
	if err != nil || strings.TrimSpace(out) != "pod/web" {
		t.Fatalf("alice get pods: %v\n%s", err, out)
	}
	out, err = kubectl(t, "--context", "alice", "create", "namespace", "not-allowed")
	if err == nil || !strings.Contains(out, `User "gitlab:user:alice" cannot create resource "namespaces"`) {
		t.Fatalf("creating a namespace must be Forbidden by the API server: %v\n%s", err, out)
	}
	if strings.Contains(out, "kubegate:") {
		t.Fatalf("the refusal must come from the API server, not kubegate: %s", out)
	}
	// carol is a developer of group-3, the parent of the listed group-3/subgroup.
	if out, err := kubectl(t, "--context", "carol", "get", "configmap", "welcome", "-n", "demo", "-o", "jsonpath={.data.message}"); err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("carol: %v\n%s", err, out)
	}
}

// TestKubectlRefusals: bob (a reporter) and kubectl --as are refused by kubegate,
// and the API server never hears of them.
func TestKubectlRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bob is only a reporter", []string{"--context", "bob", "get", "pods", "-n", "demo"}, "Error from server (Forbidden): kubegate: you are not a Developer or higher member"},
		{"dave is only in a subgroup", []string{"--context", "dave", "get", "pods", "-n", "demo"}, "Error from server (Forbidden): kubegate:"},
		{"kubectl --as", []string{"--context", "alice", "--as", "someone", "get", "pods", "-n", "demo"}, "impersonation through the gateway is not allowed"},
		{"kubectl --as-group", []string{"--context", "alice", "--as", "alice", "--as-group", "system:masters", "get", "pods", "-n", "demo"}, "impersonation through the gateway is not allowed"},
		{"revoked token", []string{"--context", "erin", "get", "pods", "-n", "demo"}, "You must be logged in to the server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := marker(t)
			// A fresh discovery cache: the refusal must read well on a user's very
			// first contact, when kubectl's discovery request is the one refused.
			args := append(tc.args, "-l", "mark="+mark, "--cache-dir", t.TempDir())
			out, err := kubectl(t, args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("want refusal %q, got %v\n%s", tc.want, err, out)
			}
			neverReachedAPIServer(t, mark)
		})
	}
}

// TestDenialsNeverReachTheAPIServer tries every denial path of access.md §2–§4
// from the attacker's side, with raw HTTP through the gateway.
func TestDenialsNeverReachTheAPIServer(t *testing.T) {
	jws := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
	tests := []struct {
		name       string
		method     string
		path       string // after /k8s-proxy, without the marker query
		headers    []string
		wantCode   int
		wantReason string // X-Kubegate-Error
	}{
		{"no credential", "GET", "/api/v1/namespaces/demo/pods", nil, 401, "no_credential"},
		{"malformed credential", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Bearer pat:x:y"}, 401, "malformed_credential"},
		{"two Authorization headers", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "Authorization", pat("alice")}, 401, "malformed_credential"},
		{"Basic auth", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Basic YWxpY2U6cHc="}, 401, "malformed_credential"},
		{"unknown token", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Bearer pat:1:kg-guess-0000"}, 401, "unauthorized"},
		{"the agent's own token", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Bearer " + gw.Cluster.AgentTokens[0]}, 401, "malformed_credential"},
		{"wrong scope", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("frank")}, 401, "unauthorized"},
		{"expired", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("judy")}, 401, "unauthorized"},
		{"revoked", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("erin")}, 401, "unauthorized"},
		{"blocked user", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("mallory")}, 401, "unauthorized"},
		// An agent the gateway does not serve answers as an invalid token (no enumeration).
		{"wrong agent", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Bearer pat:2:kg-sandbox-alice-token"}, 401, "unauthorized"},
		{"OIDC not configured", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", "Bearer " + jws}, 401, "unsupported_credential"},
		// Without --public-url kubegate authz cannot tell its own pages from another
		// site's, so it refuses every session cookie (extauthz/origin.go).
		{"session cookie without a public URL", "GET", "/api/v1/namespaces/demo/pods", []string{"Cookie", "kubegate_session=s", "Gitlab-Agent-Id", "1", "X-Csrf-Token", "c"}, 403, "cross_origin"},
		{"session cookie from another origin", "GET", "/api/v1/namespaces/demo/pods", []string{"Cookie", "kubegate_session=s", "Gitlab-Agent-Id", "1", "X-Csrf-Token", "c", "Origin", "https://attacker.example"}, 403, "cross_origin"},
		{"session cookie without CSRF", "GET", "/api/v1/namespaces/demo/pods", []string{"Cookie", "kubegate_session=s", "Gitlab-Agent-Id", "1"}, 401, "malformed_credential"},
		{"not a member (reporter)", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("bob")}, 403, "not_a_member"},
		{"subgroup member only", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("dave")}, 403, "not_a_member"},
		{"policy denial", "GET", "/api/v1/namespaces/kube-system/secrets", []string{"Authorization", pat("alice")}, 403, "policy_denied"},
		{"Impersonate-User", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "Impersonate-User", "admin"}, 403, "client_impersonation"},
		{"Impersonate-Group", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "Impersonate-Group", "system:masters"}, 403, "client_impersonation"},
		{"Impersonate-Uid", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "Impersonate-Uid", "0"}, 403, "client_impersonation"},
		{"X-Remote-User (front-proxy header)", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "X-Remote-User", "admin"}, 403, "client_impersonation"},
		{"Impersonate-Extra", "GET", "/api/v1/namespaces/demo/pods", []string{"Authorization", pat("alice"), "Impersonate-Extra-Scopes", "all"}, 403, "client_impersonation"},
		// The data plane resolves dot segments before anything sees the path, so the
		// policy judges the request the API server would get.
		{"dot segments to a denied path", "GET", "/api/v1/namespaces/demo/../kube-system/secrets", []string{"Authorization", pat("alice")}, 403, "policy_denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mark := marker(t)
			resp := through(t, tc.method, tc.path+"?labelSelector=mark%3D"+mark, tc.headers...)
			if resp.code != tc.wantCode {
				t.Fatalf("status %d, want %d: %s", resp.code, tc.wantCode, resp.body)
			}
			if tc.wantReason != "" {
				if got := resp.header.Get("X-Kubegate-Error"); got != tc.wantReason {
					t.Fatalf("X-Kubegate-Error %q, want %q", got, tc.wantReason)
				}
				_, msg, code := resp.status(t)
				if code != tc.wantCode || !strings.HasPrefix(msg, "kubegate: ") {
					t.Fatalf("Status %d %q", code, msg)
				}
			}
			if tc.wantCode == 401 && !strings.HasPrefix(resp.header.Get("Www-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: %v", resp.header)
			}
			neverReachedAPIServer(t, mark)
		})
	}
	t.Run("outside the prefix", func(t *testing.T) {
		// Not one of the API's top-level paths (contract.APIRootPaths), which are
		// served without the prefix.
		mark := marker(t)
		resp := through(t, "GET", "!/metrics?labelSelector=mark%3D"+mark, "Authorization", pat("alice"))
		if resp.code != 400 && resp.code != 404 {
			t.Fatalf("status %d: %s", resp.code, resp.body)
		}
		neverReachedAPIServer(t, mark)
	})
}

// TestSelfSubjectReview: the API server sees exactly access.md §3's identity.
func TestSelfSubjectReview(t *testing.T) {
	r, err := userClient(t, "alice").AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u := r.Status.UserInfo
	wantGroups := []string{"gitlab:user", "gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter",
		"gitlab:project_role:1:developer", "gitlab:project_role:1:maintainer", "system:authenticated"}
	wantExtra := map[string][]string{"agent.gitlab.com/id": {"1"}, "agent.gitlab.com/username": {"alice"},
		"agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"1"}}
	if u.Username != "gitlab:user:alice" || strings.Join(u.Groups, ",") != strings.Join(wantGroups, ",") || u.UID != "" {
		t.Fatalf("user %q uid %q groups %v", u.Username, u.UID, u.Groups)
	}
	if len(u.Extra) != len(wantExtra) {
		t.Fatalf("extra %v", u.Extra)
	}
	for k, v := range wantExtra {
		if strings.Join(u.Extra[k], ",") != strings.Join(v, ",") {
			t.Fatalf("extra %s = %v, want %v", k, u.Extra[k], v)
		}
	}
	// grace is a developer of group-2: project 2 (inherited) and group 2, in that order.
	r, err = userClient(t, "grace").AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := "gitlab:user,gitlab:project_role:2:guest,gitlab:project_role:2:planner,gitlab:project_role:2:reporter,gitlab:project_role:2:developer," +
		"gitlab:group_role:2:guest,gitlab:group_role:2:planner,gitlab:group_role:2:reporter,gitlab:group_role:2:developer,system:authenticated"
	if got := strings.Join(r.Status.UserInfo.Groups, ","); got != want {
		t.Fatalf("grace's groups\n got %s\nwant %s", got, want)
	}
}

// TestUserTokenNeverReachesTheAPIServer: upstream, the only credential is the
// agent's; the API server authenticated the agent and impersonated alice.
func TestUserTokenNeverReachesTheAPIServer(t *testing.T) {
	mark := marker(t)
	resp := through(t, "GET", "/api/v1/namespaces/demo/configmaps?labelSelector=mark%3D"+mark+"&gitlab-agent-id=1&gitlab-csrf-token=leak",
		"Authorization", pat("alice"), "Cookie", "kubegate_session=leak; other=1", "Gitlab-Agent-Id", "1", "X-Csrf-Token", "leak")
	if resp.code != 200 {
		t.Fatalf("status %d: %s", resp.code, resp.body)
	}
	sent := upstream.Matching(mark)
	if len(sent) != 1 {
		t.Fatalf("want one upstream request, got %d", len(sent))
	}
	u := sent[0]
	if auth := u.Values("authorization"); len(auth) != 1 || auth[0] != "Bearer "+currentAgentToken(t) {
		t.Fatalf("upstream authorization %q is not the agent's token", auth)
	}
	for _, h := range []string{"cookie", "gitlab-agent-id", "x-csrf-token"} {
		if v := u.Values(h); len(v) > 0 {
			t.Fatalf("credential header %s reached upstream: %v", h, v)
		}
	}
	if strings.Contains(u.Target, "gitlab-agent-id") || strings.Contains(u.Target, "gitlab-csrf-token") || strings.Contains(u.Target, "leak") {
		t.Fatalf("credential query parameters reached upstream: %s", u.Target)
	}
	for _, h := range u.Header {
		if strings.Contains(h.Value, "kg-sandbox-alice-token") {
			t.Fatalf("alice's token went upstream in %s", h.Name)
		}
	}
	if g := u.Values("impersonate-group"); len(g) != 6 || g[0] != "gitlab:user" {
		t.Fatalf("want one impersonate-group line per group, got %q", g)
	}
	e := waitAudit(t, mark)
	if e.User.Username != gw.Cluster.AgentUser || e.ImpersonatedUser == nil || e.ImpersonatedUser.Username != "gitlab:user:alice" {
		t.Fatalf("audit: authenticated %q impersonating %+v", e.User.Username, e.ImpersonatedUser)
	}
}

func currentAgentToken(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(gw.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestWatchStreams: `kubectl get pods -w` through the gateway receives an event for
// a pod created afterwards (the response is streamed, not buffered).
func TestWatchStreams(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", kubecfg, "--context", "alice", "get", "pods", "-n", "demo", "-w", "-o", "name")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }() // the watch never ends by itself
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The initial list comes first.
	waitLine(t, lines, "pod/web")
	name := "watched-" + strings.TrimPrefix(marker(t), "e2e-")
	if _, err := adminClient(t).CoreV1().Pods("demo").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer adminClient(t).CoreV1().Pods("demo").Delete(context.Background(), name, metav1.DeleteOptions{})
	waitLine(t, lines, "pod/"+name)
}

// waitLine waits for a line; the generous deadline only guards against a hang, it
// is not a latency measurement.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the watch ended before %q", want)
			}
			if l == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %q from the watch: the stream is buffered or broken", want)
		}
	}
}

// TestExecReachesTheAPIServer: kubectl exec upgrades through the gateway; the pod
// has no node here, so the API server's own answer must come back to kubectl.
func TestExecReachesTheAPIServer(t *testing.T) {
	out, err := kubectl(t, "--context", "alice", "exec", "-n", "demo", "web", "--", "true")
	if err == nil || !strings.Contains(out, "does not have a host assigned") {
		t.Fatalf("want the API server's answer through the gateway, got %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := gw.Cluster.WaitForAuditEvent(ctx, func(e *auditv1.Event) bool {
		return e.ObjectRef != nil && e.ObjectRef.Subresource == "exec" && e.ObjectRef.Name == "web" &&
			e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice"
	})
	if err != nil || e.User.Username != gw.Cluster.AgentUser {
		t.Fatalf("no exec request from alice through the agent in the audit log: %v", err)
	}
}

// TestFailClosed: with authz or extproc stopped nothing gets through and nothing
// reaches the API server; after a restart traffic flows again.
func TestFailClosed(t *testing.T) {
	for _, svc := range []*stack.Service{gw.Authz, gw.ExtProc} {
		t.Run(svc.Name+" stopped", func(t *testing.T) {
			svc.Stop()
			restarted := false
			defer func() {
				if !restarted {
					_ = svc.Start(context.Background())
				}
			}()
			mark := marker(t)
			resp := through(t, "GET", "/api/v1/namespaces/demo/pods?labelSelector=mark%3D"+mark, "Authorization", pat("alice"))
			if resp.code < 500 {
				t.Fatalf("with %s down the gateway answered %d: %s", svc.Name, resp.code, resp.body)
			}
			neverReachedAPIServer(t, mark)
			if err := svc.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			restarted = true
			waitOK(t, "traffic after restarting "+svc.Name)
		})
	}
}

// waitOK retries alice's request until it succeeds (Envoy's connection to a
// restarted service comes back on the next attempt).
func waitOK(t *testing.T, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp := through(t, "GET", "/api/v1/namespaces/demo/pods", "Authorization", pat("alice"))
		if resp.code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d: %s", what, resp.code, resp.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestTokenRotation: the agent token changes while the gateway runs; requests keep
// working throughout and the new token is used upstream.
func TestTokenRotation(t *testing.T) {
	old, next := currentAgentToken(t), gw.Cluster.AgentTokens[1]
	if old == next {
		next = gw.Cluster.AgentTokens[0]
	}
	var failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if resp := through(t, "GET", "/api/v1/namespaces/demo/pods", "Authorization", pat("alice")); resp.code != 200 {
				failures.Add(1)
			}
		}
	}()
	if err := stack.WriteFileAtomic(gw.TokenFile, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mark := marker(t)
		if resp := through(t, "GET", "/api/v1/namespaces/demo/pods?labelSelector=mark%3D"+mark, "Authorization", pat("alice")); resp.code != 200 {
			t.Fatalf("status %d during rotation", resp.code)
		}
		if sent := upstream.Matching(mark); len(sent) == 1 && sent[0].Values("authorization")[0] == "Bearer "+next {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new agent token was never used upstream")
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d requests failed during the rotation", n)
	}
}

// TestAgentMode: switching the agent config to access_as: agent (a live reload)
// sends requests as the agent's own identity, with no impersonation.
func TestAgentMode(t *testing.T) {
	orig, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stack.WriteFileAtomic(cfgFile, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		waitSelf(t, "alice", "gitlab:user:alice")
	}()
	agentCfg := strings.Replace(string(orig), "user: {}", "agent: {}", 1)
	if err := stack.WriteFileAtomic(cfgFile, []byte(agentCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	waitSelf(t, "alice", gw.Cluster.AgentUser)
	mark := marker(t)
	resp := through(t, "GET", "/api/v1/namespaces/demo/pods?labelSelector=mark%3D"+mark, "Authorization", pat("alice"))
	sent := upstream.Matching(mark)
	if len(sent) != 1 {
		t.Fatalf("want one upstream request, got %d (status %d %s)", len(sent), resp.code, resp.body)
	}
	for _, h := range sent[0].Header {
		if strings.HasPrefix(h.Name, "impersonate-") {
			t.Fatalf("agent mode sent %s: %s", h.Name, h.Value)
		}
	}
	e := waitAudit(t, mark)
	if e.User.Username != gw.Cluster.AgentUser || e.ImpersonatedUser != nil {
		t.Fatalf("audit: %q impersonating %+v", e.User.Username, e.ImpersonatedUser)
	}
	// The agent identity has no rights of its own here: RBAC still decides.
	if resp.code != 403 || resp.header.Get("X-Kubegate-Error") != "" {
		t.Fatalf("want the API server's own 403 for the agent, got %d %v", resp.code, resp.header)
	}
	// bob is still refused in agent mode.
	if resp := through(t, "GET", "/api/v1/namespaces/demo/pods", "Authorization", pat("bob")); resp.code != 403 || resp.header.Get("X-Kubegate-Error") != "not_a_member" {
		t.Fatalf("bob in agent mode: %d", resp.code)
	}
}

// waitSelf waits until a SelfSubjectReview through the gateway shows want.
func waitSelf(t *testing.T, user, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := userClient(t, user).AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err == nil && r.Status.UserInfo.Username == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway never reported %s as %s (last: %v)", user, want, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
