package login

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
)

// A good password: a session cookie with every attribute contract.SessionCookie
// names, a 303 to the Dashboard, and a session SessionPath then answers.
func TestPasswordLogin(t *testing.T) {
	f := newFixture(t)
	b := f.browser()
	resp := b.postLogin(url.Values{"username": {"alice"}, "password": {"alice-password"}}, sameOrigin)
	read(t, resp)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != contract.DashboardPath {
		t.Fatalf("got %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	var raw string
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(sc, contract.SessionCookie+"=") {
			raw = sc
		}
	}
	c := sessionCookie(resp)
	if c == nil || raw == "" {
		t.Fatalf("no session cookie in %q", resp.Header.Values("Set-Cookie"))
	}
	attrs := map[string]bool{}
	for _, a := range strings.Split(raw, ";")[1:] {
		name, _, _ := strings.Cut(strings.TrimSpace(a), "=")
		attrs[strings.ToLower(name)] = true
	}
	tests := []struct {
		name string
		ok   bool
	}{
		{"Path=/", c.Path == "/"},
		{"host-only: no Domain", c.Domain == "" && !attrs["domain"]},
		{"Secure", c.Secure && attrs["secure"]},
		{"HttpOnly", c.HttpOnly && attrs["httponly"]},
		{"SameSite=Lax", c.SameSite == http.SameSiteLaxMode && strings.Contains(raw, "SameSite=Lax")},
		{"Max-Age within the session's max age", c.MaxAge > 0 && time.Duration(c.MaxAge)*time.Second <= f.sessions.MaxAge()},
		{"a value", len(c.Value) > 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.ok {
				t.Fatalf("Set-Cookie %q", raw)
			}
		})
	}
	info, code := b.session()
	if code != 200 || info.User != "alice" || info.CSRFToken == "" || len(info.Agents) != 1 || info.Agents[0].ID != 1 ||
		!info.ExpiresAt.After(f.clk.Now()) || info.IdleExpiresAt.After(info.ExpiresAt) {
		t.Fatalf("session %d %+v", code, info)
	}
	// The session the cookie carries authenticates a Kubernetes call too.
	id, ok, err := f.sessions.Authenticator(f.users()).Authenticate(context.Background(),
		identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: c.Value, CSRF: info.CSRFToken})
	if err != nil || !ok || id.User.Username != "alice" {
		t.Fatalf("authenticator: %v %v %v", id, ok, err)
	}
}

// Every refused password reads the same: same status, same page, no cookie, and
// the password check was made (no early answer for an unknown user).
func TestPasswordRefusalsIdentical(t *testing.T) {
	f := newFixture(t)
	tests := []struct{ name, user, pw string }{
		{"wrong password", "alice", "alice-passwort"},
		{"unknown user", "zed", "alice-password"},
		{"blocked user, right password", "mallory", "mallory-password"},
		{"user without a password", "nopass", "anything"},
		{"empty password", "alice", ""},
		{"another user's password", "alice", "bob-password"},
	}
	var first string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.passwords.calls.Load()
			resp := f.browser().postLogin(url.Values{"username": {tt.user}, "password": {tt.pw}}, sameOrigin)
			body := read(t, resp)
			if resp.StatusCode != http.StatusUnauthorized || sessionCookie(resp) != nil || !strings.Contains(body, "Wrong username or password.") {
				t.Fatalf("got %s cookie=%v\n%s", resp.Status, sessionCookie(resp), body)
			}
			if f.passwords.calls.Load() != before+1 {
				t.Fatal("the password was not checked")
			}
			if first == "" {
				first = body
			} else if body != first {
				t.Fatalf("the page differs from the first refusal's:\n%s\n---\n%s", body, first)
			}
		})
	}
}

// Login CSRF: a form post not from the gateway's own page is refused before
// the password is checked.
func TestPasswordLoginOrigin(t *testing.T) {
	f := newFixture(t)
	form := url.Values{"username": {"alice"}, "password": {"alice-password"}}
	ct := "application/x-www-form-urlencoded"
	tests := []struct {
		name string
		hdr  http.Header
		want int
	}{
		{"same origin", http.Header{"Origin": {publicURL}, "Content-Type": {ct}}, 303},
		{"same origin by Referer only", http.Header{"Referer": {publicURL + "/ui/login?next=/ui/"}, "Content-Type": {ct}}, 303},
		{"no Origin, no Referer", http.Header{"Content-Type": {ct}}, 403},
		{"foreign Origin", http.Header{"Origin": {"https://evil.example"}, "Content-Type": {ct}}, 403},
		{"foreign Origin, our Referer", http.Header{"Origin": {"https://evil.example"}, "Referer": {publicURL + "/ui/login"}, "Content-Type": {ct}}, 403},
		{"Origin null", http.Header{"Origin": {"null"}, "Content-Type": {ct}}, 403},
		{"plain http of our host", http.Header{"Origin": {"http://kubegate.test"}, "Content-Type": {ct}}, 403},
		{"another port", http.Header{"Origin": {publicURL + ":8443"}, "Content-Type": {ct}}, 403},
		{"a subdomain", http.Header{"Origin": {"https://x.kubegate.test"}, "Content-Type": {ct}}, 403},
		{"a suffix", http.Header{"Origin": {"https://kubegate.test.evil.example"}, "Content-Type": {ct}}, 403},
		{"two Origins", http.Header{"Origin": {publicURL, "https://evil.example"}, "Content-Type": {ct}}, 403},
		{"foreign Referer", http.Header{"Referer": {"https://evil.example/kubegate.test"}, "Content-Type": {ct}}, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.passwords.calls.Load()
			resp := f.browser().postLogin(form, tt.hdr)
			read(t, resp)
			if resp.StatusCode != tt.want {
				t.Fatalf("got %s, want %d", resp.Status, tt.want)
			}
			if tt.want == 403 && (sessionCookie(resp) != nil || f.passwords.calls.Load() != before) {
				t.Fatal("a refused form was checked or made a session")
			}
		})
	}
}

