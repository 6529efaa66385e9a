package browser_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/dashboard"
	"kubegate.dev/kubegate/test/cluster"
)

// Who the stand-in says is logged in, and as whom it impersonates on the API server:
// alice with the GitLab groups test/stack's demo RBAC binds (view and edit in demo).
const (
	testUser  = "alice"
	testCSRF  = "csrf-token-of-this-session"
	agentOK   = 1 // proxied to the test cluster
	agentDeny = 2 // refused by the stand-in, as kubegate refuses
)

var twoAgents = []contract.AgentInfo{
	{ID: agentOK, Name: "demo", ConfigProjectID: 1, AccessAs: "user"},
	{ID: agentDeny, Name: "production", ConfigProjectID: 2, AccessAs: "user"},
}

var testGroups = []string{"gitlab:project_role:1:developer", "gitlab:project_role:1:maintainer"}

// standIn is a TEST-ONLY stand-in for the gateway, so the Dashboard can be developed
// and tested against a real API server and real pods without the whole stack: it
// serves dashboard.Handler, a SessionPath answering a fixed SessionInfo, a logout,
// and /k8s-proxy/ reverse-proxied to the API server as alice (impersonated by the
// admin), after checking the Dashboard's agent id and CSRF token as ext_authz
// would. It is not kubegate's authorization: the whole-stack browser test goes
// through the real authz, extproc and data plane.
type standIn struct {
	srv *httptest.Server

	mu        sync.Mutex
	loggedOut bool
	logouts   []string // the X-Csrf-Token of each logout
	sessions  int      // SessionPath calls
	logsOpen  int      // log streams being proxied now
	expire    string   // a collection path whose next watch is answered 410 Gone
	agents    []contract.AgentInfo
	calls     []string // "agent csrf method path" of each /k8s-proxy/ request
}

func newStandIn(t *testing.T, c *cluster.Cluster) *standIn {
	s := &standIn{agents: twoAgents}
	target, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.URL.Path = "/" + strings.TrimPrefix(r.In.URL.Path, contract.PathPrefix)
			r.Out.URL.RawPath = ""
			for _, h := range contract.CredentialHeaders {
				r.Out.Header.Del(h)
			}
			r.Out.Header.Set("Authorization", "Bearer "+c.AdminToken)
			r.Out.Header.Set("Impersonate-User", testUser)
			r.Out.Header.Del("Impersonate-Group")
			for _, g := range testGroups {
				r.Out.Header.Add("Impersonate-Group", g)
			}
		},
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		FlushInterval: -1, // watches and logs stream
	}
	refuse := func(w http.ResponseWriter, code int, reason, msg string) {
		w.Header().Set(contract.HeaderError, reason)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(contract.StatusBody(code, msg))
	}
	mux := http.NewServeMux()
	ui := dashboard.Handler()
	mux.Handle(contract.DashboardPath, ui)
	mux.HandleFunc(contract.SessionPath, func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		out := s.loggedOut
		s.sessions++
		agents := s.agents
		s.mu.Unlock()
		w.Header().Set("Cache-Control", "no-store")
		if out {
			refuse(w, http.StatusUnauthorized, "no_session", "no session: log in")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(contract.SessionInfo{
			User: testUser, CSRFToken: testCSRF,
			ExpiresAt: time.Now().Add(8 * time.Hour), IdleExpiresAt: time.Now().Add(30 * time.Minute),
			Agents: agents,
		})
	})
	mux.HandleFunc(contract.LogoutPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get(contract.HeaderCSRFToken) != testCSRF {
			refuse(w, http.StatusUnauthorized, "csrf", "logout needs the session's CSRF token")
			return
		}
		s.mu.Lock()
		s.loggedOut = true
		s.logouts = append(s.logouts, r.Header.Get(contract.HeaderCSRFToken))
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(contract.LoginPath, func(w http.ResponseWriter, r *http.Request) {
		dashboard.SecurityHeaders(w.Header())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(`<!doctype html><title>login</title><p id="login">the login page (stand-in)</p>`))
	})
	mux.HandleFunc(contract.PathPrefix, func(w http.ResponseWriter, r *http.Request) {
		agent, csrf := r.Header.Get(contract.HeaderAgentID), r.Header.Get(contract.HeaderCSRFToken)
		s.mu.Lock()
		s.calls = append(s.calls, fmt.Sprintf("%s %s %s %s", agent, csrf, r.Method, r.URL.RequestURI()))
		out := s.loggedOut
		s.mu.Unlock()
		switch {
		case out:
			refuse(w, http.StatusUnauthorized, "no_session", "the session ended: log in again")
		case csrf != testCSRF:
			refuse(w, http.StatusUnauthorized, "csrf", "the X-Csrf-Token header is missing or not this session's")
		case agent == fmt.Sprint(agentDeny):
			refuse(w, http.StatusForbidden, "agent_forbidden", fmt.Sprintf("user %s may not use agent %d: the agent's configuration does not grant it", testUser, agentDeny))
		case agent != fmt.Sprint(agentOK):
			refuse(w, http.StatusUnauthorized, "agent", "the Gitlab-Agent-Id header is missing or names no agent")
		case r.URL.Query().Get("watch") == "1" && s.takeExpire(r.URL.Path):
			// What the API server sends when the resourceVersion is too old for its
			// watch cache: a 200 whose one event is an ERROR Status with code 410
			// (api-concepts "410 Gone responses").
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"type": "ERROR", "object": metav1.Status{
				TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
				Message: "too old resource version", Reason: metav1.StatusReasonExpired, Code: http.StatusGone,
			}})
		case strings.HasSuffix(r.URL.Path, "/log"):
			s.mu.Lock()
			s.logsOpen++
			s.mu.Unlock()
			defer func() {
				s.mu.Lock()
				s.logsOpen--
				s.mu.Unlock()
			}()
			proxy.ServeHTTP(w, r)
		default:
			proxy.ServeHTTP(w, r)
		}
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.EnableHTTP2 = true // as Envoy's listener: one connection carries every watch
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *standIn) takeExpire(path string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.expire == "" || s.expire != path {
		return false
	}
	s.expire = ""
	return true
}

func (s *standIn) callsSeen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}
