package login

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/oidc"
	"kubegate.dev/kubegate/identity/oidc/oidctest"
	"kubegate.dev/kubegate/identity/session"
)

// publicURL is the gateway's origin in these tests; requests go to an httptest
// server, with the Origin a browser on that origin sends.
const publicURL = "https://kubegate.test"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer collects the log lines of concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// countingPasswords counts the checks that reach the directory.
type countingPasswords struct {
	inner Passwords
	calls atomic.Int64
}

func (c *countingPasswords) CheckPassword(ctx context.Context, u, p string) (identity.User, error) {
	c.calls.Add(1)
	return c.inner.CheckPassword(ctx, u, p)
}

type fixture struct {
	t         *testing.T
	srv       *httptest.Server
	h         *Handler
	sessions  *session.Manager
	dir       *directory.Directory
	passwords *countingPasswords
	provider  *oidctest.Provider
	clk       *clock
	logs      *syncBuffer
	secret    string // the OIDC client secret
}

// cheap argon2id parameters: the tests check many passwords.
var cheap = directory.Argon2Params{Memory: 64, Time: 1, Threads: 1}

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := directory.HashPasswordArgon2id(pw, cheap)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func newFixture(t *testing.T, mod ...func(*Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, session.KeyLen)
	_, _ = rand.Read(key)
	keyFile := filepath.Join(dir, "keys")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	sessions, err := session.New(session.Config{KeyFile: keyFile, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`users:
  - {id: 1, username: alice, password_hash: %q}
  - {id: 2, username: bob, password_hash: %q}
  - {id: 3, username: mallory, state: blocked, password_hash: %q}
  - {id: 4, username: nopass}
`, hash(t, "alice-password"), hash(t, "bob-password"), hash(t, "mallory-password"))
	d, err := directory.Parse("dir.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	users := session.UserLookupFunc(func(_ context.Context, name string) (identity.User, bool, error) {
		u, ok := d.UserByName(name)
		return u, ok, nil
	})
	p := oidctest.Start(t, oidctest.Options{Client: oidctest.Client{ID: "kubegate-browser", RedirectURI: publicURL + contract.OIDCCallbackPath}})
	p.SetUser(map[string]any{"sub": "idp-1", "nickname": "alice"})
	secretFile := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secretFile, []byte(p.Client.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	pw := &countingPasswords{inner: d}
	pub, _ := url.Parse(publicURL)
	cfg := Config{
		PublicURL: pub, Sessions: sessions, Passwords: pw,
		OIDC: &OIDCConfig{Issuer: p.Issuer(), ClientID: p.Client.ID, ClientSecretFile: secretFile, Users: users, UserID: oidc.UserIDFromLookup},
		Agents: AgentsFunc(func(_ context.Context, u identity.User) ([]contract.AgentInfo, error) {
			if u.Username == "alice" {
				return []contract.AgentInfo{{ID: 1, Name: "sandbox", ConfigProjectID: 1, AccessAs: "user"}}, nil
			}
			return nil, nil
		}),
		Dashboard: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "the dashboard") }),
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:       clk.Now,
	}
	for _, m := range mod {
		m(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{t: t, srv: srv, h: h, sessions: sessions, dir: d, passwords: pw, provider: p, clk: clk, logs: logs, secret: p.Client.Secret}
}

// browser keeps cookies by name like a browser on publicURL (the test server is
// plain HTTP, so a cookie jar would keep the Secure cookies to itself), and
// follows no redirects.
type browser struct {
	f       *fixture
	cookies map[string]*http.Cookie
}

func (f *fixture) browser() *browser { return &browser{f: f, cookies: map[string]*http.Cookie{}} }

var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// do sends a request for pathAndQuery on the gateway with the browser's cookies
// whose Path covers it, and keeps the cookies the answer sets.
func (b *browser) do(method, pathAndQuery string, body io.Reader, hdr http.Header) *http.Response {
	b.f.t.Helper()
	req, err := http.NewRequest(method, b.f.srv.URL+pathAndQuery, body)
	if err != nil {
		b.f.t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	for _, c := range b.cookies {
		if strings.HasPrefix(req.URL.Path, c.Path) {
			req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
		}
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		b.f.t.Fatal(err)
	}
	for _, c := range resp.Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c
		}
	}
	return resp
}

