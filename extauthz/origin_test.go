package extauthz

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
)

// testPublicURL is the gateway's public URL in these tests (--public-url).
const testPublicURL = "https://gateway.example:8443/"

func TestNormalizeOrigin(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		wantErr  string
	}{
		{in: "https://gateway.example:8443", want: "https://gateway.example:8443"},
		{in: "https://gateway.example:8443/", want: "https://gateway.example:8443"},
		{in: "HTTPS://Gateway.Example:8443", want: "https://gateway.example:8443"},
		{in: "https://gateway.example:443", want: "https://gateway.example"},
		{in: "https://gateway.example", want: "https://gateway.example"},
		{in: "http://127.0.0.1:80", want: "http://127.0.0.1"},
		{in: "https://[::1]:8443", want: "https://[::1]:8443"},
		{in: "https://gateway.example/ui/", wantErr: "only scheme, host and port"},
		{in: "https://gateway.example/?x=1", wantErr: "only scheme, host and port"},
		{in: "https://user@gateway.example", wantErr: "only scheme, host and port"},
		{in: "ftp://gateway.example", wantErr: "scheme must be https"},
		{in: "gateway.example:8443", wantErr: "not a URL"},
		{in: "", wantErr: "not a URL"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeOrigin(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NormalizeOrigin(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeOrigin(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewGateway([]AgentSpec{{Agent: agent}}, &Shared{Authenticator: dir, Memberships: dir}, GatewayOptions{AllowedOrigins: []string{"https://gateway.example/ui/"}}); err == nil || !strings.Contains(err.Error(), "only scheme, host and port") {
		t.Errorf("NewGateway with a public URL with a path: %v", err)
	}
}

// session are the headers of a Dashboard API call (access.md §2.3).
func session(extra ...hdr) []hdr {
	return append([]hdr{{"cookie", "kubegate_session=sealed"}, {"gitlab-agent-id", "1"}, {"x-csrf-token", "csrf"}}, extra...)
}

// TestSessionCookieOrigin tries cross-origin session-cookie requests from the
// attacker's side: each is a 403 cross_origin before the identity backend is
// asked. A request from the gateway's own origin, or without Origin (a browser's
// same-origin GET sends none), goes on to the identity step, which here has no
// session authenticator (401 unsupported_credential). PAT requests are not
// checked.
func TestSessionCookieOrigin(t *testing.T) {
	f := start(t, sandboxConfig, "")
	const own = "https://gateway.example:8443"
	for _, tt := range []struct {
		name    string
		headers []hdr
		path    string
		// cross: refused as cross-origin; otherwise the origin step passes.
		cross bool
		pat   bool // a PAT request: allowed whatever its Origin
	}{
		{name: "no Origin", headers: session()},
		{name: "own origin", headers: session(hdr{"origin", own})},
		{name: "own origin, Sec-Fetch-Site same-origin", headers: session(hdr{"origin", own}, hdr{"sec-fetch-site", "same-origin"})},
		{name: "Sec-Fetch-Site none (typed address)", headers: session(hdr{"sec-fetch-site", "none"})},
		{name: "another site", headers: session(hdr{"origin", "https://attacker.example"}), cross: true},
		{name: "a sibling subdomain", headers: session(hdr{"origin", "https://evil.gateway.example:8443"}), cross: true},
		{name: "Origin null (sandboxed iframe, data: URL)", headers: session(hdr{"origin", "null"}), cross: true},
		{name: "two Origin headers, both the gateway's", headers: session(hdr{"origin", own}, hdr{"origin", own}), cross: true},
		{name: "two Origin headers, the second foreign", headers: session(hdr{"origin", own}, hdr{"origin", "https://attacker.example"}), cross: true},
		{name: "upper-case scheme", headers: session(hdr{"origin", "HTTPS://gateway.example:8443"}), cross: true},
		{name: "upper-case host", headers: session(hdr{"origin", "https://GATEWAY.example:8443"}), cross: true},
		{name: "trailing slash", headers: session(hdr{"origin", own + "/"}), cross: true},
		{name: "another port", headers: session(hdr{"origin", "https://gateway.example:9443"}), cross: true},
		{name: "no port", headers: session(hdr{"origin", "https://gateway.example"}), cross: true},
		{name: "http instead of https", headers: session(hdr{"origin", "http://gateway.example:8443"}), cross: true},
		{name: "empty Origin", headers: session(hdr{"origin", ""}), cross: true},
		{name: "own origin as a prefix", headers: session(hdr{"origin", own + ".attacker.example"}), cross: true},
		{name: "Sec-Fetch-Site cross-site", headers: session(hdr{"sec-fetch-site", "cross-site"}), cross: true},
		{name: "Sec-Fetch-Site same-site", headers: session(hdr{"sec-fetch-site", "same-site"}), cross: true},
		{name: "Sec-Fetch-Site in another case", headers: session(hdr{"sec-fetch-site", "Same-Origin"}), cross: true},
		{name: "two Sec-Fetch-Site lines", headers: session(hdr{"sec-fetch-site", "same-origin"}, hdr{"sec-fetch-site", "same-origin"}), cross: true},
		{name: "own Origin but Sec-Fetch-Site cross-site", headers: session(hdr{"origin", own}, hdr{"sec-fetch-site", "cross-site"}), cross: true},
		{name: "WebSocket with the CSRF token in the query from another site",
			headers: []hdr{{"cookie", "kubegate_session=sealed"}, {"origin", "https://attacker.example"}, {"upgrade", "websocket"}, {"connection", "Upgrade"}},
			path:    podsPath + "?watch=1&gitlab-agent-id=1&gitlab-csrf-token=csrf", cross: true},
		{name: "PAT with another site's Origin", headers: []hdr{pat(aliceToken), {"origin", "https://attacker.example"}, {"sec-fetch-site", "cross-site"}}, pat: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := f.backend.auths.Load()
			path := tt.path
			if path == "" {
				path = podsPath
			}
			resp := f.check(t, checkRequest("GET", path, tt.headers...))
			if tt.pat {
				if resp.GetOkResponse() == nil {
					t.Fatalf("a PAT request was refused over its Origin: %v", resp)
				}
				return
			}
			d := denied(t, resp)
			if tt.cross {
				if d.code != 403 || d.reason != string(ReasonCrossOrigin) || !strings.Contains(d.message, "the Dashboard must be used from the gateway's own origin") {
					t.Fatalf("got %+v, want 403 cross_origin", d)
				}
				if f.backend.auths.Load() != before {
					t.Fatal("the identity backend was asked about a cross-origin request")
				}
				return
			}
			if d.code != 401 || d.reason != "unsupported_credential" {
				t.Fatalf("got %+v, want the origin step passed (401 unsupported_credential from the identity step)", d)
			}
		})
	}
}

// TestSessionCookieWithoutPublicURL: a gateway with no public URL refuses every
// session-cookie request, from any origin or none, saying --public-url is needed;
// PAT requests go on.
func TestSessionCookieWithoutPublicURL(t *testing.T) {
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	backend := &counting{dir: dir}
	srv, err := NewServer(agent, snapshot(t, sandboxConfig, "", backend), slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{client: serve(t, srv), server: srv, backend: backend}
	for _, h := range [][]hdr{session(), session(hdr{"origin", "https://gateway.example:8443"}), session(hdr{"sec-fetch-site", "same-origin"})} {
		d := denied(t, f.check(t, checkRequest("GET", podsPath, h...)))
		if d.code != 403 || d.reason != string(ReasonCrossOrigin) || !strings.Contains(d.message, "--public-url") {
			t.Fatalf("headers %v: got %+v, want 403 cross_origin naming --public-url", h, d)
		}
	}
	if backend.auths.Load() != 0 {
		t.Fatal("the identity backend was asked about a session cookie the gateway cannot check the origin of")
	}
	if resp := f.check(t, checkRequest("GET", podsPath, pat(aliceToken))); resp.GetOkResponse() == nil {
		t.Fatalf("a PAT request was refused: %v", resp)
	}
}

// recordingAuth records the session credentials it is asked about and accepts
// none (as a gateway without a session authenticator).
type recordingAuth struct {
	mu  sync.Mutex
	got []identity.Credential
}

func (r *recordingAuth) Authenticate(_ context.Context, c identity.Credential) (*identity.Identity, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, c)
	return nil, false, nil
}

// TestSessionCSRFAndAgentForms checks access.md §2.3 through Check: the header
// wins over the query parameter, and more than one value in either place is a 401
// before any authenticator sees the request.
func TestSessionCSRFAndAgentForms(t *testing.T) {
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingAuth{}
	snap := snapshot(t, sandboxConfig, "", &counting{dir: dir})
	snap.Authenticator = rec
	srv, err := NewServer(agent, snap, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetAllowedOrigins([]string{testPublicURL}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{client: serve(t, srv), server: srv}
	cookie := hdr{"cookie", "kubegate_session=sealed"}
	for _, tt := range []struct {
		name      string
		headers   []hdr
		query     string
		wantAgent int64 // 0: refused as malformed
		wantCSRF  string
	}{
		{name: "headers win over the query", headers: []hdr{cookie, {"gitlab-agent-id", "1"}, {"x-csrf-token", "from-header"}}, query: "gitlab-agent-id=2&gitlab-csrf-token=from-query", wantAgent: 1, wantCSRF: "from-header"},
		{name: "the query alone (a WebSocket)", headers: []hdr{cookie}, query: "gitlab-agent-id=1&gitlab-csrf-token=from-query", wantAgent: 1, wantCSRF: "from-query"},
		{name: "two X-Csrf-Token headers", headers: []hdr{cookie, {"gitlab-agent-id", "1"}, {"x-csrf-token", "a"}, {"x-csrf-token", "b"}}},
		{name: "two Gitlab-Agent-Id headers", headers: []hdr{cookie, {"gitlab-agent-id", "1"}, {"gitlab-agent-id", "1"}, {"x-csrf-token", "a"}}},
		{name: "two gitlab-agent-id parameters", headers: []hdr{cookie, {"x-csrf-token", "a"}}, query: "gitlab-agent-id=1&gitlab-agent-id=1"},
		{name: "two gitlab-csrf-token parameters", headers: []hdr{cookie, {"gitlab-agent-id", "1"}}, query: "gitlab-csrf-token=a&gitlab-csrf-token=b"},
		{name: "one header, two parameters: still two values", headers: []hdr{cookie, {"gitlab-agent-id", "1"}, {"x-csrf-token", "a"}}, query: "gitlab-csrf-token=b&gitlab-csrf-token=c"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec.mu.Lock()
			before := len(rec.got)
			rec.mu.Unlock()
			path := podsPath
			if tt.query != "" {
				path += "?" + tt.query
			}
			d := denied(t, f.check(t, checkRequest("GET", path, tt.headers...)))
			rec.mu.Lock()
			got := rec.got[before:]
			rec.mu.Unlock()
			if tt.wantAgent == 0 {
				if d.code != 401 || d.reason != "malformed_credential" || len(got) != 0 {
					t.Fatalf("got %+v with %d authenticator calls, want a 401 malformed_credential before any", d, len(got))
				}
				return
			}
			if len(got) != 1 || got[0].AgentID != tt.wantAgent || got[0].CSRF != tt.wantCSRF || got[0].Type != identity.AccessSessionCookie {
				t.Fatalf("the authenticator got %+v, want agent %d and CSRF %q", got, tt.wantAgent, tt.wantCSRF)
			}
		})
	}
}
