package backends

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
	"kubegate.dev/kubegate/identity/session"
)

func sessionKeyFile(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "session-keys")
	if err := os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestSessionFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, o Options)
	}{
		{name: "defaults: sessions off, 30m idle, 8h absolute", check: func(t *testing.T, o Options) {
			if o.SessionKeyFile != "" || o.SessionIdleTimeout != 30*time.Minute || o.SessionMaxAge != 8*time.Hour {
				t.Errorf("defaults %q %v %v", o.SessionKeyFile, o.SessionIdleTimeout, o.SessionMaxAge)
			}
		}},
		{name: "set", args: []string{"--session-key-file=/run/keys", "--session-idle-timeout=10m", "--session-max-age=24h"}, check: func(t *testing.T, o Options) {
			if o.SessionKeyFile != "/run/keys" || o.SessionIdleTimeout != 10*time.Minute || o.SessionMaxAge != 24*time.Hour {
				t.Errorf("parsed %q %v %v", o.SessionKeyFile, o.SessionIdleTimeout, o.SessionMaxAge)
			}
		}},
		{name: "idle longer than max age", args: []string{"--session-idle-timeout=2h", "--session-max-age=1h"}, wantErr: "must not be longer than --session-max-age"},
		{name: "zero idle", args: []string{"--session-idle-timeout=0"}, wantErr: "must both be positive"},
		{name: "negative max age", args: []string{"--session-max-age=-1h"}, wantErr: "must both be positive"},
		{name: "max age over a week", args: []string{"--session-max-age=169h", "--session-idle-timeout=1h"}, wantErr: "at most 168h"},
		{name: "a week is allowed", args: []string{"--session-max-age=168h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, o)
			}
		})
	}
}

func TestSessionsOff(t *testing.T) {
	b, err := Build(context.Background(), DefaultOptions(), prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if b.Sessions != nil {
		t.Fatal("sessions on without --session-key-file")
	}
	if err := b.Run(context.Background()); err != nil {
		t.Fatalf("Run with nothing to run: %v", err)
	}
	authn, _, err := b.Sources(sandboxDirectory(t))
	if err != nil {
		t.Fatal(err)
	}
	id, ok, err := authn.Authenticate(context.Background(), identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: "v1.x.y", CSRF: "c"})
	if id != nil || ok || err != nil {
		t.Fatalf("a session cookie without sessions: (%v, %v, %v), want not mine (the gateway then says it does not accept session_cookie)", id, ok, err)
	}
}

func TestSessionBuildErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(bad, []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parse(t, "--session-key-file="+bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), o, prometheus.NewRegistry(), nil); err == nil || !strings.Contains(err.Error(), "--session-key-file") ||
		!strings.Contains(err.Error(), "head -c 32 /dev/urandom | base64") {
		t.Fatalf("error %v, want one naming the flag and saying how to make a key", err)
	}
}

// sessionSource is one way to build the backends with sessions on, and how it
// makes a user inactive.
type sessionSource struct {
	name    string
	build   func(t *testing.T) (*Backends, identity.Authenticator)
	alice   identity.User
	disable func(t *testing.T) identity.Authenticator // blocks alice; returns the chain of the new snapshot
}

func sessionSources(t *testing.T) []sessionSource {
	dirSource := sessionSource{name: "directory", alice: identity.User{ID: 1, Username: "alice"}}
	var dirBackends *Backends
	dirSource.build = func(t *testing.T) (*Backends, identity.Authenticator) {
		o, err := parse(t, "--session-key-file="+sessionKeyFile(t))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		dirBackends = b
		authn, _, err := b.Sources(sandboxDirectory(t))
		if err != nil {
			t.Fatal(err)
		}
		return b, authn
	}
	dirSource.disable = func(t *testing.T) identity.Authenticator {
		authn, _, err := dirBackends.Sources(renumbered(t, func(s string) string {
			return strings.Replace(s, "username: alice", "username: alice, state: blocked", 1) // the users line, with or without a password_hash
		}))
		if err != nil {
			t.Fatal(err)
		}
		return authn
	}

	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-0000000000000000", gitlabtest.Token{ID: 100, UserID: 100, Scopes: []string{"api"}})
	glSource := sessionSource{name: "gitlab", alice: identity.User{ID: 1, Username: "alice"}}
	var glAuthn identity.Authenticator
	glSource.build = func(t *testing.T) (*Backends, identity.Authenticator) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte("glpat-admin-0000000000000000\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := parse(t, "--identity-source=gitlab", "--gitlab-url="+gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file="+tokenFile,
			"--session-key-file="+sessionKeyFile(t))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		glAuthn, _, err = b.Sources(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b, glAuthn
	}
	glSource.disable = func(t *testing.T) identity.Authenticator {
		gl.SetUserState(1, "blocked")
		t.Cleanup(func() { gl.SetUserState(1, "active") })
		return glAuthn
	}
	return []sessionSource{dirSource, glSource}
}