func read(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var sameOrigin = http.Header{"Origin": {publicURL}, "Content-Type": {"application/x-www-form-urlencoded"}}

func (b *browser) postLogin(form url.Values, hdr http.Header) *http.Response {
	return b.do(http.MethodPost, contract.LoginPath, strings.NewReader(form.Encode()), hdr)
}

func (b *browser) login(user, pw string) {
	b.f.t.Helper()
	resp := b.postLogin(url.Values{"username": {user}, "password": {pw}}, sameOrigin)
	read(b.f.t, resp)
	if resp.StatusCode != http.StatusSeeOther || b.cookies[contract.SessionCookie] == nil {
		b.f.t.Fatalf("login as %s: %s", user, resp.Status)
	}
}

func (b *browser) session() (contract.SessionInfo, int) {
	b.f.t.Helper()
	resp := b.do(http.MethodGet, contract.SessionPath, nil, nil)
	body := read(b.f.t, resp)
	var info contract.SessionInfo
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(body), &info); err != nil {
			b.f.t.Fatal(err)
		}
	}
	return info, resp.StatusCode
}

// sessionCookie is the Set-Cookie of the session cookie in resp, if any.
func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == contract.SessionCookie && c.MaxAge >= 0 {
			return c
		}
	}
	return nil
}

// Every answer carries the security headers and no-store; methods are checked
// (405 with Allow), unknown paths are 404.
func TestRoutesAndHeaders(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		method, path string
		wantCode     int
		wantAllow    string
	}{
		{"GET", contract.LoginPath, 200, ""},
		{"HEAD", contract.LoginPath, 200, ""},
		{"PUT", contract.LoginPath, 405, "GET, HEAD, POST"},
		{"DELETE", contract.LogoutPath, 405, "POST"},
		{"GET", contract.LogoutPath, 405, "POST"},
		{"POST", contract.SessionPath, 405, "GET, HEAD"},
		{"POST", contract.OIDCLoginPath, 405, "GET, HEAD"},
		{"POST", contract.OIDCCallbackPath, 405, "GET, HEAD"},
		{"GET", contract.SessionPath, 401, ""},
		{"GET", "/ui/nope", 404, ""},
		{"GET", "/ui/login/", 404, ""},
		{"GET", "/ui/logins", 404, ""},
		{"GET", "/elsewhere", 404, ""},
		{"GET", contract.DashboardPath, 200, ""},
		{"GET", contract.AssetsPrefix + "app.js", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp := f.browser().do(tt.method, tt.path, nil, nil)
			read(t, resp)
			if resp.StatusCode != tt.wantCode || resp.Header.Get("Allow") != tt.wantAllow {
				t.Fatalf("got %s Allow %q, want %d Allow %q", resp.Status, resp.Header.Get("Allow"), tt.wantCode, tt.wantAllow)
			}
			for k, v := range map[string]string{
				"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
				"X-Content-Type-Options":  "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
			} {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if strings.HasPrefix(tt.path, contract.BrowserPrefix) && tt.path != contract.DashboardPath && !strings.HasPrefix(tt.path, contract.AssetsPrefix) && resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
			}
		})
	}
}

