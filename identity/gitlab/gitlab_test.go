package gitlab

// The GitLab these tests talk to is gitlabtest's stand-in, which implements the
// endpoints as GitLab's API documentation describes them for GitLab 17.8–18.x (the
// pages are listed in gitlabtest's package comment): a real GitLab cannot run here.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
	"kubegate.dev/kubegate/test/testkit"
)

var testNow = time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)

const (
	adminToken  = "glpat-service-admin-000000000"
	readerToken = "glpat-service-reader-00000000"
	aliceToken  = "glpat-alice-k8s-000000000000"
)

// newGitLab starts a stand-in GitLab with the sandbox's users, groups and projects,
// an administrator (root) and a non-administrator service user, and a token for
// several sandbox users.
func newGitLab(t testing.TB) *gitlabtest.Server {
	t.Helper()
	s := gitlabtest.New(testNow)
	t.Cleanup(s.Close)
	s.Sandbox()
	s.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	s.AddUser(gitlabtest.User{ID: 101, Username: "kubegate-bot"})
	s.AddToken(adminToken, gitlabtest.Token{ID: 1000, UserID: 100, Name: "kubegate", Scopes: []string{"api", "admin_mode"}})
	s.AddToken(readerToken, gitlabtest.Token{ID: 1001, UserID: 101, Name: "kubegate", Scopes: []string{"read_api"}})
	k8s := []string{"k8s_proxy"}
	s.AddToken(aliceToken, gitlabtest.Token{ID: 1, UserID: 1, Name: "kubectl", Scopes: k8s, ExpiresAt: "2025-12-31"})
	s.AddToken("glpat-bob-k8s-00000000000000", gitlabtest.Token{ID: 2, UserID: 2, Name: "kubectl", Scopes: k8s})
	s.AddToken("glpat-erin-revoked-000000000", gitlabtest.Token{ID: 5, UserID: 5, Name: "kubectl", Scopes: k8s, Revoked: true})
	s.AddToken("glpat-frank-readapi-00000000", gitlabtest.Token{ID: 6, UserID: 6, Name: "ci", Scopes: []string{"read_api"}})
	s.AddToken("glpat-judy-expired-000000000", gitlabtest.Token{ID: 10, UserID: 10, Name: "kubectl", Scopes: k8s, ExpiresAt: "2025-06-30"})
	s.AddToken("glpat-judy-expires-today-000", gitlabtest.Token{ID: 11, UserID: 10, Name: "kubectl", Scopes: k8s, ExpiresAt: "2025-07-01"})
	s.AddToken("glpat-judy-expires-tomorrow0", gitlabtest.Token{ID: 12, UserID: 10, Name: "kubectl", Scopes: k8s, ExpiresAt: "2025-07-02"})
	s.AddToken("glpat-mallory-blocked-000000", gitlabtest.Token{ID: 13, UserID: 11, Name: "kubectl", Scopes: k8s})
	s.AddDeployToken("gldt-deploy-token-0000000000")
	return s
}

