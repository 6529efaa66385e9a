package extauthz

// The Check service over a real gRPC connection with the identity backends of
// identity/backends: the GitLab backend (against gitlabtest's stand-in GitLab, which
// follows GitLab's API documentation; a real GitLab cannot run here) behind the cache,
// and OIDC ID tokens from a real OIDC provider (mockoidc) with the directory.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"kubegate.dev/kubegate/identity/backends"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/loadgen"
	"kubegate.dev/kubegate/test/testkit"
)

const (
	glAdminToken = "glpat-kubegate-service-000000"
	glAliceToken = "glpat-alice-kubectl-000000000"
)

// sandboxGitLab is the stand-in GitLab with the sandbox's users, groups, projects and
// memberships, an administrator service token and GitLab tokens for sandbox users.
func sandboxGitLab(t testing.TB) *gitlabtest.Server {
	t.Helper()
	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken(glAdminToken, gitlabtest.Token{ID: 100, UserID: 100, Name: "kubegate", Scopes: []string{"api"}})
	k8s := []string{"k8s_proxy"}
	gl.AddToken(glAliceToken, gitlabtest.Token{ID: 1, UserID: 1, Name: "kubectl", Scopes: k8s})
	gl.AddToken("glpat-bob-kubectl-00000000000", gitlabtest.Token{ID: 2, UserID: 2, Name: "kubectl", Scopes: k8s})
	gl.AddToken("glpat-erin-kubectl-0000000000", gitlabtest.Token{ID: 5, UserID: 5, Name: "kubectl", Scopes: k8s, Revoked: true})
	gl.AddToken("glpat-frank-readapi-000000000", gitlabtest.Token{ID: 6, UserID: 6, Name: "ci", Scopes: []string{"read_api"}})
	gl.AddToken("glpat-judy-kubectl-0000000000", gitlabtest.Token{ID: 10, UserID: 10, Name: "kubectl", Scopes: k8s, ExpiresAt: "2020-01-01"})
	return gl
}

// backendsFixture serves Check with identity backends built from flags, as
// `kubegate authz` does.
type backendsFixture struct {
	client authv3.AuthorizationClient
	reg    *prometheus.Registry
	logs   *syncBuffer // the Check service's JSON log
}

