package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, KeyLen)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func writeKeys(t testing.TB, file string, keys ...string) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte("# session keys, current first\n"+strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// users is a fake UserLookup that counts its calls.
type users struct {
	mu    sync.Mutex
	known map[string]identity.User
	err   error
	calls atomic.Int64
}

func newUsers(us ...identity.User) *users {
	u := &users{known: map[string]identity.User{}}
	for _, x := range us {
		u.known[x.Username] = x
	}
	return u
}

func (u *users) LookupUser(_ context.Context, name string) (identity.User, bool, error) {
	u.calls.Add(1)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err != nil {
		return identity.User{}, false, u.err
	}
	x, ok := u.known[name]
	return x, ok, nil
}

// failingRevocations is a store that cannot answer.
type failingRevocations struct{ calls atomic.Int64 }

func (f *failingRevocations) Revoke(context.Context, string, time.Time) error {
	f.calls.Add(1)
	return errors.New("store down")
}
func (f *failingRevocations) Revoked(context.Context, string) (bool, error) {
	f.calls.Add(1)
	return false, errors.New("store down")
}

var alice = identity.User{ID: 7, Username: "alice"}

type fixture struct {
	clock   *clock
	keyFile string
	keys    []string
	m       *Manager
	users   *users
	mem     *Memory
	logs    *bytes.Buffer
}

func newFixture(t testing.TB, opts ...func(*Config)) *fixture {
	t.Helper()
	f := &fixture{clock: newClock(), keyFile: filepath.Join(t.TempDir(), "keys"), users: newUsers(alice), logs: &bytes.Buffer{}}
	f.keys = []string{newKey(t)}
	writeKeys(t, f.keyFile, f.keys...)
	f.mem = NewMemory(f.clock.Now)
	cfg := Config{KeyFile: f.keyFile, Now: f.clock.Now, Revocations: f.mem, Log: slog.New(slog.NewJSONHandler(syncWriter{f.logs, &sync.Mutex{}}, nil))}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
	return f
}

type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// issue logs u in and returns the session and its cookie.
func (f *fixture) issue(t testing.TB, u identity.User) (*Session, *http.Cookie) {
	t.Helper()
	rec := httptest.NewRecorder()
	s, err := f.m.Issue(rec, u, MethodPassword)
	if err != nil {
		t.Fatal(err)
	}
	cs := rec.Result().Cookies()
	if len(cs) != 1 {
		t.Fatalf("Issue set %d cookies, want 1", len(cs))
	}
	return s, cs[0]
}

func cred(value, csrf string) identity.Credential {
	return identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: value, CSRF: csrf}
}

func wantReason(t *testing.T, err error, want identity.Reason) {
	t.Helper()
	var e *identity.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an *identity.Error %s", err, err, want)
	}
	if e.Reason != want {
		t.Fatalf("reason %s (%v), want %s", e.Reason, err, want)
	}
	if !e.Unavailable() && e.Public != identity.Unauthorized {
		t.Errorf("public message %q, want only %q", e.Public, identity.Unauthorized)
	}
}

