package usertoken

// The GitLab these tests talk to is gitlabtest's stand-in with its user API enabled
// (POST /user/personal_access_tokens, GET /user, GET /projects/:id/cluster_agents/:id,
// GET /personal_access_tokens/:id), which follows GitLab's API
// documentation as listed in gitlabtest: a real GitLab cannot run here.

import (
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
	"kubegate.dev/kubegate/identity/tokencache"
)

var testNow = time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)

const (
	aliceAPI     = "glpat-alice-api-000000000000"
	aliceReadAPI = "glpat-alice-readapi-00000000"
	bobAPI       = "glpat-bob-api-00000000000000"
	serviceToken = "glpat-kubegate-service-00000"
)

type fixture struct {
	srv *gitlabtest.Server
	api *gitlabtest.UserAPI
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	s := gitlabtest.New(testNow)
	t.Cleanup(s.Close)
	s.Sandbox()
	s.AddUser(gitlabtest.User{ID: 100, Username: "kubegate-bot"})
	s.AddToken(aliceAPI, gitlabtest.Token{ID: 1, UserID: 1, Name: "cli", Scopes: []string{"api"}})
	s.AddToken(aliceReadAPI, gitlabtest.Token{ID: 2, UserID: 1, Name: "ro", Scopes: []string{"read_api"}})
	s.AddToken(bobAPI, gitlabtest.Token{ID: 3, UserID: 2, Name: "cli", Scopes: []string{"api"}})
	s.AddToken(serviceToken, gitlabtest.Token{ID: 4, UserID: 100, Name: "kubegate", Scopes: []string{"read_api"}})
	api := s.EnableUserAPI()
	api.AddAgent("group-1/project-1", 1, "sandbox-agent")
	return fixture{srv: s, api: api}
}

func (f fixture) source(t *testing.T, mod func(*GitLabConfig)) *GitLab {
	t.Helper()
	cfg := GitLabConfig{URL: f.srv.URL, InsecureHTTPForTests: true, Token: aliceAPI, Now: func() time.Time { return testNow }}
	if mod != nil {
		mod(&cfg)
	}
	g, err := NewGitLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestCreatedTokenPassesTheGateway creates a token the way get-token does, wraps it
// in the ExecCredential, and has the gateway's side (credential parsing and the GitLab
// backend) accept what kubectl would send.
func TestCreatedTokenPassesTheGateway(t *testing.T) {
	f := newFixture(t)
	tok, err := f.source(t, nil).Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	created := f.api.Created()
	if len(created) != 1 || created[0] != tok.Secret {
		t.Fatalf("GitLab created %d tokens (%v), want exactly the returned one", len(created), created)
	}
	info, _ := f.api.Token(tok.Secret)
	if info.UserID != 1 || len(info.Scopes) != 1 || info.Scopes[0] != "k8s_proxy" || !strings.HasPrefix(info.Name, "kubegate-k8s-proxy-") {
		t.Fatalf("created token = %+v; want alice's, k8s_proxy only, named kubegate-k8s-proxy-*", info)
	}
	if want := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC); !tok.ExpiresAt.Equal(want) || info.ExpiresAt != "2025-06-02" {
		t.Fatalf("expiry = %v (GitLab: %s), want the end of the current UTC day %v", tok.ExpiresAt, info.ExpiresAt, want)
	}

	out, err := ExecCredential(1, tok, "")
	if err != nil {
		t.Fatal(err)
	}
	var cred struct {
		Status struct{ Token string } `json:"status"`
	}
	if err := json.Unmarshal(out, &cred); err != nil {
		t.Fatal(err)
	}
	c, err := identity.ParseCredential(identity.Header{"authorization": {"Bearer " + cred.Status.Token}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := gitlab.New(gitlab.Config{URL: f.srv.URL, Token: serviceToken, PATCheck: gitlab.PATCheckSelf, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	id, ok, err := backend.Authenticate(t.Context(), c)
	if err != nil || !ok || id.User.Username != "alice" || id.AgentID != 1 {
		t.Fatalf("gateway authenticated %+v ok=%v err=%v; want alice on agent 1", id, ok, err)
	}
}

func TestExpiryDuration(t *testing.T) {
	tests := []struct {
		name     string
		now      time.Time
		duration time.Duration
		want     string
	}{
		{"default: end of today", testNow, 0, "2025-06-02"},
		{"one day", testNow, 24 * time.Hour, "2025-06-02"},
		{"36h still ends at a day boundary", testNow, 36 * time.Hour, "2025-06-02"},
		{"two days", testNow, 48 * time.Hour, "2025-06-03"},
		{"a week", testNow, 7 * 24 * time.Hour, "2025-06-08"},
		{"three minutes before midnight: tomorrow's end", time.Date(2025, 6, 1, 23, 57, 0, 0, time.UTC), 24 * time.Hour, "2025-06-03"},
		{"just after midnight", time.Date(2025, 6, 2, 0, 1, 0, 0, time.UTC), 24 * time.Hour, "2025-06-03"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.srv.SetNow(tt.now)
			tok, err := f.source(t, func(c *GitLabConfig) {
				c.ExpiryDuration = tt.duration
				c.Now = func() time.Time { return tt.now }
			}).Token(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			info, _ := f.api.Token(tok.Secret)
			if info.ExpiresAt != tt.want || tok.ExpiresAt.Format(time.DateOnly) != tt.want {
				t.Fatalf("expires_at = %s (returned %v), want %s", info.ExpiresAt, tok.ExpiresAt, tt.want)
			}
			if !tok.ExpiresAt.Add(-ExpiryBuffer).After(tt.now) {
				t.Fatalf("token expiring %v is handed out at %v already inside the %s buffer", tok.ExpiresAt, tt.now, ExpiryBuffer)
			}
		})
	}
}

func TestGitLabErrors(t *testing.T) {
	closed := gitlabtest.New(testNow)
	closedURL := closed.URL
	closed.Close()

	tests := []struct {
		name  string
		mod   func(f fixture, c *GitLabConfig)
		want  []string
		calls int // POST /user/personal_access_tokens reaching GitLab
	}{
		{"unknown GitLab token", func(_ fixture, c *GitLabConfig) { c.Token = "glpat-nobody-knows-this-0000" },
			[]string{"401 Unauthorized", "does not accept your GitLab token", "GITLAB_TOKEN"}, 1},
		{"token without the api scope", func(_ fixture, c *GitLabConfig) { c.Token = aliceReadAPI },
			[]string{"403 Forbidden", "insufficient_scope", "api scope"}, 1},
		{"GitLab unreachable", func(_ fixture, c *GitLabConfig) { c.URL = closedURL },
			[]string{"cannot reach GitLab at " + closedURL, "--gitlab-url"}, 0},
		{"GitLab failing", func(f fixture, _ *GitLabConfig) {
			f.srv.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
				w.WriteHeader(http.StatusInternalServerError)
				return true
			})
		}, []string{"500 Internal Server Error", "try again"}, 0},
		{"GitLab hangs", func(f fixture, c *GitLabConfig) {
			f.srv.SetFault(f.srv.Hang)
			c.Timeout = 200 * time.Millisecond
		}, []string{"cannot reach GitLab", "no answer within 200ms"}, 0},
		{"lifetime beyond GitLab's limit", func(_ fixture, c *GitLabConfig) { c.ExpiryDuration = 400 * 24 * time.Hour },
			[]string{"400 Bad Request", "expires_at", "shorter --token-expiry-duration"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			g := f.source(t, func(c *GitLabConfig) { tt.mod(f, c) })
			_, err := g.Token(t.Context())
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, secret := range []string{aliceAPI, aliceReadAPI} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q contains the user's token", err)
				}
			}
			if n := f.api.Calls("POST /api/v4/user/personal_access_tokens"); n != tt.calls {
				t.Errorf("%d create calls, want %d", n, tt.calls)
			}
			if len(f.api.Created()) != 0 {
				t.Error("a token was created")
			}
		})
	}
}

func TestNewGitLabRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  GitLabConfig
		want string
	}{
		{"no URL", GitLabConfig{Token: "x"}, "must be GitLab's address"},
		{"not http", GitLabConfig{URL: "ftp://gitlab.example.com", Token: "x"}, "must be GitLab's address"},
		{"no token", GitLabConfig{URL: "https://gitlab.example.com"}, "no GitLab token configured"},
		{"plain http", GitLabConfig{URL: "http://gitlab.example.com", Token: "x"}, "is plain http"},
		{"plain HTTP in capitals", GitLabConfig{URL: "HTTP://gitlab.example.com/", Token: "x"}, "--gitlab-insecure-http-for-tests"},
		{"too short", GitLabConfig{URL: "https://gitlab.example.com", Token: "x", ExpiryDuration: 12 * time.Hour}, "at least 24h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewGitLab(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNormalizeGitLabURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://gitlab.example.com", "https://gitlab.example.com"},
		{"https://gitlab.example.com/", "https://gitlab.example.com"},
		{"https://gitlab.example.com/api/v4", "https://gitlab.example.com"},
		{"https://gitlab.example.com/api/v4/", "https://gitlab.example.com"},
		{" https://example.com/gitlab/ ", "https://example.com/gitlab"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeGitLabURL(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeGitLabURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "gitlab.example.com", "https://user:pw@gitlab.example.com", "https://gitlab.example.com/?private_token=x", "unix:///x"} {
		t.Run("bad "+bad, func(t *testing.T) {
			if _, err := NormalizeGitLabURL(bad); err == nil {
				t.Fatalf("NormalizeGitLabURL(%q) accepted", bad)
			}
		})
	}
}

func TestCachedTokens(t *testing.T) {
	type step struct {
		now     time.Time
		revoke  bool // revoke the last token in GitLab first
		wantNew bool
	}
	endOfDay := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		checkRevoked bool
		steps        []step
	}{
		{"reused until five minutes before expiry", false, []step{
			{now: testNow, wantNew: true},
			{now: testNow.Add(time.Hour)},
			{now: endOfDay.Add(-6 * time.Minute)},
			{now: endOfDay.Add(-4 * time.Minute), wantNew: true},
			{now: endOfDay.Add(time.Hour)},
		}},
		{"a revoked token is reused without --check-revoked", false, []step{
			{now: testNow, wantNew: true},
			{now: testNow.Add(time.Minute), revoke: true},
		}},
		{"--check-revoked replaces a revoked token", true, []step{
			{now: testNow, wantNew: true},
			{now: testNow.Add(time.Minute)},
			{now: testNow.Add(2 * time.Minute), revoke: true, wantNew: true},
			{now: testNow.Add(3 * time.Minute)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			cache := &tokencache.Cache{Dir: filepath.Join(t.TempDir(), "cache")}
			var now time.Time
			cache.Now = func() time.Time { return now }
			g := f.source(t, func(c *GitLabConfig) {
				c.Cache = cache
				c.CheckRevoked = tt.checkRevoked
				c.Now = func() time.Time { return now }
			})
			var last string
			for i, st := range tt.steps {
				now = st.now
				f.srv.SetNow(st.now)
				if st.revoke {
					f.srv.Revoke(last)
				}
				before := len(f.api.Created())
				tok, err := g.Token(t.Context())
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				created := len(f.api.Created()) - before
				if st.wantNew != (created == 1) || created > 1 {
					t.Fatalf("step %d: %d tokens created, want new=%v", i, created, st.wantNew)
				}
				if !st.wantNew && tok.Secret != last {
					t.Fatalf("step %d: got a different token without a new one being created", i)
				}
				last = tok.Secret
			}
			asked := f.api.Calls("GET /api/v4/personal_access_tokens/{id}")
			if tt.checkRevoked && asked == 0 {
				t.Fatal("--check-revoked never asked GitLab")
			}
			if !tt.checkRevoked && asked != 0 {
				t.Fatal("GitLab was asked about the cached token without --check-revoked")
			}
		})
	}

	t.Run("users do not share tokens", func(t *testing.T) {
		f := newFixture(t)
		cache := &tokencache.Cache{Dir: filepath.Join(t.TempDir(), "cache"), Now: func() time.Time { return testNow }}
		a, err := f.source(t, func(c *GitLabConfig) { c.Cache = cache }).Token(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		b, err := f.source(t, func(c *GitLabConfig) { c.Cache = cache; c.Token = bobAPI }).Token(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if a.Secret == b.Secret {
			t.Fatal("bob got alice's cached token")
		}
		if info, _ := f.api.Token(b.Secret); info.UserID != 2 {
			t.Fatalf("bob's token belongs to user %d", info.UserID)
		}
	})

	t.Run("--check-revoked with GitLab down is an error", func(t *testing.T) {
		f := newFixture(t)
		cache := &tokencache.Cache{Dir: filepath.Join(t.TempDir(), "cache"), Now: func() time.Time { return testNow }}
		g := f.source(t, func(c *GitLabConfig) { c.Cache = cache; c.CheckRevoked = true })
		if _, err := g.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
		f.srv.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
			w.WriteHeader(http.StatusBadGateway)
			return true
		})
		_, err := g.Token(t.Context())
		if err == nil || !strings.Contains(err.Error(), "--check-revoked") || !strings.Contains(err.Error(), "502") {
			t.Fatalf("err = %v, want a 502 on the revocation check", err)
		}
	})
}

func TestCurrentUserAndAgent(t *testing.T) {
	f := newFixture(t)
	g := f.source(t, nil)
	user, err := g.CurrentUser(t.Context())
	if err != nil || user != "alice" {
		t.Fatalf("CurrentUser = %q, %v; want alice", user, err)
	}
	a, err := g.CheckAgent(t.Context(), "group-1/project-1", 1)
	if err != nil || a.Name != "sandbox-agent" || a.Project != "group-1/project-1" || a.ID != 1 {
		t.Fatalf("CheckAgent = %+v, %v", a, err)
	}
	tests := []struct {
		name    string
		token   string
		project string
		agent   int64
	}{
		{"unknown agent", aliceAPI, "group-1/project-1", 7},
		{"unknown project", aliceAPI, "group-9/nothing", 1},
		{"a project where the user is not a developer", bobAPI, "group-1/project-1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := f.source(t, func(c *GitLabConfig) { c.Token = tt.token })
			_, err := g.CheckAgent(t.Context(), tt.project, tt.agent)
			if !errors.Is(err, ErrAgentNotFound) || !strings.Contains(err.Error(), "Operate > Kubernetes clusters") {
				t.Fatalf("err = %v, want ErrAgentNotFound saying where to look", err)
			}
		})
	}
	t.Run("bad token", func(t *testing.T) {
		g := f.source(t, func(c *GitLabConfig) { c.Token = "glpat-wrong-00000000000000" })
		if _, err := g.CurrentUser(t.Context()); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("err = %v, want a 401 explanation", err)
		}
	})
}