func newBackend(t testing.TB, s *gitlabtest.Server, check PATCheck, mod ...func(*Config)) *Backend {
	t.Helper()
	cfg := Config{URL: s.URL, Token: adminToken, PATCheck: check, Timeout: 2 * time.Second, RateLimit: -1, TokenRateLimit: -1,
		Now: func() time.Time { return testNow }}
	if check == PATCheckSelf {
		cfg.Token = readerToken
	}
	for _, m := range mod {
		m(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pat(tok string) identity.Credential {
	return identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 7, Secret: tok}
}

// checkRejection asserts a 401-style rejection with the given reason that does not
// mention the token.
func checkRejection(t *testing.T, err error, want identity.Reason, secret string) {
	t.Helper()
	var e *identity.Error
	if !errors.As(err, &e) {
		t.Fatalf("want *identity.Error with reason %s, got %v", want, err)
	}
	if e.Reason != want {
		t.Fatalf("reason %s, want %s (%v)", e.Reason, want, e)
	}
	if want != identity.ReasonUnavailable && e.Public != identity.Unauthorized {
		t.Errorf("public message %q, want %q", e.Public, identity.Unauthorized)
	}
	if want == identity.ReasonUnavailable && !strings.Contains(e.Public, "identity source (GitLab) is unavailable") {
		t.Errorf("public message %q does not say the identity source is unavailable", e.Public)
	}
	if secret != "" && strings.Contains(e.Error(), secret) {
		t.Errorf("error %q contains the token", e.Error())
	}
}

func TestAuthenticate(t *testing.T) {
	s := newGitLab(t)
	tests := []struct {
		name      string
		cred      identity.Credential
		wantUser  string
		wantID    int64
		wantExp   string          // the identity's expiry: the token's expires_at date ("" none)
		admin     identity.Reason // with --gitlab-pat-check=admin ("" = accepted)
		self      identity.Reason // with --gitlab-pat-check=self: GitLab's authentication refuses these with 401
		notMine   bool
		noGitLab  bool // refused before GitLab is asked
		otherUser bool
	}{
		{name: "valid token", cred: pat(aliceToken), wantUser: "alice", wantID: 1, wantExp: "2025-12-31"},
		{name: "valid token without expiry", cred: pat("glpat-bob-k8s-00000000000000"), wantUser: "bob", wantID: 2},
		{name: "expires tomorrow", cred: pat("glpat-judy-expires-tomorrow0"), wantUser: "judy", wantID: 10, wantExp: "2025-07-02"},
		{name: "revoked", cred: pat("glpat-erin-revoked-000000000"), admin: identity.ReasonRevoked, self: identity.ReasonInvalid},
		{name: "expired", cred: pat("glpat-judy-expired-000000000"), admin: identity.ReasonExpired, self: identity.ReasonInvalid},
		{name: "expires today at 00:00 UTC", cred: pat("glpat-judy-expires-today-000"), admin: identity.ReasonExpired, self: identity.ReasonInvalid},
		{name: "without k8s_proxy scope", cred: pat("glpat-frank-readapi-00000000"), admin: identity.ReasonScope, self: identity.ReasonScope},
		{name: "blocked user", cred: pat("glpat-mallory-blocked-000000"), admin: identity.ReasonInactive, self: identity.ReasonInvalid},
		{name: "unknown glpat", cred: pat("glpat-nobody-000000000000000"), admin: identity.ReasonInvalid, self: identity.ReasonInvalid},
		{name: "unknown token type", cred: pat("abcdefghijklmnopqrstuvwxyz"), admin: identity.ReasonInvalid, self: identity.ReasonInvalid},
		{name: "deploy token looks like a token but is no PAT", cred: pat("gldt-deploy-token-0000000000"), admin: identity.ReasonInvalid, self: identity.ReasonInvalid},
		{name: "token with a space", cred: pat("glpat-abc def"), admin: identity.ReasonInvalid, self: identity.ReasonInvalid, noGitLab: true},
		{name: "token with a slash", cred: pat("glpat-abc/../../admin"), admin: identity.ReasonInvalid, self: identity.ReasonInvalid, noGitLab: true},
		{name: "token of 513 bytes", cred: pat("glpat-" + strings.Repeat("a", 507)), admin: identity.ReasonInvalid, self: identity.ReasonInvalid, noGitLab: true},
		{name: "oidc is not mine", cred: identity.Credential{Type: identity.AccessOIDCIDToken, Secret: "a.b.c"}, notMine: true},
		{name: "session is not mine", cred: identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: aliceToken, CSRF: "x"}, notMine: true},
	}
	for _, check := range []PATCheck{PATCheckAdmin, PATCheckSelf} {
		t.Run(string(check), func(t *testing.T) {
			b := newBackend(t, s, check)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					before := s.TotalCalls()
					id, ok, err := b.Authenticate(context.Background(), tt.cred)
					want := tt.admin
					if check == PATCheckSelf {
						want = tt.self
					}
					switch {
					case tt.notMine:
						if id != nil || ok || err != nil {
							t.Fatalf("want not mine, got %+v %v %v", id, ok, err)
						}
						if s.TotalCalls() != before {
							t.Errorf("GitLab was asked about a credential that is not a PAT")
						}
					case want != "":
						if id != nil || ok {
							t.Fatalf("accepted %+v, want %s", id, want)
						}
						checkRejection(t, err, want, tt.cred.Secret)
						if tt.noGitLab && s.TotalCalls() != before {
							t.Errorf("GitLab was asked about a token that cannot be one")
						}
					default:
						if err != nil || !ok {
							t.Fatalf("want accepted, got %v %v", ok, err)
						}
						wantID := identity.Identity{User: identity.User{ID: tt.wantID, Username: tt.wantUser},
							AccessType: identity.AccessPersonalAccessToken, AgentID: 7}
						if tt.wantExp != "" {
							// Caches must not keep the identity past 00:00 UTC of that day.
							wantID.Expiry, _ = time.Parse(time.DateOnly, tt.wantExp)
						}
						if *id != wantID {
							t.Fatalf("got %+v, want %+v", *id, wantID)
						}
					}
				})
			}
		})
	}
}

