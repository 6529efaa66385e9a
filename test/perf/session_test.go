package perf

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/session"
	"kubegate.dev/kubegate/test/loadgen"
	"kubegate.dev/kubegate/test/stack"
)

// publicURL is the gateway's origin in these benchmarks (checkRequest's authority).
const publicURL = "https://gateway.example:8443"

// startAuthzWithSessions starts authz with browser sessions on (a session key, the
// public URL, the in-memory logout store), as a gateway serving the Dashboard runs.
func (e *env) startAuthzWithSessions(tb testing.TB) (*server, string) {
	tb.Helper()
	keys := filepath.Join(tb.TempDir(), "session.keys")
	if err := stack.WriteSessionKey(keys); err != nil {
		tb.Fatal(err)
	}
	addr := freeAddr(tb)
	return start(tb, e.dir, "authz-sessions", addr, []string{e.bin, "authz", "--listen", addr,
		"--agent-id", "1", "--config-project-id", "1", "--agent-config", e.agentConfig, "--directory", e.directory,
		"--session-key-file", keys, "--public-url", publicURL}), keys
}

// sessionCheckRequest is the Dashboard's GET of the same pods, as Envoy asks about
// it: the session cookie, the agent id and the CSRF token, Sec-Fetch-Site of a
// same-origin fetch and no Origin (Chromium sends none on a same-origin GET).
func sessionCheckRequest(cookie, csrf string) *authv3.CheckRequest {
	req := checkRequest("unused")
	hm := &corev3.HeaderMap{}
	for _, h := range req.Attributes.Request.Http.HeaderMap.Headers {
		if h.Key != "authorization" {
			hm.Headers = append(hm.Headers, h)
		}
	}
	for _, kv := range [][2]string{
		{"cookie", contract.SessionCookie + "=" + cookie}, {contract.HeaderAgentID, "1"}, {contract.HeaderCSRFToken, csrf},
		{"sec-fetch-site", "same-origin"},
	} {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	req.Attributes.Request.Http.HeaderMap = hm
	return req
}

// BenchmarkCheckSession measures the Dashboard's path at real size: alice's Check
// with a session cookie (open the sealed cookie, the CSRF token, the logout store,
// the user still in the directory, then her 243-group decision), and a personal
// access token's Check on the same process (sessions on put the session
// authenticator first in the chain), against the no-op floor at 8 callers.
func BenchmarkCheckSession(b *testing.B) {
	e := setup(b)
	floor := startFloor(b, e.dir, "authz")
	kg, keys := e.startAuthzWithSessions(b)
	dir, err := directory.Parse("directory.yaml", e.data.Directory)
	if err != nil {
		b.Fatal(err)
	}
	alice, ok := dir.UserByName(e.data.User)
	if !ok {
		b.Fatalf("%s is not in the generated directory", e.data.User)
	}
	// Sealed after authz started: its in-memory logout store refuses sessions
	// issued before it was created.
	m, err := session.New(session.Config{KeyFile: keys})
	if err != nil {
		b.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s, err := m.Issue(rec, alice, session.MethodPassword)
	if err != nil {
		b.Fatal(err)
	}
	var cookie string
	for _, c := range (&http.Response{Header: rec.Header()}).Cookies() {
		if c.Name == contract.SessionCookie {
			cookie = c.Value
		}
	}
	fc, kc := authv3.NewAuthorizationClient(floor.conn), authv3.NewAuthorizationClient(kg.conn)
	cases := []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"allowed-pat", checkRequest(e.data.Token)},
		{"allowed-session", sessionCheckRequest(cookie, s.CSRFToken)},
	}
	// Warm, each case as long as a measurement: the first case measured on a fresh
	// process otherwise pays its heap's growth (it read ~45 µs a call dearer than
	// the same case measured second).
	for _, tc := range cases {
		resp, err := kc.Check(context.Background(), tc.req)
		if err != nil || resp.GetOkResponse() == nil {
			b.Fatalf("%s: the Check is not allowed: %v %v", tc.name, resp.GetDeniedResponse(), err)
		}
		for range 3000 {
			if _, err := kc.Check(context.Background(), tc.req); err != nil {
				b.Fatal(err)
			}
		}
	}
	const callers = 8
	var base loadgen.Result
	var baseCPU float64
	b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
		base, baseCPU = measure(b, floor, callers, func() error { _, err := fc.Check(context.Background(), cases[0].req); return err })
	})
	for _, tc := range cases {
		b.Run(fmt.Sprintf("c=%d/kubegate-%s", callers, tc.name), func(b *testing.B) {
			r, cpu := measure(b, kg, callers, func() error { _, err := kc.Check(context.Background(), tc.req); return err })
			r.Compare(b, base)
			reportCPURatio(b, cpu, baseCPU)
		})
	}
}