func startWithBackends(t testing.TB, dir *directory.Directory, args ...string) *backendsFixture {
	t.Helper()
	o := backends.DefaultOptions()
	fs := pflag.NewFlagSet("authz", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := backends.Build(context.Background(), o, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	authn, members, err := b.Sources(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.LoadAgentConfig(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), agent, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv, err := NewServer(agent, &Snapshot{Engine: engine, Authenticator: authn, Memberships: members},
		slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &backendsFixture{client: serve(t, srv), reg: reg, logs: logs}
}

func gitlabArgs(t testing.TB, gl *gitlabtest.Server, extra ...string) []string {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "gitlab-token")
	if err := os.WriteFile(tokenFile, []byte(glAdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return append([]string{"--identity-source=gitlab", "--gitlab-url=" + gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file=" + tokenFile,
		"--gitlab-rate-limit=-1"}, extra...)
}

func (f *backendsFixture) check(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	resp, err := f.client.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check returned a gRPC error: %v", err)
	}
	return resp
}

func (f *backendsFixture) misses() float64 {
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "kubegate_identity_cache_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["cache"] == "authentication" && labels["result"] == "miss" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestGitLabBackendOverGRPC(t *testing.T) {
	gl := sandboxGitLab(t)
	f := startWithBackends(t, nil, gitlabArgs(t, gl, "--gitlab-timeout=1s")...)
	tests := []struct {
		name     string
		token    string
		wantCode int // 0 = allowed
		wantMsg  string
	}{
		{name: "maintainer of a listed project", token: glAliceToken},
		{name: "reporter only", token: "glpat-bob-kubectl-00000000000", wantCode: 403},
		{name: "revoked in GitLab", token: "glpat-erin-kubectl-0000000000", wantCode: 401, wantMsg: "Unauthorized"},
		{name: "without k8s_proxy", token: "glpat-frank-readapi-000000000", wantCode: 401, wantMsg: "Unauthorized"},
		{name: "expired", token: "glpat-judy-kubectl-0000000000", wantCode: 401, wantMsg: "Unauthorized"},
		{name: "unknown to GitLab", token: "glpat-nobody-000000000000000", wantCode: 401, wantMsg: "Unauthorized"},
		{name: "not shaped like a GitLab token", token: "glpat-a:b:c/d", wantCode: 401, wantMsg: "Unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.check(t, checkRequest("GET", podsPath, pat(tt.token)))
			if tt.wantCode == 0 {
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				return
			}
			d := denied(t, resp)
			// The message says no more than Unauthorized (the service prefixes its name).
			if d.code != tt.wantCode || (tt.wantMsg != "" && !strings.HasSuffix(d.message, ": "+tt.wantMsg) && d.message != tt.wantMsg) {
				t.Fatalf("got %+v, want %d %q", d, tt.wantCode, tt.wantMsg)
			}
			if strings.Contains(d.message, tt.token) {
				t.Errorf("the denial repeats the token")
			}
		})
	}
	t.Run("GitLab failing: 503, not cached", func(t *testing.T) {
		gl.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		})
		tok := "glpat-new-token-during-outage"
		for range 2 {
			d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(tok))))
			if d.code != 503 || !strings.Contains(d.message, "identity source (GitLab) is unavailable") {
				t.Fatalf("got %+v", d)
			}
		}
		gl.SetFault(nil)
		// alice is still served from the cache during the outage's aftermath.
		if resp := f.check(t, checkRequest("GET", podsPath, pat(glAliceToken))); resp.GetOkResponse() == nil {
			t.Fatalf("cached alice refused: %v", resp)
		}
	})
	defer func() {
		// Every token above, accepted or refused, stays out of the log; the log is not empty.
		logs := f.logs.String()
		if !strings.Contains(logs, `"msg":"decision"`) {
			t.Errorf("no decision logged: %s", logs)
		}
		for _, tok := range []string{glAliceToken, glAdminToken, "glpat-erin-kubectl-0000000000", "glpat-new-token-during-outage", "glpat-another-new-token-0000", "glpat-a:b:c/d"} {
			if strings.Contains(logs, tok) {
				t.Errorf("the log contains token %s", tok)
			}
		}
	}()
	t.Run("GitLab hanging: 503 within the timeout", func(t *testing.T) {
		gl.SetFault(gl.Hang)
		defer gl.SetFault(nil)
		d := denied(t, f.check(t, checkRequest("GET", podsPath, pat("glpat-another-new-token-0000"))))
		if d.code != 503 {
			t.Fatalf("got %+v", d)
		}
	})
}

