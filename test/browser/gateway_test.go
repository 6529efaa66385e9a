package browser_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/browser"
	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/stack"
)

// TestThroughTheGateway is issue 13's browser test against the sandbox's stack:
// the real kubegate binary's authz (password login, sealed sessions, the
// Dashboard on its browser listener), extproc and xds, the data plane running the
// bootstrap `kubegate envoy render --browser` produced, and a real API server with
// KWOK running the demo pods. Unlike TestDashboard's stand-in, every Kubernetes
// request the page makes goes through ext_authz and ext_proc; every refusal is
// checked from the attacker's side: nothing of it reached the API server (the data
// plane's upstream recorder and the API server's audit log).
func TestThroughTheGateway(t *testing.T) {
	var seen stack.Recorder
	// The stack's work directory (its logs: authz, the data plane's access log) is
	// kept when the test fails, and named.
	work, err := os.MkdirTemp("", "kubegate-browser-stack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the stack's logs are kept in %s", filepath.Join(work, "logs"))
			return
		}
		os.RemoveAll(work)
	})
	s, err := stack.Start(t.Context(), stack.Options{
		WorkDir: work, Browser: true, Kubelet: true, Observe: seen.Add,
		Logf: func(f string, a ...any) { t.Logf("[stack] "+f, a...) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Stop()
	})
	ctx := t.Context()
	cs, err := kubernetes.NewForConfig(s.Cluster.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.SeedDemo(ctx, cs); err != nil {
		t.Fatal(err)
	}
	podsDir := t.TempDir()
	pods, err := stack.StartDemoPods(ctx, s.Cluster, podsDir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pods.Close() })
	if err := stack.SeedDemoDeployment(ctx, cs, 1); err != nil {
		t.Fatal(err)
	}
	logins := demoLogins(t)
	base := s.PublicURL
	ns := stack.DemoNamespace

	gatewayCert, err := browser.CertificatesFromPEMFile(filepath.Join(s.WorkDir, "gateway-tls", devcert.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	// A page on another origin: the same host, another port.
	evil := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "<!doctype html><title>another origin</title><p>nothing to see here</p>")
	}))
	t.Cleanup(evil.Close)
	p := browser.Start(t, browser.Options{TrustCertificates: append(gatewayCert, evil.Certificate()), Timeout: 5 * time.Minute})
	client := gatewayClient(t, s.GatewayCA)
	never := func(t *testing.T, mark string) { t.Helper(); neverReached(t, s.Cluster, &seen, mark) }

	t.Run("without a session the Dashboard sends the browser to the login page", func(t *testing.T) {
		p := p.For(t)
		p.OpenDashboardNoSession(base, "#ns="+ns)
		if c := p.Cookie(base, contract.SessionCookie); c != nil {
			t.Fatalf("a session cookie before any login: %+v", c)
		}
	})

	t.Run("a wrong password is refused and sets no cookie", func(t *testing.T) {
		p := p.For(t)
		p.Navigate(base + contract.LoginPath)
		p.Type(`input[name="username"]`, "alice")
		p.Type(`input[name="password"]`, "not-alices-password\n")
		p.WaitText("body", "Wrong username or password")
		if c := p.Cookie(base, contract.SessionCookie); c != nil {
			t.Fatalf("a refused login set a session cookie: %+v", c)
		}
	})

	var aliceCookie, aliceCSRF string
	t.Run("alice logs in; the cookie is as specified", func(t *testing.T) {
		p := p.For(t)
		p.LoginAs(base, "alice", logins["alice"])
		c := p.Cookie(base, contract.SessionCookie)
		if c == nil {
			t.Fatal("no session cookie after the login")
		}
		// Host-only: CDP reports a host-only cookie's domain without a leading dot
		// (a Domain attribute would make it ".127.0.0.1"-style and valid for
		// subdomains).
		if !c.HTTPOnly || !c.Secure || c.SameSite != "Lax" || c.Path != "/" || c.Domain != "127.0.0.1" || c.Session {
			t.Errorf("cookie attributes: HttpOnly=%v Secure=%v SameSite=%q Path=%q Domain=%q Session=%v; want HttpOnly, Secure, Lax, /, host-only 127.0.0.1, with an expiry",
				c.HTTPOnly, c.Secure, c.SameSite, c.Path, c.Domain, c.Session)
		}
		if got := browser.Eval[bool](p, "the cookie is invisible to scripts", `document.cookie.includes('`+contract.SessionCookie+`')`); got {
			t.Error("document.cookie shows the session cookie: it is not HttpOnly")
		}
		aliceCookie = c.Value
		info := browser.Eval[contract.SessionInfo](p, "the session info", `fetch('`+contract.SessionPath+`').then(r => r.json())`)
		if info.User != "alice" || info.CSRFToken == "" || len(info.Agents) != 1 || info.Agents[0].ID != stack.AgentID {
			t.Fatalf("session info %+v: want alice, a CSRF token and agent %d", info, stack.AgentID)
		}
		aliceCSRF = info.CSRFToken
	})
	if aliceCookie == "" {
		t.Fatal("cannot go on without alice's session")
	}

	t.Run("alice sees the demo pods", func(t *testing.T) {
		p := p.For(t)
		p.OpenNamespace(ns)
		p.WaitLive("pods")
		for _, pod := range []string{"web", "worker"} {
			p.WaitRowText(pod, "Running")
		}
		if v := p.CSPViolations(); len(v) != 0 {
			t.Errorf("CSP violations: %q", v)
		}
		// The cluster saw alice, impersonated, as a session-cookie user.
		e := waitAudit(t, s.Cluster, func(e *auditv1.Event) bool {
			return e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice" &&
				e.ObjectRef != nil && e.ObjectRef.Resource == "pods" && e.ObjectRef.Namespace == ns && e.Verb == "list"
		})
		if got := e.ImpersonatedUser.Extra["agent.gitlab.com/access_type"]; len(got) != 1 || got[0] != "session_cookie" {
			t.Errorf("access_type extra %q, want session_cookie", got)
		}
	})

	t.Run("a pod's log streams and a new line arrives", func(t *testing.T) {
		p := p.For(t)
		p.OpenPodLogs("web")
		p.WaitLog("web: handled request #")
		line := fmt.Sprintf("kubegate whole-stack line %d", time.Now().UnixNano())
		if err := cluster.AppendContainerLog(filepath.Join(podsDir, "web", "container.log"), line); err != nil {
			t.Fatal(err)
		}
		p.WaitLog(line)
		p.Click(browser.SelBack)
		p.WaitLive("pods")
	})

	t.Run("alice deletes a pod and watches it go", func(t *testing.T) {
		p := p.For(t)
		p.Act("delete", "worker", 0)
		p.WaitNoRow("worker")
		// Gone from the cluster too, deleted by alice through the gateway (KWOK
		// finishes the graceful deletion).
		deadline := time.Now().Add(time.Minute)
		for {
			_, err := cs.CoreV1().Pods(ns).Get(ctx, "worker", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod worker still exists a minute after the Dashboard deleted it: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		waitAudit(t, s.Cluster, func(e *auditv1.Event) bool {
			return e.Verb == "delete" && e.ObjectRef != nil && e.ObjectRef.Name == "worker" &&
				e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice"
		})
	})

	t.Run("alice scales and restarts a deployment, which rolls", func(t *testing.T) {
		p := p.For(t)
		p.ShowKind("deployments")
		p.WaitRowText(stack.DemoDeployment, "1/1") // the controllers made its pod; KWOK runs it
		p.Act("scale", stack.DemoDeployment, 2)
		p.WaitText(browser.SelStatus, "Scaled Deployment "+ns+"/"+stack.DemoDeployment+" to 2")
		p.WaitRowText(stack.DemoDeployment, "2/2") // the new pod Running, seen live by the watch
		before := time.Now().Add(-time.Second).Truncate(time.Second)
		p.Act("restart", stack.DemoDeployment, 0)
		p.WaitText(browser.SelStatus, "Restarted Deployment "+ns+"/"+stack.DemoDeployment)
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, stack.DemoDeployment, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		at, err := time.Parse(time.RFC3339, d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"])
		if err != nil || at.Before(before) {
			t.Errorf("restartedAt = %q (%v), want the time of the restart", d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"], err)
		}
		// The rollout: a second ReplicaSet, made by the deployment controller.
		deadline := time.Now().Add(time.Minute)
		for {
			rs, err := cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + stack.DemoDeployment})
			if err == nil && len(rs.Items) >= 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new ReplicaSet a minute after the restart: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		waitAudit(t, s.Cluster, func(e *auditv1.Event) bool {
			return e.Verb == "patch" && e.ObjectRef != nil && e.ObjectRef.Name == stack.DemoDeployment && e.ObjectRef.Subresource == "scale" &&
				e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice"
		})
		p.ShowKind("pods")
	})

	t.Run("the cluster's refusal is shown as the cluster's", func(t *testing.T) {
		p := p.For(t)
		p.OpenNamespace("kube-system") // alice's RBAC is in demo only
		text := p.WaitError("forbidden")
		if strings.Contains(text, "kubegate (the gateway) refused") || !strings.Contains(text, `"gitlab:user:alice"`) {
			t.Errorf("error %q: want the API server's Forbidden for gitlab:user:alice, not the gateway's", text)
		}
		p.DismissError()
		p.OpenNamespace(ns)
		p.WaitLive("pods")
	})

	// The attacker's requests below carry alice's real cookie (as a page on another
	// origin makes the browser send it, or as a thief replays it) and a marker, so
	// the recorder and the audit log can be searched for exactly them.
	t.Run("a request without the CSRF token is a 401 and reaches nothing", func(t *testing.T) {
		p := p.For(t)
		mark := newMark()
		code := browser.Eval[int](p, "fetch without the CSRF token", fmt.Sprintf(
			`fetch('/k8s-proxy/api/v1/namespaces/%s/configmaps?labelSelector=m%%3D%s', {headers: {'Gitlab-Agent-Id': '%d'}}).then(r => r.status)`, ns, mark, stack.AgentID))
		if code != http.StatusUnauthorized {
			t.Errorf("status %d, want 401", code)
		}
		mark2 := newMark()
		code = browser.Eval[int](p, "fetch with another session's CSRF token", fmt.Sprintf(
			`fetch('/k8s-proxy/api/v1/namespaces/%s/configmaps?labelSelector=m%%3D%s', {headers: {'Gitlab-Agent-Id': '%d', 'X-Csrf-Token': 'x%s'}}).then(r => r.status)`, ns, mark2, stack.AgentID, aliceCSRF[1:]))
		if code != http.StatusUnauthorized {
			t.Errorf("wrong CSRF token: status %d, want 401", code)
		}
		never(t, mark)
		never(t, mark2)
	})

	t.Run("a cross-origin request is refused and reaches nothing", func(t *testing.T) {
		// From a Go client: alice's cookie and even her CSRF token, from another origin.
		mark := newMark()
		resp := do(t, client, "GET", base+"/k8s-proxy/api/v1/namespaces/"+ns+"/configmaps?labelSelector=m%3D"+mark, map[string]string{
			"Cookie": contract.SessionCookie + "=" + aliceCookie, "Gitlab-Agent-Id": fmt.Sprint(stack.AgentID), "X-Csrf-Token": aliceCSRF,
			"Origin": "https://attacker.example",
		})
		if resp.code != http.StatusForbidden || resp.header.Get(contract.HeaderError) != "cross_origin" {
			t.Errorf("cross-origin: %d %s %s, want 403 cross_origin", resp.code, resp.header.Get(contract.HeaderError), resp.body)
		}
		never(t, mark)

		// From a page on another origin in the same browser: another port of the
		// same host is the same site, so SameSite=Lax does not keep the cookie back.
		// A no-cors GET with the query form of the credential needs no preflight;
		// the browser sends alice's cookie with it, and the gateway must refuse it
		// (Sec-Fetch-Site: same-site). Even with alice's CSRF token, which a real
		// attacker would not have.
		p := p.For(t)
		p.Navigate(evil.URL)
		mark2 := newMark()
		browser.Eval[bool](p, "a no-cors request from another origin", fmt.Sprintf(
			`fetch(%q, {mode: 'no-cors', credentials: 'include'}).then(() => true, () => true)`,
			fmt.Sprintf("%s/k8s-proxy/api/v1/namespaces/%s/configmaps/%s?gitlab-agent-id=%d&gitlab-csrf-token=%s", base, ns, mark2, stack.AgentID, aliceCSRF)))
		waitDecision(t, s, mark2, "cross_origin")
		never(t, mark2)
		p.OpenDashboard(base, "#ns="+ns)
	})

	t.Run("forged and tampered cookies are 401s and reach nothing", func(t *testing.T) {
		tampered := []byte(aliceCookie)
		tampered[len(tampered)-3] ^= 1
		for name, cookie := range map[string]string{
			"forged":   "v1.AAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
			"tampered": string(tampered),
			"oversize": strings.Repeat("a", 5000),
		} {
			mark := newMark()
			resp := do(t, client, "GET", base+"/k8s-proxy/api/v1/namespaces/"+ns+"/configmaps?labelSelector=m%3D"+mark, map[string]string{
				"Cookie": contract.SessionCookie + "=" + cookie, "Gitlab-Agent-Id": fmt.Sprint(stack.AgentID), "X-Csrf-Token": aliceCSRF,
			})
			if resp.code != http.StatusUnauthorized {
				t.Errorf("%s cookie: %d %s, want 401", name, resp.code, resp.body)
			}
			never(t, mark)
		}
	})

	t.Run("logout ends the session; the old cookie replayed is a 401", func(t *testing.T) {
		p := p.For(t)
		p.Click(browser.SelLogout)
		p.WaitFor("the login page", `location.pathname === '`+contract.LoginPath+`' ? 'yes' : ''`)
		if c := p.Cookie(base, contract.SessionCookie); c != nil && c.Value != "" {
			t.Errorf("the session cookie is still set after logout: %+v", c)
		}
		mark := newMark()
		resp := do(t, client, "GET", base+"/k8s-proxy/api/v1/namespaces/"+ns+"/configmaps?labelSelector=m%3D"+mark, map[string]string{
			"Cookie": contract.SessionCookie + "=" + aliceCookie, "Gitlab-Agent-Id": fmt.Sprint(stack.AgentID), "X-Csrf-Token": aliceCSRF,
		})
		if resp.code != http.StatusUnauthorized {
			t.Errorf("replayed after logout: %d %s, want 401", resp.code, resp.body)
		}
		never(t, mark)
		resp = do(t, client, "GET", base+contract.SessionPath, map[string]string{"Cookie": contract.SessionCookie + "=" + aliceCookie})
		if resp.code != http.StatusUnauthorized {
			t.Errorf("session endpoint after logout: %d, want 401", resp.code)
		}
	})

	t.Run("bob logs in and sees kubegate's refusal", func(t *testing.T) {
		p := p.For(t)
		p.LoginAs(base, "bob", logins["bob"])
		p.WaitText(browser.SelMessage, "cannot reach any agent")
		// His own page asking for agent 1 anyway: kubegate's 403, the gateway's
		// answer (x-kubegate-error), and nothing reached the cluster.
		mark := newMark()
		got := browser.Eval[[]string](p, "bob's request for agent 1", fmt.Sprintf(
			`(async () => { const s = await (await fetch('%s')).json();
			  const r = await fetch('/k8s-proxy/api/v1/namespaces/%s/configmaps?labelSelector=m%%3D%s', {headers: {'Gitlab-Agent-Id': '%d', 'X-Csrf-Token': s.csrf_token}});
			  return [String(r.status), r.headers.get('%s') || '', (await r.json()).message]; })()`,
			contract.SessionPath, ns, mark, stack.AgentID, contract.HeaderError))
		if got[0] != "403" || got[1] == "" || !strings.HasPrefix(got[2], "kubegate: ") {
			t.Errorf("bob's request: %q, want kubegate's 403 Status with x-kubegate-error", got)
		}
		never(t, mark)
	})
}

// demoLogins is stack.DemoPasswords (lower-case user → password), fatal on error.
func demoLogins(t *testing.T) map[string]string {
	t.Helper()
	pw, err := stack.DemoPasswords()
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

// gatewayClient trusts the gateway's CA only.
func gatewayClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no certificate", caFile)
	}
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		Timeout:   30 * time.Second,
		// The login and logout answers are redirects: look at them, do not follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type answer struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, url string, headers map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func newMark() string { return "browser-" + strings.ToLower(rand.Text()[:12]) }

// waitDecision waits until authz has logged its decision on the request for the
// object named mark, with reason, so a refusal is known to have been made (and
// not, say, the request never sent).
func waitDecision(t *testing.T, s *stack.Stack, mark, reason string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(s.Authz.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			var d struct{ Msg, Name, Reason string }
			if json.Unmarshal([]byte(line), &d) == nil && d.Msg == "decision" && d.Name == mark {
				if d.Reason != reason {
					t.Fatalf("authz decided on %s with reason %q, want %q: %s", mark, d.Reason, reason, line)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("authz logged no decision on %s within 10s (%s)", mark, s.Authz.LogPath())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// neverReached asserts that no request carrying mark went to the API server: the
// data plane never sent one upstream, and the API server's audit log, caught up
// with a sentinel request sent afterwards, has none.
func neverReached(t *testing.T, c *cluster.Cluster, seen *stack.Recorder, mark string) {
	t.Helper()
	if got := seen.Matching(mark); len(got) > 0 {
		t.Fatalf("a refused request went upstream: %+v", got)
	}
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	sentinel := newMark()
	if _, err := cs.CoreV1().ConfigMaps(stack.DemoNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "sentinel=" + sentinel}); err != nil {
		t.Fatal(err)
	}
	waitAudit(t, c, func(e *auditv1.Event) bool { return strings.Contains(e.RequestURI, sentinel) })
	events, err := c.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if strings.Contains(e.RequestURI, mark) {
			t.Fatalf("the API server saw the refused request: %s %s as %s", e.Verb, e.RequestURI, e.User.Username)
		}
	}
}

func waitAudit(t *testing.T, c *cluster.Cluster, match func(*auditv1.Event) bool) *auditv1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := c.WaitForAuditEvent(ctx, func(e *auditv1.Event) bool { return e.Stage == auditv1.StageResponseComplete && match(e) })
	if err != nil {
		t.Fatal(err)
	}
	return e
}