func TestParseKeys(t *testing.T) {
	raw := make([]byte, KeyLen)
	for i := range raw {
		raw[i] = byte(i)
	}
	std := base64.StdEncoding.EncodeToString(raw)
	url := base64.URLEncoding.EncodeToString(append([]byte{0xfb, 0xff}, raw[2:]...))
	rawURL := base64.RawURLEncoding.EncodeToString(append([]byte{0xfe}, raw[1:]...))
	tests := []struct {
		name    string
		file    string
		wantN   int
		wantErr string
	}{
		{name: "one std key", file: std + "\n", wantN: 1},
		{name: "comments, blanks, url and unpadded alphabets", file: "# current\n\n  " + url + "  \n# previous\n" + rawURL + "\n" + std, wantN: 3},
		{name: "empty", file: "", wantErr: "holds no key"},
		{name: "only comments", file: "# nothing\n\n", wantErr: "holds no key"},
		{name: "short key", file: base64.StdEncoding.EncodeToString(raw[:16]), wantErr: "the key is 16 bytes"},
		{name: "long key", file: base64.StdEncoding.EncodeToString(append(raw, 1)), wantErr: "the key is 33 bytes"},
		{name: "not base64", file: "not a key!\n", wantErr: "not base64"},
		{name: "duplicate", file: std + "\n" + std + "\n", wantErr: "line 2 repeats the key of line 1"},
		{name: "same key in two alphabets is a duplicate", file: std + "\n" + strings.TrimRight(std, "=") + "\n", wantErr: "repeats"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := parseKeys([]byte(tc.file))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "head -c 32 /dev/urandom | base64") {
					t.Errorf("error %q does not say how to make a key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(k.keys) != tc.wantN {
				t.Fatalf("%d keys, want %d", len(k.keys), tc.wantN)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeKeys(t, good, newKey(t))
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no key file", cfg: Config{}, wantErr: "--session-key-file"},
		{name: "missing key file", cfg: Config{KeyFile: filepath.Join(dir, "nope")}, wantErr: "no such file"},
		{name: "idle longer than max age", cfg: Config{KeyFile: good, IdleTimeout: 2 * time.Hour, MaxAge: time.Hour}, wantErr: "longer than its max age"},
		{name: "max age over a week", cfg: Config{KeyFile: good, MaxAge: 8 * 24 * time.Hour}, wantErr: "over a week"},
		{name: "negative idle", cfg: Config{KeyFile: good, IdleTimeout: -time.Second}, wantErr: "positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestWorldReadableKeyFileWarns(t *testing.T) {
	f := newFixture(t)
	if strings.Contains(f.logs.String(), "readable by every user") {
		t.Fatalf("a 0600 key file warned: %s", f.logs)
	}
	file := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(file, []byte(newKey(t)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	if _, err := New(Config{KeyFile: file, Log: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatalf("a world-readable key file is a warning, not an error: %v", err)
	}
	if !strings.Contains(logs.String(), "readable by every user") || !strings.Contains(logs.String(), "chmod 600") {
		t.Fatalf("no warning saying what to do: %s", logs.String())
	}
}

func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	s, c := f.issue(t, alice)

	t.Run("cookie attributes", func(t *testing.T) {
		if c.Name != contract.SessionCookie || c.Path != "/" || c.Domain != "" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
			t.Errorf("cookie %+v: want %s, Path=/, no Domain, Secure, HttpOnly, SameSite=Lax", c, contract.SessionCookie)
		}
		if c.MaxAge != int(DefaultMaxAge/time.Second) {
			t.Errorf("Max-Age %d, want %d (until the absolute expiry)", c.MaxAge, int(DefaultMaxAge/time.Second))
		}
		if !strings.HasPrefix(c.Value, "v1."+keyID(mustDecode(t, f.keys[0]))+".") {
			t.Errorf("cookie value %q does not name the current key", c.Value[:20])
		}
	})
	t.Run("session fields", func(t *testing.T) {
		if len(s.ID) != 22 || len(s.CSRFToken) != 43 {
			t.Errorf("id %d chars, csrf %d chars; want 128 and 256 bits base64url (22, 43)", len(s.ID), len(s.CSRFToken))
		}
		if s.User != alice || s.Method != MethodPassword || !s.IssuedAt.Equal(f.clock.Now()) || !s.ExpiresAt.Equal(f.clock.Now().Add(DefaultMaxAge)) {
			t.Errorf("session %+v", *s)
		}
	})
	t.Run("FromRequest", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/ui/session", nil)
		r.AddCookie(c)
		got, err := f.m.FromRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != s.ID || got.CSRFToken != s.CSRFToken || got.User != s.User || !got.ExpiresAt.Equal(s.ExpiresAt) || !got.RefreshedAt.Equal(s.RefreshedAt) {
			t.Errorf("opened %+v, issued %+v", got.payload(), s.payload())
		}
	})
	t.Run("Authenticator", func(t *testing.T) {
		id, ok, err := f.m.Authenticator(f.users).Authenticate(context.Background(), cred(c.Value, s.CSRFToken))
		if err != nil || !ok {
			t.Fatalf("Authenticate: %v %v", ok, err)
		}
		want := identity.Identity{User: alice, AccessType: identity.AccessSessionCookie, AgentID: 1, Expiry: s.RefreshedAt.Add(DefaultIdleTimeout)}
		if id.User != want.User || id.AccessType != want.AccessType || id.AgentID != want.AgentID || !id.Expiry.Equal(want.Expiry) {
			t.Errorf("identity %+v, want %+v", *id, want)
		}
	})
	t.Run("not mine", func(t *testing.T) {
		calls := f.users.calls.Load()
		for _, typ := range []identity.AccessType{identity.AccessPersonalAccessToken, identity.AccessOIDCIDToken} {
			id, ok, err := f.m.Authenticator(f.users).Authenticate(context.Background(), identity.Credential{Type: typ, Secret: c.Value, CSRF: s.CSRFToken})
			if id != nil || ok || err != nil {
				t.Errorf("%s: (%v, %v, %v), want not mine", typ, id, ok, err)
			}
		}
		if f.users.calls.Load() != calls {
			t.Error("the user lookup was asked for a credential that is not a session")
		}
	})
}

func mustDecode(t testing.TB, k string) []byte {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAttacks tries each way a cookie or its CSRF token can be wrong and checks it
// is refused before the user lookup, except where the lookup is what refuses.
func TestAttacks(t *testing.T) {
	bob := identity.User{ID: 8, Username: "bob"}
	tests := []struct {
		name string
		// make returns the credential to try; it may change the fixture (clock, store, users).
		make       func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential
		want       identity.Reason
		lookupUsed bool // the user lookup is what refuses
	}{
		{name: "truncated", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value[:len(c.Value)-5], s.CSRFToken)
		}},
		{name: "only the header", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value[:15], s.CSRFToken)
		}},
		{name: "wrong version", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred("v2"+c.Value[2:], s.CSRFToken)
		}},
		{name: "no version", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value[3:], s.CSRFToken)
		}},
		{name: "unknown key id", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			other := keyID(mustDecode(t, newKey(t)))
			return cred("v1."+other+c.Value[3+len(other):], s.CSRFToken)
		}},
		{name: "sealed with a key we never had", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			k, err := parseKeys([]byte(newKey(t)))
			if err != nil {
				t.Fatal(err)
			}
			forged, err := seal(k, PurposeSession, []byte(`{"i":"x","u":7,"n":"alice","m":"password","t":1,"r":1,"e":9999999999999,"c":"x"}`))
			if err != nil {
				t.Fatal(err)
			}
			return cred(forged, "x")
		}},
		{name: "another purpose's value (oidc-login) as a session", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			v, err := f.m.SealValue("oidc-login", []byte(`{"i":"x","u":7,"n":"alice","m":"password","t":1,"r":1,"e":9999999999999,"c":"x"}`), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return cred(v, "x")
		}},
		{name: "oversized cookie", want: identity.ReasonInvalid, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value+strings.Repeat("A", MaxSealedLen), s.CSRFToken)
		}},
		{name: "idle expiry", want: identity.ReasonExpired, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			f.clock.Advance(DefaultIdleTimeout)
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "absolute expiry, refreshed all along", want: identity.ReasonExpired, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			cur := s
			for f.clock.Now().Before(s.ExpiresAt) {
				f.clock.Advance(20 * time.Minute)
				rec := httptest.NewRecorder()
				next, err := f.m.Refresh(rec, cur)
				if err != nil {
					break // past the absolute expiry: nothing to refresh
				}
				cur = next
				if next.IdleExpiresAt(DefaultIdleTimeout).After(s.ExpiresAt) || !next.ExpiresAt.Equal(s.ExpiresAt) {
					t.Fatalf("a refresh extended the session past its absolute expiry: %s", next.ExpiresAt)
				}
				c = rec.Result().Cookies()[0]
			}
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "revoked", want: identity.ReasonRevoked, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			if err := f.m.Revoke(context.Background(), httptest.NewRecorder(), s); err != nil {
				t.Fatal(err)
			}
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "CSRF token of another session", want: identity.ReasonCSRF, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			other, _ := f.issue(t, alice)
			return cred(c.Value, other.CSRFToken)
		}},
		{name: "empty CSRF token", want: identity.ReasonCSRF, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value, "")
		}},
		{name: "CSRF token prefix", want: identity.ReasonCSRF, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			return cred(c.Value, s.CSRFToken[:len(s.CSRFToken)-1])
		}},
		{name: "user deleted", want: identity.ReasonInactive, lookupUsed: true, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			delete(f.users.known, "alice")
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "user renumbered (another alice)", want: identity.ReasonInvalid, lookupUsed: true, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			f.users.known["alice"] = identity.User{ID: 99, Username: "alice"}
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "user lookup unavailable: 503", want: identity.ReasonUnavailable, lookupUsed: true, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			f.users.err = identity.SourceUnavailable("gitlab", errors.New("down"))
			return cred(c.Value, s.CSRFToken)
		}},
		{name: "bob's cookie with alice's CSRF", want: identity.ReasonCSRF, make: func(t *testing.T, f *fixture, s *Session, c *http.Cookie) identity.Credential {
			_, bc := f.issue(t, bob)
			return cred(bc.Value, s.CSRFToken)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			s, c := f.issue(t, alice)
			cr := tc.make(t, f, s, c)
			id, ok, err := f.m.Authenticator(f.users).Authenticate(context.Background(), cr)
			if ok || id != nil {
				t.Fatalf("accepted: %+v", id)
			}
			wantReason(t, err, tc.want)
			if used := f.users.calls.Load() > 0; used != tc.lookupUsed {
				t.Errorf("user lookup asked: %v, want %v", used, tc.lookupUsed)
			}
			if strings.Contains(err.Error(), s.CSRFToken) || strings.Contains(err.Error(), s.ID) || strings.Contains(err.Error(), c.Value) {
				t.Errorf("the error carries a secret: %v", err)
			}
		})
	}
}