// TestHundredConcurrentChecksOneGitLabCall: 100 concurrent Checks over gRPC with the
// same new token cause exactly one token check, one user lookup and one membership
// read per listed entry at GitLab.
func TestHundredConcurrentChecksOneGitLabCall(t *testing.T) {
	gl := sandboxGitLab(t)
	release := make(chan struct{})
	gl.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/v4/admin/token" {
			<-release // hold the first GitLab call until every Check is waiting
		}
		return false
	})
	f := startWithBackends(t, nil, gitlabArgs(t, gl, "--gitlab-timeout=20s")...)
	const n = 100
	var wg sync.WaitGroup
	resps := make([]*authv3.CheckResponse, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			resps[i], errs[i] = f.client.Check(context.Background(), checkRequest("GET", podsPath, pat(glAliceToken)))
		})
	}
	for i := 0; f.misses() < n; i++ {
		if i > 2000 {
			t.Fatalf("only %v of %d Checks reached the cache", f.misses(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || resps[i].GetOkResponse() == nil {
			t.Fatalf("Check %d: %v %v", i, resps[i], errs[i])
		}
	}
	for _, c := range []struct {
		pattern string
		want    int
	}{
		{"POST /api/v4/admin/token", 1},
		{"GET /api/v4/users/{id}", 1},
		{"GET /api/v4/projects/{id}/members/all/{uid}", 2}, // two listed projects
		{"GET /api/v4/groups/{id}/members/all/{uid}", 2},   // two listed groups
	} {
		if got := gl.Calls(c.pattern); got != c.want {
			t.Errorf("%s: %d calls, want %d", c.pattern, got, c.want)
		}
	}
}

// TestOIDCWithDirectoryOverGRPC: an ID token from a real OIDC provider, in both bearer
// forms, for a user of the directory.
func TestOIDCWithDirectoryOverGRPC(t *testing.T) {
	m, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	if _, err := m.Keypair.KeyID(); err != nil {
		t.Fatal(err)
	}
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	f := startWithBackends(t, dir, "--oidc-issuer="+m.Issuer(), "--oidc-client-id="+m.ClientID)
	now := time.Now()
	sign := func(user string, exp time.Time) string {
		tok, err := m.Keypair.SignJWT(jwt.MapClaims{"iss": m.Issuer(), "aud": m.ClientID, "sub": "idp-" + user,
			"nickname": user, "iat": now.Unix(), "exp": exp.Unix()})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name     string
		auth     string
		wantCode int
	}{
		{name: "bare ID token", auth: sign("alice", now.Add(time.Minute))},
		{name: "oidc:<agent>: form", auth: "oidc:1:" + sign("alice", now.Add(time.Minute))},
		{name: "oidc: form naming another agent", auth: "oidc:2:" + sign("alice", now.Add(time.Minute)), wantCode: 401},
		{name: "expired", auth: sign("alice", now.Add(-time.Hour)), wantCode: 401},
		{name: "not a directory user", auth: sign("zoe", now.Add(time.Minute)), wantCode: 401},
		{name: "member without a qualifying role", auth: sign("bob", now.Add(time.Minute)), wantCode: 403},
		{name: "directory PAT still works", auth: "pat:1:" + aliceToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.check(t, checkRequest("GET", podsPath, bearer(tt.auth)))
			if tt.wantCode == 0 {
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				return
			}
			if d := denied(t, resp); d.code != tt.wantCode {
				t.Fatalf("got %+v, want %d", d, tt.wantCode)
			}
		})
	}
}

// BenchmarkCheckGitLab measures Check over gRPC with the GitLab backend: a cache hit
// (the same token again) and a miss served by the in-test GitLab (caching off: every
// Check makes one token check, one user lookup and four membership reads over HTTP on
// loopback), each against the no-op floor measured in the same run.
func BenchmarkCheckGitLab(b *testing.B) {
	gl := sandboxGitLab(b)
	floor := serve(b, testkit.NoopAuthz{})
	cached := startWithBackends(b, nil, gitlabArgs(b, gl)...)
	uncached := startWithBackends(b, nil, gitlabArgs(b, gl, "--cache-ttl=0", "--cache-failure-ttl=0")...)
	req := checkRequest("GET", podsPath, pat(glAliceToken))
	for _, c := range []authv3.AuthorizationClient{cached.client, uncached.client} {
		if resp, err := c.Check(context.Background(), req); err != nil || resp.GetOkResponse() == nil {
			b.Fatal(resp, err)
		}
	}
	for _, callers := range []int{1, 8} {
		var base loadgen.Result
		b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
			base = loadgen.Run(b, callers, func() error {
				_, err := floor.Check(context.Background(), req)
				return err
			})
		})
		for _, tc := range []struct {
			name   string
			client authv3.AuthorizationClient
		}{{"cache-hit", cached.client}, {"cache-miss-gitlab", uncached.client}} {
			b.Run(fmt.Sprintf("c=%d/%s", callers, tc.name), func(b *testing.B) {
				loadgen.Run(b, callers, func() error {
					resp, err := tc.client.Check(context.Background(), req)
					if err == nil && resp.GetOkResponse() == nil {
						err = fmt.Errorf("denied: %v", resp.GetDeniedResponse().GetBody())
					}
					return err
				}).Compare(b, base)
			})
		}
	}
}
