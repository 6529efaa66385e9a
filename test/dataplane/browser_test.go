package dataplane

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/extauthz"
)

// browserUpstream stands in for kubegate authz's browser listener (plain
// HTTP/1.1, as --browser-listen serves): it records what arrived.
type browserUpstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []*http.Request
}

func newBrowserUpstream(t testing.TB, handler http.HandlerFunc) *browserUpstream {
	t.Helper()
	b := &browserUpstream{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.got = append(b.got, r.Clone(r.Context()))
		b.mu.Unlock()
		if handler != nil {
			handler(w, r)
			return
		}
		io.WriteString(w, "browser listener\n")
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *browserUpstream) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

func (b *browserUpstream) requests() []*http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*http.Request(nil), b.got...)
}

// browserStack is a data plane rendered with --browser in front of the real
// kubegate authz, extproc and xds, an API server recorder and a browser listener.
type browserStack struct {
	c       certs
	dp      *DataPlane
	api     *recorder
	browser *browserUpstream
	obs     *observed
}

func newBrowserStack(t *testing.T, apiHandler, browserHandler http.HandlerFunc, editBootstrap func(*bootstrapv3.Bootstrap)) *browserStack {
	t.Helper()
	s := &browserStack{c: newCerts(t), api: newRecorder(t, apiHandler), browser: newBrowserUpstream(t, browserHandler), obs: &observed{}}
	_, xds := realXDS(t, agentToken)
	s.dp = start(t, render(t, s.c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: s.api.url(), caFile: s.api.caFile,
		edit:          func(o *envoy.Options) { o.Browser = mustAddr(t, s.browser.addr()) },
		editBootstrap: editBootstrap,
	}), Options{OnUpstreamRequest: s.obs.record})
	return s
}