// TestTamperedAnywhere flips each character of a valid cookie in turn: none opens.
func TestTamperedAnywhere(t *testing.T) {
	f := newFixture(t)
	s, c := f.issue(t, alice)
	a := f.m.Authenticator(f.users)
	for i := range len(c.Value) {
		b := []byte(c.Value)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		if _, ok, err := a.Authenticate(context.Background(), cred(string(b), s.CSRFToken)); ok || err == nil {
			t.Errorf("byte %d changed: accepted (%v)", i, err)
		}
	}
	if n := f.users.calls.Load(); n != 0 {
		t.Errorf("the user lookup was asked %d times for tampered cookies", n)
	}
}

func TestFromRequest(t *testing.T) {
	f := newFixture(t)
	s, c := f.issue(t, alice)
	tests := []struct {
		name    string
		cookies []*http.Cookie
		want    identity.Reason
	}{
		{name: "no cookie", want: identity.ReasonNoCredential},
		{name: "two session cookies", cookies: []*http.Cookie{c, c}, want: identity.ReasonMalformed},
		{name: "empty", cookies: []*http.Cookie{{Name: contract.SessionCookie, Value: ""}}, want: identity.ReasonMalformed},
		{name: "forged", cookies: []*http.Cookie{{Name: contract.SessionCookie, Value: "v1.AAAAAAAAAAA.AAAA"}}, want: identity.ReasonInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/ui/session", nil)
			for _, c := range tc.cookies {
				r.AddCookie(c)
			}
			got, err := f.m.FromRequest(r)
			if got != nil {
				t.Fatalf("opened %v", got)
			}
			var e *identity.Error
			if !errors.As(err, &e) || e.Reason != tc.want {
				t.Fatalf("error %v, want %s", err, tc.want)
			}
		})
	}
	t.Run("revoked", func(t *testing.T) {
		rec := httptest.NewRecorder()
		if err := f.m.Revoke(context.Background(), rec, s); err != nil {
			t.Fatal(err)
		}
		cleared := rec.Result().Cookies()
		if len(cleared) != 1 || cleared[0].Name != contract.SessionCookie || cleared[0].MaxAge >= 0 || cleared[0].Value != "" || cleared[0].Path != "/" {
			t.Errorf("Revoke set %+v, want an expired empty %s cookie at Path=/", cleared, contract.SessionCookie)
		}
		if !strings.Contains(rec.Header().Get("Set-Cookie"), "Max-Age=0") {
			t.Errorf("Set-Cookie %q, want Max-Age=0", rec.Header().Get("Set-Cookie"))
		}
		r := httptest.NewRequest(http.MethodGet, "/ui/session", nil)
		r.AddCookie(c)
		_, err := f.m.FromRequest(r)
		wantReason(t, err, identity.ReasonRevoked)
	})
}