// TestSelfCheckSendsOnlyTheUsersToken shows that with --gitlab-pat-check=self the
// token check is authenticated by the user's token alone, never by the service token,
// and that the admin check sends the user's token in the body, never in a header.
func TestTokenPlacement(t *testing.T) {
	s := newGitLab(t)
	var mu sync.Mutex
	seen := map[string][]string{}
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		seen[r.Method+" "+r.URL.Path] = append(seen[r.Method+" "+r.URL.Path], r.Header.Get("Private-Token")+"|"+r.Header.Get("Authorization")+"|"+r.URL.RawQuery)
		return false
	})
	for _, check := range []PATCheck{PATCheckAdmin, PATCheckSelf} {
		b := newBackend(t, s, check)
		if _, ok, err := b.Authenticate(context.Background(), pat(aliceToken)); !ok || err != nil {
			t.Fatalf("%s: %v", check, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := seen["GET /api/v4/personal_access_tokens/self"]; len(got) != 1 || got[0] != aliceToken+"||" {
		t.Errorf("self-inform request carried %q, want only the user's token", got)
	}
	if got := seen["POST /api/v4/admin/token"]; len(got) != 1 || got[0] != adminToken+"||" {
		t.Errorf("admin token request carried %q, want only the service token in a header", got)
	}
	for path, vs := range seen {
		if path == "GET /api/v4/personal_access_tokens/self" {
			continue
		}
		for _, v := range vs {
			if strings.Contains(v, aliceToken) {
				t.Errorf("%s carried the user's token in a header or the query", path)
			}
		}
	}
}

// TestUnavailable covers a GitLab that fails: every failure is a 503 whose message
// says the identity source is unavailable, within the configured timeout, and never
// an acceptance.
func TestUnavailable(t *testing.T) {
	status := func(code int, body string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = w.Write([]byte(body))
			return true
		}
	}
	on := func(path string, f func(w http.ResponseWriter, r *http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			return strings.HasPrefix(r.URL.Path, path) && f(w, r)
		}
	}
	huge := func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"user_id": 1, "name": "`))
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for range 40 { // 2.5 MiB, more than the 1 MiB bound
			if _, err := w.Write(chunk); err != nil {
				return true
			}
		}
		return true
	}
	// hang is filled in per server below.
	var hang func(w http.ResponseWriter, r *http.Request) bool
	hanging := func(w http.ResponseWriter, r *http.Request) bool { return hang(w, r) }
	tests := []struct {
		name  string
		check PATCheck
		fault func(w http.ResponseWriter, r *http.Request) bool
		mod   func(*Config)
		calls int    // GitLab requests expected (0: don't check)
		warm  string // a token checked first, to use up a budget
	}{
		{name: "500 on the token check", fault: status(500, `{"message":"500 Internal Server Error"}`), calls: 1},
		{name: "502 is retried once, then 503", fault: status(502, `<html>bad gateway</html>`), calls: 2},
		{name: "503 on self-inform", check: PATCheckSelf, fault: status(503, ``), calls: 2},
		{name: "429 is not retried", fault: status(429, `{"message":"Retry later"}`), calls: 1},
		{name: "malformed JSON", fault: status(200, `{"user_id": 1, "revoked": fal`), calls: 1},
		{name: "JSON of the wrong type", fault: status(200, `{"user_id": "one", "revoked": false, "scopes": ["k8s_proxy"]}`), calls: 1},
		{name: "not JSON at all", fault: status(200, `<!DOCTYPE html><title>Sign in</title>`), calls: 1},
		{name: "answer larger than 1 MiB", fault: huge, calls: 1},
		{name: "hanging GitLab", fault: hanging, mod: func(c *Config) { c.Timeout = 300 * time.Millisecond }},
		{name: "redirect to a login page", fault: func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, "https://elsewhere.example/users/sign_in", http.StatusFound)
			return true
		}, calls: 1},
		{name: "users endpoint fails", fault: on("/api/v4/users/", status(500, `{}`))},
		{name: "users endpoint hangs", fault: on("/api/v4/users/", hanging), mod: func(c *Config) { c.Timeout = 300 * time.Millisecond }},
		{name: "user answer malformed", fault: on("/api/v4/users/", status(200, `{"id": 1, "username": 5}`))},
		{name: "user answer for another user", fault: on("/api/v4/users/", status(200, `{"id": 2, "username": "bob", "state": "active"}`))},
		{name: "expires_at is not a date", fault: status(200, `{"user_id": 1, "revoked": false, "scopes": ["k8s_proxy"], "expires_at": "soon"}`)},
		{name: "service token is not an administrator's", mod: func(c *Config) { c.Token = readerToken }, calls: 1},
		{name: "service token unknown", mod: func(c *Config) { c.Token = "glpat-wrong" }, calls: 1},
		{name: "rate limit wait exceeds the timeout", calls: 1, warm: "glpat-nobody-000000000000000", mod: func(c *Config) {
			// One token check a second: after another unknown token's check, alice's
			// would have to wait about a second, longer than the operation may take.
			c.TokenRateLimit, c.Timeout = 1, 300*time.Millisecond
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newGitLab(t)
			hang = s.Hang
			s.SetFault(tt.fault)
			check := tt.check
			if check == "" {
				check = PATCheckAdmin
			}
			b := newBackend(t, s, check, func(c *Config) {
				if tt.mod != nil {
					tt.mod(c)
				}
			})
			if tt.warm != "" {
				if _, ok, _ := b.Authenticate(context.Background(), pat(tt.warm)); ok {
					t.Fatalf("%s accepted", tt.warm)
				}
			}
			id, ok, err := b.Authenticate(context.Background(), pat(aliceToken))
			if ok || id != nil {
				t.Fatalf("accepted %+v while GitLab fails", id)
			}
			checkRejection(t, err, identity.ReasonUnavailable, aliceToken)
			if tt.calls != 0 && s.TotalCalls() != tt.calls {
				t.Errorf("GitLab saw %d requests, want %d", s.TotalCalls(), tt.calls)
			}
		})
	}
	t.Run("GitLab not listening", func(t *testing.T) {
		s := newGitLab(t)
		b := newBackend(t, s, PATCheckAdmin)
		s.Close()
		_, ok, err := b.Authenticate(context.Background(), pat(aliceToken))
		if ok {
			t.Fatal("accepted while GitLab is down")
		}
		checkRejection(t, err, identity.ReasonUnavailable, aliceToken)
	})
	testkit.NoGoroutinesLeft(t, "kubegate.dev/kubegate/identity/gitlab")
}