// TestSessionsThroughSources: the session authenticator is first in the chain and
// outside the identity cache, so a logout is refused at once (the cache TTL is the
// default 30s) and a blocked user is refused on the next request.
func TestSessionsThroughSources(t *testing.T) {
	for _, src := range sessionSources(t) {
		t.Run(src.name, func(t *testing.T) {
			b, authn := src.build(t)
			if b.Sessions == nil {
				t.Fatal("no session manager with --session-key-file")
			}
			ctx := context.Background()
			login := func(t *testing.T) (*session.Session, identity.Credential) {
				rec := httptest.NewRecorder()
				s, err := b.Sessions.Issue(rec, src.alice, session.MethodPassword)
				if err != nil {
					t.Fatal(err)
				}
				return s, identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: rec.Result().Cookies()[0].Value, CSRF: s.CSRFToken}
			}
			s, cred := login(t)
			for i := range 3 { // several requests: any cache in the way would now hold the success
				id, ok, err := authn.Authenticate(ctx, cred)
				if !ok || err != nil || id.User != src.alice || id.AccessType != identity.AccessSessionCookie || id.AgentID != 1 {
					t.Fatalf("request %d: %+v %v %v", i, id, ok, err)
				}
			}
			t.Run("a revoked session is refused at once", func(t *testing.T) {
				if err := b.Sessions.Revoke(ctx, httptest.NewRecorder(), s); err != nil {
					t.Fatal(err)
				}
				_, ok, err := authn.Authenticate(ctx, cred)
				var e *identity.Error
				if ok || !errors.As(err, &e) || e.Reason != identity.ReasonRevoked {
					t.Fatalf("after logout: %v %v, want %s", ok, err, identity.ReasonRevoked)
				}
			})
			t.Run("a CSRF token of another session is refused", func(t *testing.T) {
				_, c1 := login(t)
				_, c2 := login(t)
				c1.CSRF = c2.CSRF
				_, ok, err := authn.Authenticate(ctx, c1)
				var e *identity.Error
				if ok || !errors.As(err, &e) || e.Reason != identity.ReasonCSRF {
					t.Fatalf("%v %v, want %s", ok, err, identity.ReasonCSRF)
				}
			})
			t.Run("a blocked user is refused on the next request", func(t *testing.T) {
				_, c := login(t)
				if _, ok, err := authn.Authenticate(ctx, c); !ok {
					t.Fatal(err)
				}
				next := src.disable(t)
				_, ok, err := next.Authenticate(ctx, c)
				var e *identity.Error
				if ok || !errors.As(err, &e) || e.Reason != identity.ReasonInactive {
					t.Fatalf("%v %v, want %s", ok, err, identity.ReasonInactive)
				}
			})
			t.Run("PATs still work behind it", func(t *testing.T) {
				if src.name != "directory" {
					t.Skip("the GitLab chain's PATs are TestGitLab's")
				}
				id, ok, err := authn.Authenticate(ctx, pat("kg-sandbox-alice-token"))
				if !ok || err != nil || id.User != src.alice {
					t.Fatalf("%+v %v %v", id, ok, err)
				}
			})
		})
	}
}

// TestBackendsRunWatchesKeys: Run runs the key file watch until ctx ends.
func TestBackendsRunWatchesKeys(t *testing.T) {
	file := sessionKeyFile(t)
	o, err := parse(t, "--session-key-file="+file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	rec := httptest.NewRecorder()
	s, err := b.Sessions.Issue(rec, identity.User{ID: 1, Username: "alice"}, session.MethodPassword)
	if err != nil {
		t.Fatal(err)
	}
	value := rec.Result().Cookies()[0].Value
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	// Replace the only key: once the watch has swapped it in, the old cookie no longer opens.
	newKey := make([]byte, 32)
	if _, err := rand.Read(newKey); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file+".new", []byte(base64.StdEncoding.EncodeToString(newKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".new", file); err != nil {
		t.Fatal(err)
	}
	authn, _, err := b.Sources(sandboxDirectory(t))
	if err != nil {
		t.Fatal(err)
	}
	cred := identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: value, CSRF: s.CSRFToken}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok, _ := authn.Authenticate(context.Background(), cred); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the key file change was not picked up within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