// raw sends one HTTP/1.1 request written byte for byte (request target and Host
// exactly as given, which Go's client would clean up) and returns the response.
func (s *browserStack) raw(t *testing.T, target string, header http.Header) (*http.Response, string) {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.dp.URL(), "https://"), s.c.clientTLS(t, "http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var b strings.Builder
	b.WriteString("GET " + target + " HTTP/1.1\r\n")
	if header.Get("Host") == "" {
		b.WriteString("Host: " + strings.TrimPrefix(s.dp.URL(), "https://") + "\r\n")
	}
	for k, vs := range header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("Connection: close\r\n\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// agentTokenNeverAtBrowser: no request the browser listener received carries the
// agent's service-account token in any header.
func (s *browserStack) agentTokenNeverAtBrowser(t *testing.T) {
	t.Helper()
	for _, r := range s.browser.requests() {
		for k, vs := range r.Header {
			for _, v := range vs {
				if strings.Contains(v, agentToken) {
					t.Errorf("the browser listener got the agent token in %s: %q", k, v)
				}
			}
		}
	}
}

// TestBrowserRouteFromTheAttackersSide sends what an attacker would try at the
// browser route and checks what reached the API server (the recorder) and the
// browser listener.
func TestBrowserRouteFromTheAttackersSide(t *testing.T) {
	s := newBrowserStack(t, nil, nil, nil)
	host := strings.TrimPrefix(s.dp.URL(), "https://")
	for _, tt := range []struct {
		name   string
		target string
		header http.Header
		// wantStatus 0: any error status (>= 400).
		wantStatus int
		// browserPath is the path the browser listener must have received ("":
		// nothing may reach it); api says whether the API server may get it.
		browserPath string
		api         bool
		check       func(t *testing.T, resp *http.Response, browser []*http.Request)
	}{
		{name: "the dashboard", target: "/ui/", wantStatus: 200, browserPath: "/ui/", check: func(t *testing.T, _ *http.Response, got []*http.Request) {
			if v := got[0].Header.Get("X-Envoy-Expected-Rq-Timeout-Ms"); v != "30000" {
				t.Errorf("x-envoy-expected-rq-timeout-ms %q, want the 30s route timeout", v)
			}
		}},
		{name: "dot-dot out of /ui/ into the API", target: "/ui/../k8s-proxy/api/v1/pods"},
		{name: "encoded dot-dot out of /ui/", target: "/ui/%2e%2e/k8s-proxy/api/v1/pods"},
		{name: "encoded dot-dot, upper case", target: "/ui/%2E%2E/%2E%2E/k8s-proxy/api/v1/pods"},
		{name: "an escaped slash after /ui/", target: "/ui/%2F..", wantStatus: http.StatusBadRequest},
		{name: "a doubled slash before ui", target: "//ui/", wantStatus: 200, browserPath: "/ui/"},
		{name: "upper-case UI", target: "/UI/"},
		{name: "a longer name starting with ui", target: "/uifoo"},
		{name: "/ui without the slash", target: "/ui?next=https://attacker.example", wantStatus: http.StatusFound, check: func(t *testing.T, resp *http.Response, _ []*http.Request) {
			if loc := resp.Header.Get("Location"); loc != "https://"+host+"/ui/" {
				t.Errorf("Location %q, want the gateway's own /ui/ without the query", loc)
			}
		}},
		{name: "the root", target: "/", wantStatus: http.StatusFound, check: func(t *testing.T, resp *http.Response, _ []*http.Request) {
			if loc := resp.Header.Get("Location"); loc != "https://"+host+"/ui/" {
				t.Errorf("Location %q", loc)
			}
		}},
		{name: "the API with the browser listener's Host", target: "/k8s-proxy/api/v1/pods", header: http.Header{"Host": {s.browser.addr()}}},
		{name: "the API with a Host naming the browser cluster", target: "/k8s-proxy/api/v1/pods", header: http.Header{"Host": {contract.BrowserCluster}}},
		{name: "the dashboard with the API server's Host", target: "/ui/", header: http.Header{"Host": {"kubernetes.default.svc"}}, wantStatus: 200, browserPath: "/ui/", check: func(t *testing.T, _ *http.Response, got []*http.Request) {
			if got[0].Host != "kubernetes.default.svc" {
				t.Errorf("browser listener saw Host %q", got[0].Host)
			}
		}},
		{name: "a PAT to /ui/ goes to the browser listener alone, without the agent token", target: "/ui/session",
			header:     http.Header{"Authorization": {alicePAT()}, "Cookie": {contract.SessionCookie + "=sealed"}},
			wantStatus: 200, browserPath: "/ui/session", check: func(t *testing.T, _ *http.Response, got []*http.Request) {
				if a := got[0].Header.Values("Authorization"); !slices.Equal(a, []string{alicePAT()}) {
					t.Errorf("browser listener saw Authorization %q, want the client's own, unchanged", a)
				}
				if c := got[0].Header.Get("Cookie"); c != contract.SessionCookie+"=sealed" {
					t.Errorf("browser listener saw Cookie %q: the login handler needs it", c)
				}
			}},
		{name: "x-kubegate-upstream naming the browser cluster on an API path", target: "/k8s-proxy/api/v1/pods",
			header: http.Header{"Authorization": {alicePAT()}, "X-Kubegate-Upstream": {contract.BrowserCluster}}, wantStatus: 200, api: true},
		{name: "x-kubegate-upstream naming the browser cluster without a credential", target: "/k8s-proxy/api/v1/pods",
			header: http.Header{"X-Kubegate-Upstream": {contract.BrowserCluster}}},
		{name: "x-kubegate-upstream naming an API server on /ui/", target: "/ui/",
			header:     http.Header{"Authorization": {alicePAT()}, "X-Kubegate-Upstream": {envoy.APIServerCluster(sandboxAgent.ID)}, "X-Kubegate-Error": {"forged"}},
			wantStatus: 200, browserPath: "/ui/", check: func(t *testing.T, _ *http.Response, got []*http.Request) {
				for _, h := range []string{"X-Kubegate-Upstream", "X-Kubegate-Error"} {
					if v := got[0].Header.Values(h); len(v) > 0 {
						t.Errorf("browser listener saw the client's %s %q", h, v)
					}
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			apiBefore, browserBefore := len(s.api.requests()), len(s.browser.requests())
			resp, body := s.raw(t, tt.target, tt.header)
			switch {
			case tt.wantStatus == 0 && resp.StatusCode < 400:
				t.Errorf("status %d, want a refusal; body %s", resp.StatusCode, body)
			case tt.wantStatus != 0 && resp.StatusCode != tt.wantStatus:
				t.Errorf("status %d, want %d; body %s", resp.StatusCode, tt.wantStatus, body)
			}
			apiGot := s.api.requests()[apiBefore:]
			browserGot := s.browser.requests()[browserBefore:]
			if tt.api != (len(apiGot) > 0) {
				t.Errorf("the API server got %d requests, want any: %v", len(apiGot), tt.api)
			}
			for _, r := range apiGot {
				if a := r.Header.Values("Authorization"); !slices.Equal(a, []string{"Bearer " + agentToken}) {
					t.Errorf("the API server got Authorization %q, want the agent token alone", a)
				}
			}
			switch {
			case tt.browserPath == "" && len(browserGot) > 0:
				t.Errorf("the browser listener got %s", browserGot[0].URL)
			case tt.browserPath != "" && (len(browserGot) != 1 || browserGot[0].URL.RequestURI() != tt.browserPath):
				t.Fatalf("the browser listener got %d requests, want one for %s", len(browserGot), tt.browserPath)
			}
			if tt.check != nil {
				tt.check(t, resp, browserGot)
			}
		})
	}
	s.agentTokenNeverAtBrowser(t)
	for _, u := range s.obs.all() {
		if u.Cluster == contract.BrowserCluster && (len(u.Values("impersonate-user")) > 0 || len(u.Values("impersonate-group")) > 0) {
			t.Errorf("a request to the browser listener carries impersonation: %s", headerLines(u))
		}
	}
}

// TestAPIResponsesLoseCORSHeaders: an API server configured with
// --cors-allowed-origins answers a matching Origin with Access-Control-* headers
// (k8s.io/apiserver filters.WithCORS); the API routes of a --browser bootstrap
// remove every one of them, so another origin's script cannot read the answer.
func TestAPIResponsesLoseCORSHeaders(t *testing.T) {
	s := newBrowserStack(t, func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" {
			w.Header().Set("Access-Control-Allow-Origin", o)
			w.Header().Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE, PATCH")
			w.Header().Set("Access-Control-Allow-Headers", "Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization, X-Requested-With, If-Modified-Since")
			w.Header().Set("Access-Control-Expose-Headers", "Date")
			w.Header().Set("Access-Control-Allow-Credentials", "true")
		}
		io.WriteString(w, `{"kind":"PodList"}`)
	}, nil, nil)
	for _, target := range []string{"/k8s-proxy/api/v1/pods", "/api/v1/pods"} {
		t.Run(target, func(t *testing.T) {
			before := len(s.api.requests())
			resp, body := s.raw(t, target, http.Header{"Authorization": {alicePAT()}, "Origin": {"https://attacker.example"}})
			if resp.StatusCode != http.StatusOK || len(s.api.requests()) != before+1 {
				t.Fatalf("status %d (%s); the request must reach the API server for this test", resp.StatusCode, body)
			}
			for k := range resp.Header {
				if strings.HasPrefix(strings.ToLower(k), "access-control-") {
					t.Errorf("response header %s: %q reached the client", k, resp.Header.Values(k))
				}
			}
		})
	}
}

// TestBrowserRouteTimeout: the browser route's finite timeout answers a browser
// listener that does not answer with Envoy's 504 (router.cc onUpstreamTimeout).
func TestBrowserRouteTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := newBrowserStack(t, nil, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}, func(b *bootstrapv3.Bootstrap) {
		editHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
			for _, r := range h.GetRouteConfig().VirtualHosts[0].Routes {
				if r.Name == envoy.BrowserRouteName {
					r.GetRoute().Timeout = durationpb.New(200 * time.Millisecond)
				}
			}
		}, nil)
	})
	resp, body := s.raw(t, "/ui/", nil)
	if resp.StatusCode != http.StatusGatewayTimeout || body != "upstream request timeout" {
		t.Fatalf("status %d body %q, want 504 upstream request timeout", resp.StatusCode, body)
	}
}