var sandboxListed = identity.Listed{
	Projects: []string{"group-1/project-1", "group-2/project-2"},
	Groups:   []string{"group-2", "group-3/subgroup"},
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

// TestMembershipsMatchDirectory asks GitLab and the sandbox directory the same
// questions: both model GitLab's inherited memberships, so they must agree.
func TestMembershipsMatchDirectory(t *testing.T) {
	s := newGitLab(t)
	b := newBackend(t, s, PATCheckAdmin)
	d := sandboxDirectory(t)
	listed := identity.Listed{
		Projects: []string{"group-1/project-1", "group-2/project-2", "group-3/subgroup/project-3", "nope/missing"},
		Groups:   []string{"group-2", "group-3/subgroup", "group-1", "missing-group"},
	}
	for _, name := range []string{"alice", "bob", "carol", "dave", "grace", "heidi", "ivan"} {
		t.Run(name, func(t *testing.T) {
			u, ok := d.UserByName(name)
			if !ok {
				t.Fatalf("no user %s in the directory", name)
			}
			want, err := d.Memberships(context.Background(), u, listed)
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.Memberships(context.Background(), u, listed)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("GitLab %+v, directory %+v", got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("[%d] GitLab %+v, directory %+v", i, got[i], want[i])
				}
			}
			// explain: the same paths are found, the same direct and inherited
			// grants as the directory's (GitLab cannot list subgroup-only ones), and
			// the highest is the level Memberships reports.
			gx, err := b.ExplainMemberships(context.Background(), u, listed)
			if err != nil {
				t.Fatal(err)
			}
			dx, err := d.ExplainMemberships(context.Background(), u, listed)
			if err != nil {
				t.Fatal(err)
			}
			var explained []identity.Membership
			for i, x := range gx {
				if x.Found != dx[i].Found || x.ID != dx[i].ID || x.Kind != dx[i].Kind || x.Path != dx[i].Path {
					t.Errorf("explained entry %d: GitLab %+v, directory %+v", i, x, dx[i])
				}
				var counting []identity.Grant
				for _, g := range dx[i].Grants {
					if g.Relation != identity.RelationSubgroupOnly {
						counting = append(counting, g)
					}
				}
				if fmt.Sprint(x.Grants) != fmt.Sprint(counting) {
					t.Errorf("%s %s: GitLab grants %+v, directory %+v", x.Kind, x.Path, x.Grants, counting)
				}
				level := identity.NoAccess
				for _, g := range x.Grants {
					level = max(level, g.AccessLevel)
				}
				if level > identity.NoAccess {
					explained = append(explained, identity.Membership{Kind: x.Kind, ID: x.ID, Path: x.Path, AccessLevel: level})
				}
			}
			if fmt.Sprint(explained) != fmt.Sprint(got) {
				t.Errorf("explained %+v, Memberships %+v", explained, got)
			}
		})
	}
}

