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
	"kubegate.dev/kubegate/test/cluster"
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
	tests := []flagCase{
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
	runFlagCases(t, tests)
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
	// userCacheTTL is how long the source's user lookup is cached (0: not at all).
	userCacheTTL time.Duration
}

func sessionSources(t *testing.T, gl *gitlabtest.Server) []sessionSource {
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

	glSource := sessionSource{name: "gitlab", alice: identity.User{ID: 1, Username: "alice"}, userCacheTTL: time.Second}
	var glAuthn identity.Authenticator
	glSource.build = func(t *testing.T) (*Backends, identity.Authenticator) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte("glpat-admin-0000000000000000\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// A short cache TTL: a session behind the authentication cache would still
		// be accepted right after its logout; the user lookup is cached this long.
		o, err := parse(t, "--identity-source=gitlab", "--gitlab-url="+gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file="+tokenFile,
			"--session-key-file="+sessionKeyFile(t), "--cache-ttl=1s")
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
	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-0000000000000000", gitlabtest.Token{ID: 100, UserID: 100, Scopes: []string{"api"}})
	for _, src := range sessionSources(t, gl) {
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
			lookups := gl.Calls("GET /api/v4/users")
			for i := range 3 { // several requests: any cache in the way would now hold the success
				id, ok, err := authn.Authenticate(ctx, cred)
				if !ok || err != nil || id.User != src.alice || id.AccessType != identity.AccessSessionCookie || id.AgentID != 1 {
					t.Fatalf("request %d: %+v %v %v", i, id, ok, err)
				}
			}
			if n := gl.Calls("GET /api/v4/users") - lookups; src.name == "gitlab" && n != 1 {
				t.Errorf("%d GitLab user lookups for 3 session requests, want 1 (cached)", n)
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
				// The directory: at once (a new snapshot); GitLab: once the cached
				// user lookup expires (--cache-ttl=1s here).
				deadline := time.Now().Add(src.userCacheTTL + 2*time.Second)
				for {
					_, ok, err := next.Authenticate(ctx, c)
					if !ok {
						var e *identity.Error
						if !errors.As(err, &e) || e.Reason != identity.ReasonInactive {
							t.Fatalf("%v, want %s", err, identity.ReasonInactive)
						}
						break
					}
					if src.userCacheTTL == 0 || time.Now().After(deadline) {
						t.Fatalf("a blocked user's session still accepted")
					}
					time.Sleep(50 * time.Millisecond)
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

func TestSessionStoreFlags(t *testing.T) {
	tests := []flagCase{
		{name: "defaults: memory, the documented prefix, 5s", check: func(t *testing.T, o Options) {
			if o.SessionStore != "memory" || o.SessionEtcdPrefix != "/kubegate/sessions/revoked/" || o.SessionSyncBound != 5*time.Second || len(o.SessionEtcd) != 0 {
				t.Errorf("defaults %q %q %v %v", o.SessionStore, o.SessionEtcdPrefix, o.SessionSyncBound, o.SessionEtcd)
			}
		}},
		{name: "etcd", args: []string{"--session-key-file=/k", "--session-store=etcd", "--session-etcd-endpoints=https://e0:2379,https://e1:2379",
			"--session-etcd-prefix=/x/", "--session-etcd-ca-file=/ca", "--session-etcd-cert-file=/c", "--session-etcd-key-file=/k2", "--session-sync-bound=2s"},
			check: func(t *testing.T, o Options) {
				if strings.Join(o.SessionEtcd, ",") != "https://e0:2379,https://e1:2379" || o.SessionEtcdPrefix != "/x/" || o.SessionSyncBound != 2*time.Second ||
					o.SessionEtcdCAFile != "/ca" || o.SessionEtcdCert != "/c" || o.SessionEtcdKey != "/k2" {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "unknown store", args: []string{"--session-store=redis"}, wantErr: "use memory or etcd"},
		{name: "etcd without endpoints", args: []string{"--session-key-file=/k", "--session-store=etcd"}, wantErr: "needs --session-etcd-endpoints"},
		{name: "etcd without sessions", args: []string{"--session-store=etcd", "--session-etcd-endpoints=http://e:2379"}, wantErr: "needs --session-key-file"},
		{name: "endpoint without scheme", args: []string{"--session-key-file=/k", "--session-store=etcd", "--session-etcd-endpoints=e:2379"}, wantErr: "not an http:// or https:// URL"},
		{name: "cert without key", args: []string{"--session-key-file=/k", "--session-store=etcd", "--session-etcd-endpoints=https://e:2379", "--session-etcd-cert-file=/c"}, wantErr: "go together"},
		{name: "etcd flags with memory", args: []string{"--session-etcd-endpoints=https://e:2379"}, wantErr: "need --session-store=etcd"},
		{name: "relative prefix", args: []string{"--session-key-file=/k", "--session-store=etcd", "--session-etcd-endpoints=https://e:2379", "--session-etcd-prefix=x/"}, wantErr: "must start with /"},
		{name: "sync bound too long", args: []string{"--session-sync-bound=2m"}, wantErr: "between 100ms and 1m"},
	}
	runFlagCases(t, tests)
}

// TestSessionStoreEtcd: two authz replicas built from the flags share their logouts
// through a real etcd: a logout on one is refused on the other through Sources.
func TestSessionStoreEtcd(t *testing.T) {
	if _, err := cluster.EtcdBinary(); err != nil {
		t.Skipf("no etcd binary, so --session-store=etcd is not tested: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := cluster.StartEtcd(ctx, t.TempDir(), cluster.EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	keyFile := sessionKeyFile(t)
	dir := sandboxDirectory(t)
	replica := func() (*Backends, identity.Authenticator) {
		o, err := parse(t, "--session-key-file="+keyFile, "--session-store=etcd", "--session-etcd-endpoints="+e.URL, "--session-sync-bound=1s")
		if err != nil {
			t.Fatal(err)
		}
		b, err := Build(ctx, o, prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
			b.Close()
		})
		authn, _, err := b.Sources(dir)
		if err != nil {
			t.Fatal(err)
		}
		return b, authn
	}
	a, authA := replica()
	_, authB := replica()
	alice := identity.User{ID: 1, Username: "alice"}
	rec := httptest.NewRecorder()
	s, err := a.Sessions.Issue(rec, alice, session.MethodPassword)
	if err != nil {
		t.Fatal(err)
	}
	cred := identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: rec.Result().Cookies()[0].Value, CSRF: s.CSRFToken}
	// Until each replica has read etcd, sessions get 503; then they are accepted.
	for name, authn := range map[string]identity.Authenticator{"A": authA, "B": authB} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, ok, err := authn.Authenticate(ctx, cred)
			if ok {
				break
			}
			var ie *identity.Error
			if !errors.As(err, &ie) || !ie.Unavailable() || time.Now().After(deadline) {
				t.Fatalf("replica %s: %v, want it accepted once it has read etcd (503 before)", name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := a.Sessions.Revoke(ctx, httptest.NewRecorder(), s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second) // the sync bound
	for {
		_, ok, err := authB.Authenticate(ctx, cred)
		if !ok {
			var ie *identity.Error
			if !errors.As(err, &ie) || ie.Reason != identity.ReasonRevoked {
				t.Fatalf("replica B: %v, want %s", err, identity.ReasonRevoked)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replica B still accepts the logged-out session after the sync bound")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSessionStoreEtcdTLS: the --session-etcd-*-file flags reach etcd over mutual
// TLS; without the client certificate, or trusting another CA, the store never
// becomes current and sessions get 503 (fail closed), never an unchecked accept.
func TestSessionStoreEtcdTLS(t *testing.T) {
	if _, err := cluster.EtcdBinary(); err != nil {
		t.Skipf("no etcd binary, so --session-etcd-*-file are not tested: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := cluster.StartEtcd(ctx, t.TempDir(), cluster.EtcdOptions{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	keyFile := sessionKeyFile(t)
	tests := []struct {
		name   string
		args   []string
		accept bool
	}{
		{name: "CA and client certificate", accept: true,
			args: []string{"--session-etcd-ca-file=" + e.CAFile, "--session-etcd-cert-file=" + e.ClientCert, "--session-etcd-key-file=" + e.ClientKey}},
		{name: "no client certificate", args: []string{"--session-etcd-ca-file=" + e.CAFile}},
		{name: "the system roots do not know etcd's CA", args: []string{"--session-etcd-cert-file=" + e.ClientCert, "--session-etcd-key-file=" + e.ClientKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--session-key-file=" + keyFile, "--session-store=etcd", "--session-etcd-endpoints=" + e.URL, "--session-sync-bound=1s"}, tt.args...)
			o, err := parse(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Build(ctx, o, prometheus.NewRegistry(), nil)
			if err != nil {
				t.Fatal(err)
			}
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- b.Run(rctx) }()
			defer func() { rcancel(); <-done; b.Close() }()
			authn, _, err := b.Sources(sandboxDirectory(t))
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			s, err := b.Sessions.Issue(rec, identity.User{ID: 1, Username: "alice"}, session.MethodPassword)
			if err != nil {
				t.Fatal(err)
			}
			cred := identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: rec.Result().Cookies()[0].Value, CSRF: s.CSRFToken}
			deadline := time.Now().Add(3 * time.Second)
			var last error
			for time.Now().Before(deadline) {
				var ok bool
				if _, ok, last = authn.Authenticate(ctx, cred); ok {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			var ie *identity.Error
			switch {
			case tt.accept && last != nil:
				t.Fatalf("not accepted over mutual TLS: %v", last)
			case !tt.accept && (!errors.As(last, &ie) || !ie.Unavailable()):
				t.Fatalf("%v, want 503 (the store cannot reach etcd)", last)
			}
		})
	}
}