// TestCrossOriginSessionThroughTheChain: a Dashboard-style API call with the
// session cookie from another origin is refused by kubegate authz (403
// cross_origin) through the rendered chain, and nothing reaches the API server.
func TestCrossOriginSessionThroughTheChain(t *testing.T) {
	c := newCerts(t)
	api := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	srv := realAuthzServer(t).(*extauthz.Server)
	if err := srv.SetAllowedOrigins([]string{"https://127.0.0.1:8443"}); err != nil {
		t.Fatal(err)
	}
	authz := serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) })
	dp := start(t, render(t, c, setup{authz: authz, extproc: realExtProc(t), xds: xds, apiserver: api.url(), caFile: api.caFile}), Options{})
	cl := client(t, c, true)
	session := http.Header{"Cookie": {contract.SessionCookie + "=sealed"}, "Gitlab-Agent-Id": {"1"}, "X-Csrf-Token": {"csrf"}}
	for _, tt := range []struct {
		name       string
		origin     string
		wantStatus int
		wantReason string
	}{
		{"another site", "https://attacker.example", http.StatusForbidden, string(extauthz.ReasonCrossOrigin)},
		{"the gateway's origin over http", "http://127.0.0.1:8443", http.StatusForbidden, string(extauthz.ReasonCrossOrigin)},
		// The gateway's own origin passes the check and reaches the identity step,
		// which here has no session authenticator.
		{"the gateway's own origin", "https://127.0.0.1:8443", http.StatusUnauthorized, "unsupported_credential"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := session.Clone()
			h.Set("Origin", tt.origin)
			status, header, body := do(t, cl, "DELETE", dp.URL()+"/k8s-proxy/api/v1/namespaces/demo/pods/web", h)
			if status != tt.wantStatus || header.Get(contract.HeaderError) != tt.wantReason {
				t.Fatalf("status %d %s %s, want %d %s", status, header.Get(contract.HeaderError), body, tt.wantStatus, tt.wantReason)
			}
			if n := len(api.requests()); n != 0 {
				t.Fatalf("the API server got %d requests", n)
			}
		})
	}
}

// TestBrowserLoginPost: a password form POST goes to the browser listener with
// its body, Content-Type and Cookie, over HTTP/2 and HTTP/1.1, and the API server
// sees nothing.
func TestBrowserLoginPost(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	s := newBrowserStack(t, nil, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, r.Method+" "+r.Header.Get("Content-Type")+" "+string(b))
		mu.Unlock()
		w.WriteHeader(http.StatusSeeOther)
	}, nil)
	for _, h2 := range []bool{true, false} {
		cl := client(t, s.c, h2)
		cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		req, err := http.NewRequest("POST", s.dp.URL()+contract.LoginPath, strings.NewReader("username=alice&password=correct+horse"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", s.dp.URL())
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("h2=%v: status %d", h2, resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := "POST application/x-www-form-urlencoded username=alice&password=correct+horse"
	if len(bodies) != 2 || bodies[0] != want || bodies[1] != want {
		t.Fatalf("the browser listener got %q, want %q twice", bodies, want)
	}
	if n := len(s.api.requests()); n != 0 {
		t.Fatalf("the API server got %d requests", n)
	}
}