func TestMemberships(t *testing.T) {
	type m = identity.Membership
	s := newGitLab(t)
	s.AddUser(gitlabtest.User{ID: 50, Username: "minimal"})
	s.AddMember("groups", "group-2", 50, 5) // minimal access
	tests := []struct {
		name   string
		user   identity.User
		listed identity.Listed
		want   []m
	}{
		{name: "listing order, projects first", user: identity.User{ID: 7, Username: "grace"}, listed: identity.Listed{Groups: []string{"group-2"}, Projects: []string{"group-2/project-2"}},
			want: []m{{Kind: identity.KindProject, ID: 2, Path: "group-2/project-2", AccessLevel: identity.Developer}, {Kind: identity.KindGroup, ID: 2, Path: "group-2", AccessLevel: identity.Developer}}},
		{name: "paths compare case-insensitively, keep their spelling", user: identity.User{ID: 1, Username: "alice"}, listed: identity.Listed{Projects: []string{"Group-1/Project-1"}},
			want: []m{{Kind: identity.KindProject, ID: 1, Path: "Group-1/Project-1", AccessLevel: identity.Maintainer}}},
		{name: "carol inherits the listed subgroup from group-3", user: identity.User{ID: 3, Username: "carol"}, listed: sandboxListed,
			want: []m{{Kind: identity.KindGroup, ID: 4, Path: "group-3/subgroup", AccessLevel: identity.Developer}}},
		{name: "a subgroup's membership never counts upward", user: identity.User{ID: 4, Username: "dave"}, listed: sandboxListed},
		{name: "minimal access is no role", user: identity.User{ID: 50, Username: "minimal"}, listed: sandboxListed},
		{name: "unknown paths are left out", user: identity.User{ID: 1, Username: "alice"}, listed: identity.Listed{Projects: []string{"a/b", "group-1/project-1"}, Groups: []string{"zzz"}},
			want: []m{{Kind: identity.KindProject, ID: 1, Path: "group-1/project-1", AccessLevel: identity.Maintainer}}},
		{name: "nothing listed", user: identity.User{ID: 1, Username: "alice"}},
		{name: "a user GitLab does not know", user: identity.User{ID: 999, Username: "ghost"}, listed: sandboxListed},
	}
	for _, check := range []PATCheck{PATCheckAdmin, PATCheckSelf} {
		b := newBackend(t, s, check)
		for _, tt := range tests {
			t.Run(string(check)+"/"+tt.name, func(t *testing.T) {
				got, err := b.Memberships(context.Background(), tt.user, tt.listed)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
				for i := range got {
					if got[i] != tt.want[i] {
						t.Errorf("[%d] got %+v, want %+v", i, got[i], tt.want[i])
					}
				}
			})
		}
	}
}