// The login page works without JavaScript: a form posting username and password
// to LoginPath, the OIDC link, and a safe next carried along; nothing inline.
func TestLoginPage(t *testing.T) {
	f := newFixture(t)
	body := read(t, f.browser().do("GET", contract.LoginPath+"?next=/ui/%23/pods", nil, nil))
	for _, want := range []string{`<form method="post" action="/ui/login">`, `name="username"`, `name="password" type="password"`,
		`Log in with 127.0.0.1:`, `href="/ui/login/oidc?next=%2Fui%2F%23%2Fpods"`, `name="next" value="/ui/#/pods"`} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s:\n%s", want, body)
		}
	}
	for _, never := range []string{"<script", "style=", "<style", "onclick"} {
		if strings.Contains(body, never) {
			t.Errorf("the page has %s, which the CSP refuses", never)
		}
	}
	body = read(t, f.browser().do("GET", contract.LoginPath+"?next=//evil.example", nil, nil))
	if strings.Contains(body, "evil") {
		t.Fatalf("an unsafe next reached the page:\n%s", body)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	f := newFixture(t)
	good := f.h.cfg
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no public URL", func(c *Config) { c.PublicURL = nil }, "--public-url"},
		{"plain http, not loopback", func(c *Config) { c.PublicURL, _ = url.Parse("http://kubegate.example.com") }, "plain http"},
		{"with a path", func(c *Config) { c.PublicURL, _ = url.Parse("https://kubegate.example.com/gw") }, "more than scheme, host and port"},
		{"no sessions", func(c *Config) { c.Sessions = nil }, "--session-key-file"},
		{"no login method", func(c *Config) { c.Passwords, c.OIDC = nil, nil }, "no way to log in"},
		{"no agents", func(c *Config) { c.Agents = nil }, "agent lister"},
		{"OIDC without users", func(c *Config) { o := *c.OIDC; o.Users = nil; c.OIDC = &o }, "look users up"},
		{"OIDC secret file missing", func(c *Config) { o := *c.OIDC; o.ClientSecretFile = "/nonexistent"; c.OIDC = &o }, "client secret file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.change(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	for _, ok := range []string{"http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8443", "https://kubegate.example.com/"} {
		c := good
		c.PublicURL, _ = url.Parse(ok)
		if _, err := New(c); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}

func TestSafeNext(t *testing.T) {
	tests := []struct{ next, want string }{
		{"/ui/", "/ui/"},
		{"/ui/#/pods?ns=demo", "/ui/#/pods?ns=demo"},
		{"/ui/pods?namespace=demo", "/ui/pods?namespace=demo"},
		{"//evil", ""},
		{"//evil.example/ui/", ""},
		{"https://evil", ""},
		{"https://kubegate.test/ui/", ""},
		{"/ui/../x", ""},
		{"/ui/./x", ""},
		{"/ui/%2e%2e/x", ""},
		{`\\evil`, ""},
		{`/\evil`, ""},
		{`/ui/\evil`, ""},
		{"/ui//evil", ""},
		{"/ui/%2F%2Fevil", ""},
		{"/ui/%5Cevil", ""},
		{"/ui/\tx", ""},
		{"/ui/%0d%0aSet-Cookie:x", ""},
		{"/elsewhere", ""},
		{"/k8s-proxy/api", ""},
		{"javascript:alert(1)", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.next, func(t *testing.T) {
			if got := safeNext(tt.next); got != tt.want {
				t.Fatalf("safeNext(%q) = %q, want %q", tt.next, got, tt.want)
			}
		})
	}
}

func TestSessionInfoWithoutSession(t *testing.T) {
	f := newFixture(t)
	resp := f.browser().do("GET", contract.SessionPath, nil, nil)
	body := read(t, resp)
	var st struct {
		Kind   string `json:"kind"`
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != 401 || st.Kind != "Status" || st.Code != 401 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %s %q", resp.Status, body)
	}
}

// A tight limiter for the rate limit tests.
func tightLimits(c *Config) {
	c.Limits = Limits{PerUser: rate.Every(time.Minute), UserBurst: 2, PerClient: rate.Every(time.Minute), ClientBurst: 4, MaxTracked: 3}
}

// users is the identity source's user lookup over the fixture's directory.
func (f *fixture) users() session.UserLookup {
	return session.UserLookupFunc(func(_ context.Context, name string) (identity.User, bool, error) {
		u, ok := f.dir.UserByName(name)
		return u, ok, nil
	})
}

// FuzzSafeNext: whatever next a login carries, where the browser ends up is this
// origin and a path under the browser prefix. The browser's reading is
// approximated by net/url's reference resolution (RFC 3986 §5.2) plus the WHATWG
// URL standard's treatment of '\' as '/' in special schemes.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/ui/", "/ui/#/pods", "//evil", `/\evil`, "/ui/../x", "/ui/%2e%2e/", "/ui/?next=//evil", "/ui/;x", "/ui/@evil"} {
		f.Add(s)
	}
	base, _ := url.Parse(publicURL + contract.LoginPath)
	f.Fuzz(func(t *testing.T, next string) {
		got := safeNext(next)
		if got == "" {
			return
		}
		u, err := url.Parse(strings.ReplaceAll(got, `\`, "/"))
		if err != nil {
			t.Fatalf("safeNext(%q) = %q does not parse: %v", next, got, err)
		}
		r := base.ResolveReference(u)
		if r.Scheme != "https" || r.Host != "kubegate.test" || !strings.HasPrefix(r.Path, contract.BrowserPrefix) || r.User != nil {
			t.Fatalf("safeNext(%q) = %q leads to %s", next, got, r)
		}
	})
}