// Too many attempts per username, or per client, are 429 with Retry-After; the
// buckets refill with time; the maps stay bounded.
func TestPasswordRateLimits(t *testing.T) {
	f := newFixture(t, tightLimits, func(c *Config) { c.ClientAddr = func(r *http.Request) string { return r.Header.Get("X-Test-Client") } })
	attempt := func(client, user, pw string) *http.Response {
		hdr := sameOrigin.Clone()
		hdr.Set("X-Test-Client", client)
		resp := f.browser().postLogin(url.Values{"username": {user}, "password": {pw}}, hdr)
		read(t, resp)
		return resp
	}
	t.Run("per username", func(t *testing.T) {
		for i, client := range []string{"c1", "c2"} { // burst 2, from two clients
			if resp := attempt(client, "bob", "guess"); resp.StatusCode != 401 {
				t.Fatalf("attempt %d: %s", i, resp.Status)
			}
		}
		before := f.passwords.calls.Load()
		resp := attempt("c3", "BOB", "bob-password") // the right password, a fresh client: still limited
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" || sessionCookie(resp) != nil || f.passwords.calls.Load() != before {
			t.Fatalf("third attempt: %s Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
		}
		f.clk.Advance(time.Minute)
		if resp := attempt("c3", "bob", "bob-password"); resp.StatusCode != 303 {
			t.Fatalf("after a minute: %s", resp.Status)
		}
	})
	t.Run("per client", func(t *testing.T) {
		f.clk.Advance(10 * time.Minute)
		for i := range 4 {
			if resp := attempt("flood", "user"+string(rune('a'+i)), "x"); resp.StatusCode != 401 {
				t.Fatalf("attempt %d: %s", i, resp.Status)
			}
		}
		if resp := attempt("flood", "alice", "alice-password"); resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("fifth attempt: %s", resp.Status)
		}
		if resp := attempt("other", "alice", "alice-password"); resp.StatusCode != 303 {
			t.Fatalf("another client: %s", resp.Status)
		}
	})
	if n := f.h.users.len(); n > 3 {
		t.Fatalf("%d username buckets kept, bound 3", n)
	}
	if n := f.h.clients.len(); n > 3 {
		t.Fatalf("%d client buckets kept, bound 3", n)
	}
}

// A busy password checker is a 503 with Retry-After, not a wrong password.
func TestPasswordBusy(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Passwords = passwordsFunc(func(context.Context, string, string) (identity.User, error) {
			return identity.User{}, identity.Busy("directory password check", errors.New("4 running"))
		})
	})
	resp := f.browser().postLogin(url.Values{"username": {"alice"}, "password": {"alice-password"}}, sameOrigin)
	body := read(t, resp)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || sessionCookie(resp) != nil || !strings.Contains(body, "Try again in a few seconds") {
		t.Fatalf("got %s\n%s", resp.Status, body)
	}
}

type passwordsFunc func(ctx context.Context, u, p string) (identity.User, error)

func (f passwordsFunc) CheckPassword(ctx context.Context, u, p string) (identity.User, error) {
	return f(ctx, u, p)
}

// next goes along only when it is a path of the browser prefix on this origin.
func TestPasswordLoginNext(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Limits = Limits{UserBurst: 100} })
	tests := []struct{ next, want string }{
		{"/ui/#/pods", "/ui/#/pods"},
		{"//evil", "/ui/"},
		{"https://evil", "/ui/"},
		{"/ui/../x", "/ui/"},
		{`\\evil`, "/ui/"},
		{`/\evil`, "/ui/"},
		{"/ui/%2F%2Fevil", "/ui/"},
	}
	for _, tt := range tests {
		t.Run(tt.next, func(t *testing.T) {
			resp := f.browser().postLogin(url.Values{"username": {"alice"}, "password": {"alice-password"}, "next": {tt.next}}, sameOrigin)
			read(t, resp)
			if resp.StatusCode != 303 || resp.Header.Get("Location") != tt.want {
				t.Fatalf("got %s to %q, want %q", resp.Status, resp.Header.Get("Location"), tt.want)
			}
		})
	}
}

// An oversized form is refused before anything is checked.
func TestPasswordLoginBodyBounded(t *testing.T) {
	f := newFixture(t)
	before := f.passwords.calls.Load()
	resp := f.browser().do("POST", contract.LoginPath, strings.NewReader("username=alice&password="+strings.Repeat("x", 1<<20)), sameOrigin)
	read(t, resp)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || f.passwords.calls.Load() != before {
		t.Fatalf("got %s", resp.Status)
	}
}

func TestForwardedClient(t *testing.T) {
	tests := []struct {
		name string
		xff  []string
		want string
	}{
		{"no header: the connection", nil, "192.0.2.1"},
		{"Envoy's entry", []string{"203.0.113.7"}, "203.0.113.7"},
		{"the client's own entries are left of Envoy's", []string{"10.0.0.1, 198.51.100.2,203.0.113.7"}, "203.0.113.7"},
		{"the last header line", []string{"10.0.0.1", "203.0.113.7"}, "203.0.113.7"},
		{"not an address", []string{"203.0.113.7, evil"}, "192.0.2.1"},
		{"IPv6", []string{"2001:db8::1"}, "2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "/", nil)
			r.RemoteAddr = "192.0.2.1:5000"
			r.Header["X-Forwarded-For"] = tt.xff
			if got := ForwardedClient(r); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