func TestRefresh(t *testing.T) {
	f := newFixture(t)
	s, _ := f.issue(t, alice)
	t.Run("within a minute: unchanged, no cookie", func(t *testing.T) {
		f.clock.Advance(30 * time.Second)
		rec := httptest.NewRecorder()
		got, err := f.m.Refresh(rec, s)
		if err != nil || got != s || len(rec.Result().Cookies()) != 0 {
			t.Fatalf("Refresh: %v %v, %d cookies", got, err, len(rec.Result().Cookies()))
		}
	})
	t.Run("after 20 minutes: idle timer moves, the cookie opens past the old idle expiry", func(t *testing.T) {
		f.clock.Advance(20 * time.Minute)
		rec := httptest.NewRecorder()
		got, err := f.m.Refresh(rec, s)
		if err != nil {
			t.Fatal(err)
		}
		if !got.RefreshedAt.Equal(f.clock.Now()) || !got.ExpiresAt.Equal(s.ExpiresAt) || got.ID != s.ID || got.CSRFToken != s.CSRFToken {
			t.Fatalf("refreshed %+v", got.payload())
		}
		c := rec.Result().Cookies()[0]
		if c.MaxAge != int(s.ExpiresAt.Sub(f.clock.Now())/time.Second) {
			t.Errorf("Max-Age %d, want the time left until the absolute expiry", c.MaxAge)
		}
		f.clock.Advance(25 * time.Minute) // 45 min after issue: the old cookie is idle-expired
		if _, ok, err := f.m.Authenticator(f.users).Authenticate(context.Background(), cred(c.Value, s.CSRFToken)); !ok {
			t.Fatalf("refreshed cookie refused: %v", err)
		}
	})
}

