package chart

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/test/stack"
)

// demoPasswords is stack.DemoPasswords, fatal on error.
func demoPasswords(t *testing.T) map[string]string {
	t.Helper()
	pw, err := stack.DemoPasswords()
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

// browserClient talks to the gateway's listener as a browser on publicURL would:
// it trusts the listener's CA and does not follow redirects (the test reads them).
type browserClient struct {
	t         *testing.T
	publicURL string
	c         *http.Client
}

func newBrowserClient(t *testing.T, publicURL string, caPEM []byte) *browserClient {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("the listener CA is not PEM")
	}
	return &browserClient{t: t, publicURL: publicURL, c: &http.Client{
		Timeout:       30 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (b *browserClient) do(method, path, body string, h http.Header) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.publicURL+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header = h
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

// login posts the login form as user and returns the session cookie ("" if none).
func (b *browserClient) login(user, password string) (*http.Response, string) {
	b.t.Helper()
	resp, _ := b.do("POST", contract.LoginPath, url.Values{"username": {user}, "password": {password}}.Encode(),
		http.Header{"Origin": {b.publicURL}, "Content-Type": {"application/x-www-form-urlencoded"}})
	for _, c := range resp.Cookies() {
		if c.Name == contract.SessionCookie {
			return resp, c.Value
		}
	}
	return resp, ""
}

// session reads SessionPath with the cookie.
func (b *browserClient) session(cookie string) contract.SessionInfo {
	b.t.Helper()
	resp, body := b.do("GET", contract.SessionPath, "", http.Header{"Cookie": {contract.SessionCookie + "=" + cookie}})
	var info contract.SessionInfo
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("GET %s: %s\n%s", contract.SessionPath, resp.Status, body)
	}
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		b.t.Fatalf("GET %s: %v\n%s", contract.SessionPath, err, body)
	}
	return info
}

// api is a Dashboard API call: the session cookie, its CSRF token and the agent id.
func (b *browserClient) api(cookie, csrf, path string) (*http.Response, string) {
	b.t.Helper()
	h := http.Header{"Cookie": {contract.SessionCookie + "=" + cookie}, "Origin": {b.publicURL}}
	if csrf != "" {
		h.Set(contract.HeaderCSRFToken, csrf)
	}
	h.Set(contract.HeaderAgentID, "1")
	return b.do("GET", contract.PathPrefix+strings.TrimPrefix(path, "/"), "", h)
}

// browserThroughPod: the chart's browser half, run as the pod's processes behind
// the test data plane, works end to end on the listener users reach: the Dashboard
// page and the login page are served, alice and bob log in with the sandbox's demo
// passwords (deploy/sandbox/demo-logins.env), alice's session lists the demo pods
// as herself with access_type session_cookie, a call without the CSRF token and a
// wrong password are refused, and bob's session is refused by RBAC.
func browserThroughPod(ctx context.Context, t *testing.T, tb *testbed, publicURL string, caPEM []byte) {
	b := newBrowserClient(t, publicURL, caPEM)
	pw := demoPasswords(t)
	if pw["alice"] == "" || pw["bob"] == "" {
		t.Fatalf("demo-logins.env has no passwords for alice and bob: %v", pw)
	}
	t.Run("the Dashboard and the login page are served", func(t *testing.T) {
		for _, p := range []string{contract.DashboardPath, contract.LoginPath} {
			if resp, body := b.do("GET", p, "", http.Header{}); resp.StatusCode != http.StatusOK || !strings.Contains(body, "<html") {
				t.Errorf("GET %s: %s\n%.300s", p, resp.Status, body)
			}
		}
	})
	t.Run("a wrong password gets no session", func(t *testing.T) {
		if resp, cookie := b.login("alice", pw["alice"]+"-wrong"); resp.StatusCode != http.StatusUnauthorized || cookie != "" {
			t.Fatalf("login with a wrong password: %s, cookie %v", resp.Status, cookie != "")
		}
	})
	resp, alice := b.login("alice", pw["alice"])
	if resp.StatusCode != http.StatusSeeOther || alice == "" {
		t.Fatalf("alice's login: %s %v", resp.Status, resp.Header)
	}
	info := b.session(alice)
	if info.User != "alice" || info.CSRFToken == "" {
		t.Fatalf("alice's session: %+v", info)
	}
	t.Run("alice lists the demo pods with her session", func(t *testing.T) {
		resp, body := b.api(alice, info.CSRFToken, "/api/v1/namespaces/"+stack.DemoNamespace+"/pods")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"name":"web"`) {
			t.Fatalf("alice's pods: %s\n%.500s", resp.Status, body)
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := tb.c.WaitForAuditEvent(actx, func(e *auditv1.Event) bool {
			return e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "gitlab:user:alice" &&
				fmt.Sprint(e.ImpersonatedUser.Extra["agent.gitlab.com/access_type"]) == "[session_cookie]"
		}); err != nil {
			t.Fatalf("the API server never saw alice with access_type session_cookie: %v", err)
		}
	})
	t.Run("without the CSRF token the session is refused before the API server", func(t *testing.T) {
		pods := "/api/v1/namespaces/" + stack.DemoNamespace + "/pods/"
		if resp, body := b.api(alice, "", pods+"csrf-probe"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no CSRF token: %s\n%.300s", resp.Status, body)
		}
		// A request with the token after it: once the API server has logged that
		// one, a probe that had reached it would be in the log too.
		if resp, body := b.api(alice, info.CSRFToken, pods+"csrf-barrier"); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("the barrier request: %s, want the API server's 404\n%.300s", resp.Status, body)
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := tb.c.WaitForAuditEvent(actx, func(e *auditv1.Event) bool { return strings.HasSuffix(e.RequestURI, "/csrf-barrier") }); err != nil {
			t.Fatal(err)
		}
		events, err := tb.c.AuditEvents()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			if strings.Contains(e.RequestURI, "csrf-probe") {
				t.Fatalf("the request without the CSRF token reached the API server: %s %s", e.Verb, e.RequestURI)
			}
		}
	})
	t.Run("bob logs in and RBAC refuses him", func(t *testing.T) {
		resp, bob := b.login("bob", pw["bob"])
		if resp.StatusCode != http.StatusSeeOther || bob == "" {
			t.Fatalf("bob's login: %s", resp.Status)
		}
		bi := b.session(bob)
		if resp, body := b.api(bob, bi.CSRFToken, "/api/v1/namespaces/"+stack.DemoNamespace+"/pods"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("bob's pods: %s, want 403\n%.300s", resp.Status, body)
		}
	})
}
