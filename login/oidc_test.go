package login

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"kubegate.dev/kubegate/contract"
)

// startOIDC opens OIDCLoginPath and returns the provider URL it redirects to.
func (b *browser) startOIDC(next string) *url.URL {
	b.f.t.Helper()
	p := contract.OIDCLoginPath
	if next != "" {
		p += "?" + url.Values{"next": {next}}.Encode()
	}
	resp := b.do("GET", p, nil, nil)
	read(b.f.t, resp)
	if resp.StatusCode != http.StatusFound {
		b.f.t.Fatalf("OIDC start: %s", resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		b.f.t.Fatal(err)
	}
	return loc
}

// atProvider follows the redirect to the provider and returns the callback URL
// (path and query on the gateway) it sends the browser back to.
func (b *browser) atProvider(authURL *url.URL) string {
	b.f.t.Helper()
	resp, err := noFollow.Get(authURL.String())
	if err != nil {
		b.f.t.Fatal(err)
	}
	read(b.f.t, resp)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil || !strings.HasPrefix(loc.String(), publicURL+contract.OIDCCallbackPath+"?") {
		b.f.t.Fatalf("the provider answered %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	return loc.RequestURI()
}

func (b *browser) callback(pathAndQuery string) (*http.Response, string) {
	b.f.t.Helper()
	resp := b.do("GET", pathAndQuery, nil, nil)
	return resp, read(b.f.t, resp)
}

// The whole authorization-code flow with PKCE against the in-test provider.
func TestOIDCLogin(t *testing.T) {
	f := newFixture(t)
	b := f.browser()
	authURL := b.startOIDC("/ui/#/pods")
	q := authURL.Query()
	login := b.cookies[LoginCookie]
	switch {
	case login == nil:
		t.Fatal("no login cookie")
	case login.Path != contract.OIDCCallbackPath || !login.Secure || !login.HttpOnly || login.SameSite != http.SameSiteLaxMode || login.MaxAge != 600 || login.Domain != "":
		t.Fatalf("login cookie attributes %+v", login)
	case q.Get("redirect_uri") != publicURL+contract.OIDCCallbackPath || q.Get("client_id") != "kubegate-browser" || q.Get("response_type") != "code":
		t.Fatalf("authorization request %v", q)
	case q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || q.Get("state") == "" || q.Get("nonce") == "" || q.Get("state") == q.Get("nonce"):
		t.Fatalf("authorization request %v", q)
	case strings.Contains(login.Value, q.Get("state")) || strings.Contains(authURL.String(), "verifier"):
		t.Fatal("the login state is readable")
	}
	resp, body := b.callback(b.atProvider(authURL))
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/#/pods" || sessionCookie(resp) == nil {
		t.Fatalf("callback: %s to %q\n%s", resp.Status, resp.Header.Get("Location"), body)
	}
	if b.cookies[LoginCookie] != nil {
		t.Fatal("the login cookie was not cleared")
	}
	info, code := b.session()
	if code != 200 || info.User != "alice" || len(info.Agents) != 1 {
		t.Fatalf("session %d %+v", code, info)
	}
	if f.provider.TokensIssued.Load() != 1 {
		t.Fatalf("%d tokens issued", f.provider.TokensIssued.Load())
	}
}

// Every way the callback must refuse: no session is made, the login cookie is
// spent, and the page says what to do (no token, no stack).
func TestOIDCCallbackRefuses(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name     string
		setup    func(f *fixture)
		callback func(t *testing.T, b *browser) string // path and query of the callback
		wantCode int
		wantText string
		// wantProvider: the provider's token endpoint refused for this reason.
		wantProvider string
	}{
		{
			name: "state mismatch",
			callback: func(t *testing.T, b *browser) string {
				cb, _ := url.Parse(b.atProvider(b.startOIDC("")))
				q := cb.Query()
				q.Set("state", "attacker-state")
				return cb.Path + "?" + q.Encode()
			},
			wantCode: 400, wantText: "does not belong to the login this browser started",
		},
		{
			name: "no login cookie (another browser's callback)",
			callback: func(t *testing.T, b *browser) string {
				cb := b.atProvider(b.startOIDC(""))
				delete(b.cookies, LoginCookie)
				return cb
			},
			wantCode: 400, wantText: "not started in this browser",
		},
		{
			name: "a login cookie forged by the client",
			callback: func(t *testing.T, b *browser) string {
				cb := b.atProvider(b.startOIDC(""))
				b.cookies[LoginCookie].Value = "v1.forged.AAAA"
				return cb
			},
			wantCode: 400, wantText: "not started in this browser",
		},
		{
			name: "replayed code",
			callback: func(t *testing.T, b *browser) string {
				first := b.atProvider(b.startOIDC(""))
				if resp, _ := b.callback(first); resp.StatusCode != 303 {
					t.Fatalf("first use: %s", resp.Status)
				}
				delete(b.cookies, contract.SessionCookie)
				// A new login in the same browser; the attacker replays the old code
				// with the new login's state.
				newAuth := b.startOIDC("")
				old, _ := url.Parse(first)
				q := old.Query()
				q.Set("state", newAuth.Query().Get("state"))
				return old.Path + "?" + q.Encode()
			},
			wantCode: 401, wantText: "did not accept the code of this login", wantProvider: "already used",
		},
		{
			name: "the code of another login (mismatched verifier)",
			callback: func(t *testing.T, b *browser) string {
				// The attacker's own login at the provider, its code injected into
				// the victim's callback with the victim's state.
				attacker := f.browser()
				stolen, _ := url.Parse(attacker.atProvider(attacker.startOIDC("")))
				victim := b.startOIDC("")
				q := stolen.Query()
				q.Set("state", victim.Query().Get("state"))
				return stolen.Path + "?" + q.Encode()
			},
			wantCode: 401, wantText: "did not accept the code of this login", wantProvider: "code_verifier does not match",
		},
		{
			name: "login state without a verifier",
			callback: func(t *testing.T, b *browser) string {
				cb, _ := url.Parse(b.atProvider(b.startOIDC("")))
				sealed, err := f.sessions.SealValue(loginPurpose, mustJSON(t, loginState{State: cb.Query().Get("state"), Nonce: "n"}), loginTTL)
				if err != nil {
					t.Fatal(err)
				}
				b.cookies[LoginCookie].Value = sealed
				return cb.RequestURI()
			},
			wantCode: 400, wantText: "not started in this browser",
		},
		{
			name:  "wrong nonce",
			setup: func(f *fixture) { f.provider.Tamper(func(c jwt.MapClaims) { c["nonce"] = "another-login" }) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "ID token was refused",
		},
		{
			name:  "no nonce",
			setup: func(f *fixture) { f.provider.Tamper(func(c jwt.MapClaims) { delete(c, "nonce") }) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "ID token was refused",
		},
		{
			name:  "ID token for another audience",
			setup: func(f *fixture) { f.provider.Tamper(func(c jwt.MapClaims) { c["aud"] = "kubectl" }) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "ID token was refused",
		},
		{
			name:  "ID token of another issuer",
			setup: func(f *fixture) { f.provider.Tamper(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "ID token was refused",
		},
		{
			name:  "a user the gateway does not know",
			setup: func(f *fixture) { f.provider.SetUser(map[string]any{"sub": "idp-9", "nickname": "zed"}) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "no active account",
		},
		{
			name:  "a blocked user",
			setup: func(f *fixture) { f.provider.SetUser(map[string]any{"sub": "idp-3", "nickname": "mallory"}) },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "no active account",
		},
		{
			name:  "the provider refused",
			setup: func(f *fixture) { f.provider.Deny("access_denied") },
			callback: func(t *testing.T, b *browser) string {
				return b.atProvider(b.startOIDC(""))
			},
			wantCode: 401, wantText: "refused the login (access_denied)",
		},
		{
			name: "a provider error with markup",
			callback: func(t *testing.T, b *browser) string {
				b.startOIDC("")
				return contract.OIDCCallbackPath + "?" + url.Values{"error": {"<script>x</script>"}, "error_description": {`<img src=x onerror=alert(1)>`}}.Encode()
			},
			wantCode: 401, wantText: "&lt;img src=x onerror=alert(1)&gt;",
		},
		{
			name: "no code",
			callback: func(t *testing.T, b *browser) string {
				auth := b.startOIDC("")
				return contract.OIDCCallbackPath + "?state=" + url.QueryEscape(auth.Query().Get("state"))
			},
			wantCode: 400, wantText: "no authorization code",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.provider.Tamper(nil)
			f.provider.Deny("")
			f.provider.SetUser(map[string]any{"sub": "idp-1", "nickname": "alice"})
			if tt.setup != nil {
				tt.setup(f)
			}
			b := f.browser()
			cb := tt.callback(t, b)
			resp, body := b.callback(cb)
			if resp.StatusCode != tt.wantCode || sessionCookie(resp) != nil || !strings.Contains(body, tt.wantText) {
				t.Fatalf("got %s session=%v, want %d with %q:\n%s", resp.Status, sessionCookie(resp) != nil, tt.wantCode, tt.wantText, body)
			}
			if b.cookies[LoginCookie] != nil {
				t.Fatal("the login cookie was not spent")
			}
			if tt.wantProvider != "" && !strings.Contains(f.provider.LastRefusal(), tt.wantProvider) {
				t.Fatalf("the provider refused with %q, want %q", f.provider.LastRefusal(), tt.wantProvider)
			}
			if _, code := b.session(); code != 401 {
				t.Fatalf("a session exists after a refused login: %d", code)
			}
			for _, never := range []string{"<script>", "<img", "goroutine", "eyJ"} {
				if strings.Contains(body, never) {
					t.Fatalf("the page contains %q:\n%s", never, body)
				}
			}
			if !strings.Contains(body, `href="/ui/login"`) {
				t.Fatal("the page does not lead back to the login")
			}
			cbURL, _ := url.Parse(cb)
			logs := f.logs.String()
			for _, secret := range []string{cbURL.Query().Get("code"), cbURL.Query().Get("state"), f.secret} {
				if secret != "" && strings.Contains(logs, secret) {
					t.Fatalf("the log contains a code, state or secret %.12q…", secret)
				}
			}
			if strings.Contains(logs, "eyJ") {
				t.Fatal("the log contains a JWT")
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