func TestKeyRotation(t *testing.T) {
	f := newFixture(t)
	a := f.m.Authenticator(f.users)
	oldS, oldC := f.issue(t, alice)
	accept := func(c *http.Cookie, csrf string) error {
		_, ok, err := a.Authenticate(context.Background(), cred(c.Value, csrf))
		if ok {
			return nil
		}
		return err
	}

	next := newKey(t)
	writeKeys(t, f.keyFile, next, f.keys[0])
	f.m.reload()
	t.Run("the previous key still opens", func(t *testing.T) {
		if err := accept(oldC, oldS.CSRFToken); err != nil {
			t.Fatal(err)
		}
	})
	newS, newC := f.issue(t, alice)
	t.Run("the new key seals", func(t *testing.T) {
		if !strings.HasPrefix(newC.Value, "v1."+keyID(mustDecode(t, next))+".") {
			t.Fatal("the new session is not sealed with the new current key")
		}
	})
	writeKeys(t, f.keyFile, next)
	f.m.reload()
	t.Run("a removed key no longer opens", func(t *testing.T) {
		err := accept(oldC, oldS.CSRFToken)
		wantReason(t, err, identity.ReasonInvalid)
		if !strings.Contains(err.Error(), "not in the session key file") {
			t.Errorf("error %v does not say the key is gone", err)
		}
		if err := accept(newC, newS.CSRFToken); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a bad new file keeps the keys", func(t *testing.T) {
		if err := os.WriteFile(f.keyFile, []byte("c2hvcnQ=\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f.m.reload()
		if err := accept(newC, newS.CSRFToken); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(f.logs.String(), "the previous keys stay in service") {
			t.Errorf("no log of the refused file: %s", f.logs)
		}
		if strings.Contains(f.logs.String(), next) {
			t.Error("a key was logged")
		}
	})
}

// TestRunWatchesKeyFile rotates through the real file watch.
func TestRunWatchesKeyFile(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	next := newKey(t)
	want := keyID(mustDecode(t, next))
	writeKeys(t, f.keyFile, next, f.keys[0])
	deadline := time.Now().Add(10 * time.Second)
	for f.m.keys.Load().current().id != want {
		if time.Now().After(deadline) {
			t.Fatal("the rotated key file was not picked up within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRevocationsFailClosed(t *testing.T) {
	store := &failingRevocations{}
	f := newFixture(t, func(c *Config) { c.Revocations = store })
	s, c := f.issue(t, alice)
	_, ok, err := f.m.Authenticator(f.users).Authenticate(context.Background(), cred(c.Value, s.CSRFToken))
	if ok {
		t.Fatal("accepted with the revocation store down")
	}
	wantReason(t, err, identity.ReasonUnavailable)
	if f.users.calls.Load() != 0 {
		t.Error("the user lookup was asked although the revocation check failed")
	}
	t.Run("logout with the store down says so and still clears the cookie", func(t *testing.T) {
		rec := httptest.NewRecorder()
		err := f.m.Revoke(context.Background(), rec, s)
		wantReason(t, err, identity.ReasonUnavailable)
		if !strings.Contains(rec.Header().Get("Set-Cookie"), "Max-Age=0") {
			t.Error("the cookie was not cleared")
		}
	})
}

// TestMemoryRestart: a Memory store forgets logouts on restart, so the restarted
// gateway refuses every session issued before it: the logged-out one never reopens.
func TestMemoryRestart(t *testing.T) {
	f := newFixture(t)
	loggedOut, c1 := f.issue(t, alice)
	stillIn, c2 := f.issue(t, alice)
	if err := f.m.Revoke(context.Background(), httptest.NewRecorder(), loggedOut); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	restarted, err := New(Config{KeyFile: f.keyFile, Now: f.clock.Now}) // nil Revocations: a new Memory
	if err != nil {
		t.Fatal(err)
	}
	a := restarted.Authenticator(f.users)
	for _, tc := range []struct {
		name string
		s    *Session
		c    *http.Cookie
	}{{"logged out before the restart", loggedOut, c1}, {"logged in before the restart", stillIn, c2}} {
		t.Run(tc.name, func(t *testing.T) {
			_, ok, err := a.Authenticate(context.Background(), cred(tc.c.Value, tc.s.CSRFToken))
			if ok {
				t.Fatal("accepted after the restart")
			}
			wantReason(t, err, identity.ReasonRevoked)
			if !strings.Contains(err.Error(), "restart of the gateway logs everyone out") {
				t.Errorf("error %v does not say why", err)
			}
		})
	}
	t.Run("a session issued after the restart works", func(t *testing.T) {
		rec := httptest.NewRecorder()
		s, err := restarted.Issue(rec, alice, MethodOIDC)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := a.Authenticate(context.Background(), cred(rec.Result().Cookies()[0].Value, s.CSRFToken)); !ok {
			t.Fatal(err)
		}
	})
}

func TestMemoryBounded(t *testing.T) {
	c := newClock()
	mem := NewMemoryBounded(c.Now, 3)
	ctx := context.Background()
	for i := range 3 {
		if err := mem.Revoke(ctx, fmt.Sprint("s", i), c.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("an already expired revocation is not kept", func(t *testing.T) {
		if err := mem.Revoke(ctx, "past", c.Now().Add(-time.Second)); err != nil || mem.Len() != 3 {
			t.Fatalf("len %d, err %v", mem.Len(), err)
		}
	})
	t.Run("expired entries are dropped to make room", func(t *testing.T) {
		c.Advance(time.Hour)
		if err := mem.Revoke(ctx, "s3", c.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if mem.Len() != 1 {
			t.Fatalf("%d entries, want 1 (the expired three swept)", mem.Len())
		}
		if got, _ := mem.Revoked(ctx, "s0"); got {
			t.Error("an expired revocation still answers")
		}
		if got, _ := mem.Revoked(ctx, "s3"); !got {
			t.Error("s3 not revoked")
		}
	})
	t.Run("full of live entries: forgets them and moves its horizon", func(t *testing.T) {
		before := mem.RememberedSince()
		for _, id := range []string{"s4", "s5", "s6"} {
			if err := mem.Revoke(ctx, id, c.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		if mem.Len() > 3 {
			t.Fatalf("%d entries, bound 3", mem.Len())
		}
		if !mem.RememberedSince().After(c.Now()) || !mem.RememberedSince().After(before) {
			t.Fatalf("horizon %s, want after now %s: every session issued so far is refused", mem.RememberedSince(), c.Now())
		}
	})
	t.Run("through a Manager: a logged-out session never reopens when the store is full", func(t *testing.T) {
		f := newFixture(t)
		f.m.revs = NewMemoryBounded(f.clock.Now, 2)
		a := f.m.Authenticator(f.users)
		var ss []*Session
		var cs []*http.Cookie
		for range 3 {
			s, c := f.issue(t, alice)
			ss, cs = append(ss, s), append(cs, c)
		}
		for _, s := range ss {
			if err := f.m.Revoke(ctx, httptest.NewRecorder(), s); err != nil {
				t.Fatal(err)
			}
		}
		for i := range ss {
			if _, ok, _ := a.Authenticate(ctx, cred(cs[i].Value, ss[i].CSRFToken)); ok {
				t.Errorf("logged-out session %d accepted", i)
			}
		}
	})
}

func TestSealValue(t *testing.T) {
	f := newFixture(t)
	v, err := f.m.SealValue("oidc-login", []byte("state+verifier"), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s, c := f.issue(t, alice)
	tests := []struct {
		name    string
		purpose string
		value   string
		advance time.Duration
		want    string
		wantErr string
	}{
		{name: "opens for its purpose", purpose: "oidc-login", value: v, want: "state+verifier"},
		{name: "not for another purpose", purpose: "other", value: v, wantErr: "does not open"},
		{name: "a session cookie is not an oidc-login value", purpose: "oidc-login", value: c.Value, wantErr: "does not open"},
		{name: "the session purpose is refused", purpose: PurposeSession, value: c.Value, wantErr: "use Issue"},
		{name: "no purpose", purpose: "", value: v, wantErr: "needs a purpose"},
		{name: "expired", purpose: "oidc-login", value: v, advance: 10 * time.Minute, wantErr: "expired"},
		{name: "tampered", purpose: "oidc-login", value: v[:len(v)-2] + "AA", wantErr: "does not open"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.clock.Advance(tc.advance)
			got, err := f.m.OpenValue(tc.purpose, tc.value)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("(%q, %v), want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("(%q, %v), want %q", got, err, tc.want)
			}
		})
	}
	if _, err := f.m.SealValue(PurposeSession, []byte("x"), time.Minute); err == nil {
		t.Error("SealValue sealed for the session purpose")
	}
	_ = s
}

func TestNothingSecretLogged(t *testing.T) {
	f := newFixture(t)
	s, c := f.issue(t, alice)
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("session", "s", *s, "ptr", s)
	out := buf.String() + fmt.Sprintf("%v %+v %#v %s", *s, *s, *s, s) + f.logs.String()
	for what, secret := range map[string]string{"CSRF token": s.CSRFToken, "session id": s.ID, "cookie": c.Value, "key": f.keys[0]} {
		if strings.Contains(out, secret) {
			t.Errorf("the %s appears in: %s", what, out)
		}
	}
	if !strings.Contains(out, s.ID[:8]) || !strings.Contains(out, "alice") {
		t.Errorf("logs do not identify the session at all: %s", out)
	}
}

// TestConcurrency runs logins, checks, refreshes, logouts and key reloads at once
// (run with -race).
func TestConcurrency(t *testing.T) {
	f := newFixture(t)
	a := f.m.Authenticator(f.users)
	ctx := context.Background()
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				rec := httptest.NewRecorder()
				s, err := f.m.Issue(rec, alice, MethodPassword)
				if err != nil {
					failures.Add(1)
					return
				}
				v := rec.Result().Cookies()[0].Value
				if _, ok, _ := a.Authenticate(ctx, cred(v, s.CSRFToken)); !ok {
					failures.Add(1)
				}
				if _, err := f.m.Refresh(httptest.NewRecorder(), s); err != nil {
					failures.Add(1)
				}
				if g%2 == 0 {
					if err := f.m.Revoke(ctx, httptest.NewRecorder(), s); err != nil {
						failures.Add(1)
					}
					if _, ok, _ := a.Authenticate(ctx, cred(v, s.CSRFToken)); ok {
						failures.Add(1)
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			f.m.reload() // same file: the keys stay, the pointer swaps
		}
	}()
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d operations went wrong under concurrency", n)
	}
}
