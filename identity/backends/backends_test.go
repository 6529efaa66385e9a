package backends

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spf13/pflag"
	gitlabapi "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

func parse(t *testing.T, args ...string) (Options, error) {
	t.Helper()
	o := DefaultOptions()
	fs := pflag.NewFlagSet("authz", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	return o, o.Validate()
}

func TestFlags(t *testing.T) {
	tests := []flagCase{
		{name: "defaults: the directory, no OIDC, access.md's cache TTLs", check: func(t *testing.T, o Options) {
			if o.Source != SourceDirectory || o.OIDCIssuer != "" || o.CacheTTL != 30*time.Second || o.CacheFailureTTL != 5*time.Second ||
				o.GitLabPATCheck != "admin" || o.OIDCUserID != "lookup" || strings.Join(o.OIDCUsernameClaims, ",") != "nickname,preferred_username" {
				t.Errorf("defaults %+v", o)
			}
		}},
		{name: "gitlab", args: []string{"--identity-source=gitlab", "--gitlab-url=https://gitlab.example.com", "--gitlab-token-file=/run/t",
			"--gitlab-pat-check=self", "--gitlab-timeout=2s", "--gitlab-rate-limit=5"}, check: func(t *testing.T, o Options) {
			if o.GitLabPATCheck != "self" || o.GitLabTimeout != 2*time.Second || o.GitLabRateLimit != 5 {
				t.Errorf("parsed %+v", o)
			}
			// The unauthenticated budget keeps its own defaults.
			if o.GitLabTokenRateLimit != 10 || o.GitLabTokenChecksInFlight != 16 {
				t.Errorf("token budget %v/s, %d in flight; want the defaults 10/s, 16", o.GitLabTokenRateLimit, o.GitLabTokenChecksInFlight)
			}
		}},
		{name: "gitlab token budget", args: []string{"--gitlab-token-rate-limit=3", "--gitlab-token-checks-in-flight=4"}, check: func(t *testing.T, o Options) {
			if o.GitLabTokenRateLimit != 3 || o.GitLabTokenChecksInFlight != 4 || o.GitLabRateLimit != 20 {
				t.Errorf("parsed %+v", o)
			}
		}},
		{name: "zero token rate limit", args: []string{"--gitlab-token-rate-limit=0"}, wantErr: "must not be 0"},
		{name: "zero users rate limit", args: []string{"--gitlab-rate-limit=0"}, wantErr: "must not be 0"},
		{name: "no token checks in flight", args: []string{"--gitlab-token-checks-in-flight=0"}, wantErr: "--gitlab-token-checks-in-flight must be positive"},
		{name: "oidc with claims", args: []string{"--oidc-issuer=https://gitlab.example.com", "--oidc-client-id=kubegate",
			"--oidc-username-claim=preferred_username", "--oidc-username-claim=email", "--oidc-user-id=sub", "--oidc-clock-skew=1m"},
			check: func(t *testing.T, o Options) {
				if strings.Join(o.OIDCUsernameClaims, ",") != "preferred_username,email" || o.OIDCUserID != "sub" || o.OIDCClockSkew != time.Minute {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "caching off", args: []string{"--cache-ttl=0", "--cache-failure-ttl=0"}, check: func(t *testing.T, o Options) {
			if o.CacheTTL != 0 || o.CacheFailureTTL != 0 {
				t.Errorf("TTLs %v %v, want both 0 (caching off)", o.CacheTTL, o.CacheFailureTTL)
			}
		}},
		{name: "gitlab over plain http", args: []string{"--identity-source=gitlab", "--gitlab-url=http://gitlab.example.com", "--gitlab-token-file=/run/t"}, wantErr: "plain http"},
		{name: "gitlab over plain HTTP in capitals", args: []string{"--identity-source=gitlab", "--gitlab-url=HTTP://gitlab.example.com", "--gitlab-token-file=/run/t"}, wantErr: "--gitlab-insecure-http-for-tests"},
		{name: "gitlab over http allowed for tests", args: []string{"--identity-source=gitlab", "--gitlab-url=http://127.0.0.1:8080", "--gitlab-token-file=/run/t", "--gitlab-insecure-http-for-tests"},
			check: func(t *testing.T, o Options) {
				if !o.GitLabInsecureHTTPForTests {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "gitlab without URL and token", args: []string{"--identity-source=gitlab"}, wantErr: "needs --gitlab-url"},
		{name: "gitlab without token file", args: []string{"--identity-source=gitlab", "--gitlab-url=https://g"}, wantErr: "needs --gitlab-token-file"},
		{name: "gitlab flags with the directory", args: []string{"--gitlab-url=https://g"}, wantErr: "need --identity-source=gitlab"},
		{name: "unknown source", args: []string{"--identity-source=ldap"}, wantErr: `--identity-source="ldap"`},
		{name: "unknown PAT check", args: []string{"--gitlab-pat-check=maybe"}, wantErr: `--gitlab-pat-check="maybe"`},
		{name: "issuer without client id", args: []string{"--oidc-issuer=https://i"}, wantErr: "needs --oidc-client-id"},
		{name: "client id without issuer", args: []string{"--oidc-client-id=c"}, wantErr: "needs --oidc-issuer"},
		{name: "unknown user id mode", args: []string{"--oidc-issuer=https://i", "--oidc-client-id=c", "--oidc-user-id=email"}, wantErr: `--oidc-user-id="email"`},
		{name: "huge skew", args: []string{"--oidc-clock-skew=1h"}, wantErr: "between 0 and 5m"},
		{name: "negative TTL", args: []string{"--cache-ttl=-1s"}, wantErr: "must not be negative"},
		{name: "zero cache size", args: []string{"--cache-size=0"}, wantErr: "--cache-size must be positive"},
		{name: "tiny cache bytes", args: []string{"--cache-bytes=1000"}, wantErr: "--cache-bytes must be at least 1048576"},
	}
	runFlagCases(t, tests)
}

func sandboxDirectory(t *testing.T) *directory.Directory {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	d, err := directory.Load(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "sandbox", "directory.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func pat(tok string) identity.Credential {
	return identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: tok}
}

// TestDirectoryWithOIDC: PATs from the directory file, ID tokens from a real OIDC
// provider, their usernames looked up in the directory in service.
func TestDirectoryWithOIDC(t *testing.T) {
	m, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	if _, err := m.Keypair.KeyID(); err != nil {
		t.Fatal(err)
	}
	o, err := parse(t, "--oidc-issuer="+m.Issuer(), "--oidc-client-id="+m.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := Build(context.Background(), o, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if _, _, err := b.Sources(nil); err == nil {
		t.Fatal("the directory source without a directory must fail")
	}
	authn, members, err := b.Sources(sandboxDirectory(t))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	idToken, err := m.Keypair.SignJWT(jwt.MapClaims{"iss": m.Issuer(), "aud": m.ClientID, "sub": "auth0|x", "nickname": "Grace",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		cred   identity.Credential
		want   identity.User
		reason identity.Reason
	}{
		{name: "directory PAT", cred: pat("kg-sandbox-alice-token"), want: identity.User{ID: 1, Username: "alice"}},
		{name: "revoked directory PAT", cred: pat("kg-sandbox-erin-token"), reason: identity.ReasonRevoked},
		{name: "OIDC token, user found in the directory", cred: identity.Credential{Type: identity.AccessOIDCIDToken, Secret: idToken}, want: identity.User{ID: 7, Username: "grace"}},
		{name: "session cookie: nobody's", cred: identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: "s", CSRF: "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok, err := authn.Authenticate(context.Background(), tt.cred)
			switch {
			case tt.reason != "":
				var e *identity.Error
				if ok || !errors.As(err, &e) || e.Reason != tt.reason {
					t.Fatalf("want %s, got %v %v", tt.reason, ok, err)
				}
			case tt.want == identity.User{}:
				if ok || err != nil {
					t.Fatalf("want not mine, got %v %v", ok, err)
				}
			default:
				if !ok || err != nil || id.User != tt.want {
					t.Fatalf("got %+v %v %v, want %+v", id, ok, err, tt.want)
				}
			}
		})
	}
	ms, err := members.Memberships(context.Background(), identity.User{ID: 7, Username: "grace"}, identity.Listed{Groups: []string{"group-2"}})
	if err != nil || len(ms) != 1 || ms[0].AccessLevel != identity.Developer {
		t.Fatalf("memberships from the directory: %+v %v", ms, err)
	}
	if n := testutil.CollectAndCount(reg, "kubegate_identity_cache_requests_total"); n == 0 {
		t.Error("the OIDC cache's metrics are not registered")
	}
}

func TestGitLab(t *testing.T) {
	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-0000000000000000", gitlabtest.Token{ID: 100, UserID: 100, Scopes: []string{"api"}})
	gl.AddToken("glpat-alice-0000000000000000", gitlabtest.Token{ID: 1, UserID: 1, Scopes: []string{"k8s_proxy"}})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("glpat-admin-0000000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parse(t, "--identity-source=gitlab", "--gitlab-url="+gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file="+tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if b.NeedsDirectory() {
		t.Error("GitLab as the source needs no directory")
	}
	authn, members, err := b.Sources(nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		id, ok, err := authn.Authenticate(context.Background(), pat("glpat-alice-0000000000000000"))
		if !ok || err != nil || id.User != (identity.User{ID: 1, Username: "alice"}) {
			t.Fatalf("got %+v %v %v", id, ok, err)
		}
		ms, err := members.Memberships(context.Background(), id.User, identity.Listed{Projects: []string{"group-1/project-1"}})
		if err != nil || len(ms) != 1 || ms[0].AccessLevel != identity.Maintainer {
			t.Fatalf("memberships %+v %v", ms, err)
		}
	}
	if n := gl.Calls("POST /api/v4/admin/token"); n != 1 {
		t.Errorf("token checked %d times, want 1 (cached)", n)
	}
	if n := gl.Calls("GET /api/v4/projects/{id}/members/all/{uid}"); n != 1 {
		t.Errorf("memberships read %d times, want 1 (cached)", n)
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	two := filepath.Join(dir, "two")
	good := filepath.Join(dir, "good")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	_ = os.WriteFile(two, []byte("a b\n"), 0o600)
	_ = os.WriteFile(good, []byte("glpat-x\n"), 0o600)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "missing token file", args: []string{"--identity-source=gitlab", "--gitlab-url=https://g", "--gitlab-token-file=" + filepath.Join(dir, "nope")}, want: "no such file"},
		{name: "empty token file", args: []string{"--identity-source=gitlab", "--gitlab-url=https://g", "--gitlab-token-file=" + empty}, want: "exactly one token"},
		{name: "two tokens", args: []string{"--identity-source=gitlab", "--gitlab-url=https://g", "--gitlab-token-file=" + two}, want: "exactly one token"},
		{name: "relative URL", args: []string{"--identity-source=gitlab", "--gitlab-url=gitlab.example.com", "--gitlab-token-file=" + good}, want: "absolute http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Build(context.Background(), o, nil, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// renumbered is the sandbox directory after a reload that swapped the ids of grace
// (7, developer of group-2) and heidi (8, developer of group-1), or dropped grace.
func renumbered(t *testing.T, edit func(string) string) *directory.Directory {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "sandbox", "directory.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := directory.Parse("renumbered.yaml", []byte(edit(string(data))))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDirectoryReloadRenumbersUsers: an OIDC identity cached under one directory
// is checked against the directory of the snapshot deciding the request, so a
// reload that renumbers users never pairs grace's name with heidi's memberships.
func TestDirectoryReloadRenumbersUsers(t *testing.T) {
	m, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	now := time.Now()
	idToken, err := m.Keypair.SignJWT(jwt.MapClaims{"iss": m.Issuer(), "aud": m.ClientID, "sub": "7", "nickname": "grace",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	grace := identity.Credential{Type: identity.AccessOIDCIDToken, AgentID: 1, Secret: idToken}
	swapped := func(s string) string {
		s = strings.Replace(s, "{id: 7, username: grace}", "{id: 8, username: grace}", 1)
		return strings.Replace(s, "{id: 8, username: heidi}", "{id: 7, username: heidi}", 1)
	}
	gone := func(s string) string {
		return strings.Replace(s, "{id: 7, username: grace}", "{id: 7, username: grace, state: blocked}", 1)
	}
	listed := identity.NewListed([]string{"group-1/project-1", "group-2/project-2"}, []string{"group-2"})

	for _, tt := range []struct {
		name     string
		mode     string
		reloaded func(string) string
		wantUser identity.User // zero: refused with wantReason
		wantRsn  identity.Reason
	}{
		{name: "lookup: grace is found again by name", mode: "lookup", reloaded: swapped, wantUser: identity.User{ID: 8, Username: "grace"}},
		{name: "sub: the token's id and the directory disagree", mode: "sub", reloaded: swapped, wantRsn: identity.ReasonInvalid},
		{name: "lookup: grace is blocked after the reload", mode: "lookup", reloaded: gone, wantRsn: identity.ReasonInactive},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, "--oidc-issuer="+m.Issuer(), "--oidc-client-id="+m.ClientID, "--oidc-user-id="+tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			before, _, err := b.Sources(sandboxDirectory(t))
			if err != nil {
				t.Fatal(err)
			}
			if id, ok, err := before.Authenticate(context.Background(), grace); !ok || err != nil || id.User != (identity.User{ID: 7, Username: "grace"}) {
				t.Fatalf("before the reload: %+v %v %v", id, ok, err)
			}
			// The reload: the cached identity (7, grace) is still in the OIDC cache.
			authn, members, err := b.Sources(renumbered(t, tt.reloaded))
			if err != nil {
				t.Fatal(err)
			}
			id, ok, err := authn.Authenticate(context.Background(), grace)
			if tt.wantUser == (identity.User{}) {
				var e *identity.Error
				if ok || id != nil || !errors.As(err, &e) || e.Reason != tt.wantRsn {
					t.Fatalf("want %s, got %+v %v %v", tt.wantRsn, id, ok, err)
				}
				return
			}
			if !ok || err != nil || id.User != tt.wantUser {
				t.Fatalf("after the reload: %+v %v %v, want %+v", id, ok, err, tt.wantUser)
			}
			ms, err := members.Memberships(context.Background(), id.User, listed)
			if err != nil || len(ms) != 2 || ms[0].Path != "group-2/project-2" || ms[1].Path != "group-2" {
				t.Fatalf("grace's memberships after the reload: %+v %v", ms, err)
			}
			// The stale identity itself is refused by the directory, never answered
			// with heidi's memberships.
			if ms, err := members.Memberships(context.Background(), identity.User{ID: 7, Username: "grace"}, listed); err == nil || len(ms) != 0 {
				t.Fatalf("a stale identity got %+v %v", ms, err)
			}
		})
	}
}

// TestAgentConfigClient: the client agent configurations are read with comes from
// the identity source's settings, its CA file included, and exists only with the
// GitLab identity source.
func TestAgentConfigClient(t *testing.T) {
	// A GitLab behind a private CA, answering the repository files API's HEAD the
	// way https://docs.gitlab.com/api/repository_files/ documents it.
	var token atomic.Value
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token.Store(r.Header.Get("Private-Token"))
		w.Header().Set("X-Gitlab-Blob-Id", "79f7bbd25901e8334750839545a9bd021f0e4c83")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("glpat-service-token-0000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	head := func(t *testing.T, args ...string) error {
		t.Helper()
		o, err := parse(t, append([]string{"--identity-source=gitlab", "--gitlab-url=" + srv.URL, "--gitlab-token-file=" + tokenFile}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		c, ok := b.AgentConfigClient()
		if !ok {
			t.Fatal("no agent configuration client with --identity-source=gitlab")
		}
		ref := "HEAD"
		f, _, err := c.RepositoryFiles.GetFileMetaData(1, ".gitlab/agents/a/config.yaml", &gitlabapi.GetFileMetaDataOptions{Ref: &ref})
		if err == nil && f.BlobID == "" {
			t.Error("no blob id read")
		}
		return err
	}
	t.Run("with --gitlab-ca-file", func(t *testing.T) {
		if err := head(t, "--gitlab-ca-file="+caFile); err != nil {
			t.Fatal(err)
		}
		if token.Load() != "glpat-service-token-0000000" {
			t.Errorf("GitLab saw token %q; want the service token", token.Load())
		}
	})
	t.Run("without it, the private CA is not trusted", func(t *testing.T) {
		if err := head(t); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err %v; want a certificate error", err)
		}
	})
	t.Run("a CA file without a certificate", func(t *testing.T) {
		o, _ := parse(t, "--identity-source=gitlab", "--gitlab-url="+srv.URL, "--gitlab-token-file="+tokenFile, "--gitlab-ca-file="+tokenFile)
		if _, err := Build(context.Background(), o, prometheus.NewRegistry(), nil); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("the directory has none", func(t *testing.T) {
		b, err := Build(context.Background(), DefaultOptions(), prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		if _, ok := b.AgentConfigClient(); ok {
			t.Error("an agent configuration client without GitLab")
		}
	})
	t.Run("--gitlab-ca-file needs the GitLab source", func(t *testing.T) {
		if _, err := parse(t, "--gitlab-ca-file="+caFile); err == nil || !strings.Contains(err.Error(), "--gitlab-ca-file") {
			t.Fatalf("err %v", err)
		}
	})
}

// flagCase is one row of a flag table: the flags, and either the error they must
// give or a check of the options they parse to.
type flagCase struct {
	name    string
	args    []string
	wantErr string
	check   func(t *testing.T, o Options)
}

// runFlagCases parses each case's flags (parse: AddFlags, then Validate).
func runFlagCases(t *testing.T, tests []flagCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
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