func TestMembershipPathsAreCached(t *testing.T) {
	s := newGitLab(t)
	b := newBackend(t, s, PATCheckAdmin)
	for range 3 {
		if _, err := b.Memberships(context.Background(), identity.User{ID: 1, Username: "alice"}, sandboxListed); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Calls("GET /api/v4/projects/{id}"); got != 2 {
		t.Errorf("project paths resolved %d times, want 2 (once per path)", got)
	}
	if got := s.Calls("GET /api/v4/groups/{id}"); got != 2 {
		t.Errorf("group paths resolved %d times, want 2", got)
	}
	if got := s.Calls("GET /api/v4/projects/{id}/members/all/{uid}"); got != 6 {
		t.Errorf("project memberships read %d times, want 6 (memberships are not cached here)", got)
	}
}

func TestMembershipsUnavailable(t *testing.T) {
	tests := []struct {
		name  string
		fault func(w http.ResponseWriter, r *http.Request) bool
		mod   func(*Config)
	}{
		{name: "members endpoint fails", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/members/all/") && strings.HasPrefix(r.URL.Path, "/api/v4/groups/") {
				w.WriteHeader(500)
				return true
			}
			return false
		}},
		{name: "path lookup hangs", mod: func(c *Config) { c.Timeout = 300 * time.Millisecond }, fault: func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/api/v4/projects/group-2/project-2" {
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done()
				return true
			}
			return false
		}},
		{name: "member answer malformed", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/members/all/") {
				_, _ = w.Write([]byte(`{"id": 1, "access_level": "developer"}`))
				return true
			}
			return false
		}},
		{name: "member answer without a level", fault: func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/members/all/") {
				_, _ = w.Write([]byte(`{"id": 1}`))
				return true
			}
			return false
		}},
		{name: "service token refused", mod: func(c *Config) { c.Token = "glpat-wrong" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newGitLab(t)
			s.SetFault(tt.fault)
			b := newBackend(t, s, PATCheckAdmin, func(c *Config) {
				if tt.mod != nil {
					tt.mod(c)
				}
			})
			got, err := b.Memberships(context.Background(), identity.User{ID: 1, Username: "alice"}, sandboxListed)
			if got != nil {
				t.Fatalf("partial answer %+v", got)
			}
			checkRejection(t, err, identity.ReasonUnavailable, "")
		})
	}
	testkit.NoGoroutinesLeft(t, "kubegate.dev/kubegate/identity/gitlab")
}

func TestLookupUser(t *testing.T) {
	s := newGitLab(t)
	b := newBackend(t, s, PATCheckSelf)
	tests := []struct {
		name      string
		username  string
		want      identity.User
		wantFound bool
	}{
		{name: "known", username: "alice", want: identity.User{ID: 1, Username: "alice"}, wantFound: true},
		{name: "case-insensitive, GitLab's spelling wins", username: "ALICE", want: identity.User{ID: 1, Username: "alice"}, wantFound: true},
		{name: "blocked", username: "mallory"},
		{name: "unknown", username: "nobody"},
		{name: "not a username", username: "alice:admin"},
		{name: "empty", username: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := b.LookupUser(context.Background(), tt.username)
			if err != nil || found != tt.wantFound || got != tt.want {
				t.Fatalf("got %+v %v %v, want %+v %v", got, found, err, tt.want, tt.wantFound)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no URL", cfg: Config{Token: "x"}, want: "absolute http(s) URL"},
		{name: "relative URL", cfg: Config{URL: "gitlab.example.com", Token: "x"}, want: "absolute http(s) URL"},
		{name: "empty token", cfg: Config{URL: "https://gitlab.example.com", Token: " \n"}, want: "service token is empty"},
		{name: "unknown PAT check", cfg: Config{URL: "https://gitlab.example.com", Token: "x", PATCheck: "both"}, want: `PAT check "both"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestExplainMembershipsBeyondDirectAndInherited: when GitLab's effective level
// (members/all) is higher than the direct and every ancestor membership — a share
// with another group, which the stand-in does not model, is faked here — the
// explanation says so with an effective grant, so its highest grant is still the
// effective level.
func TestExplainMembershipsBeyondDirectAndInherited(t *testing.T) {
	s := newGitLab(t)
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/v4/projects/1/members/all/1" {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":1,"username":"alice","state":"active","access_level":50,"membership_state":"active","expires_at":null}`))
		return true
	})
	b := newBackend(t, s, PATCheckAdmin)
	xs, err := b.ExplainMemberships(context.Background(), identity.User{ID: 1, Username: "alice"}, identity.Listed{Projects: []string{"group-1/project-1"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []identity.Grant{
		{Relation: identity.RelationDirect, Kind: identity.KindProject, Path: "group-1/project-1", AccessLevel: identity.Maintainer},
		{Relation: identity.RelationEffective, Kind: identity.KindProject, Path: "group-1/project-1", AccessLevel: identity.Owner},
	}
	if len(xs) != 1 || fmt.Sprint(xs[0].Grants) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want grants %+v", xs, want)
	}
}
