package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

// clock is a test clock that only moves when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// counting is an identity source that records its calls and answers from a function.
type counting struct {
	calls  atomic.Int64
	answer func(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error)
}

func (c *counting) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	c.calls.Add(1)
	return c.answer(ctx, cred)
}

func accept(_ context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	return &identity.Identity{User: identity.User{ID: 1, Username: "alice"}, AccessType: cred.Type, AgentID: cred.AgentID}, true, nil
}

func pat(tok string) identity.Credential {
	return identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: tok}
}

func newAuth(t *testing.T, inner identity.Authenticator, mod ...func(*Options)) (*Authenticator, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o := DefaultOptions()
	o.Registerer = reg
	for _, m := range mod {
		m(&o)
	}
	a, err := NewAuthenticator(inner, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a, reg
}

func counter(t *testing.T, reg *prometheus.Registry, name, cache, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["cache"] != cache || labels[label] != value {
				continue metric
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// waitFor polls cond; it bounds a wait for goroutines to reach a state, it does not
// assert a duration.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestHundredConcurrentLookupsOneBackendCall: 100 concurrent Authenticate calls with
// the same new token reach the real GitLab backend (against the stand-in GitLab) once.
func TestHundredConcurrentLookupsOneBackendCall(t *testing.T) {
	gl := gitlabtest.New(time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC))
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-00000000000000", gitlabtest.Token{ID: 100, UserID: 100, Scopes: []string{"api"}})
	gl.AddToken("glpat-alice-00000000000000", gitlabtest.Token{ID: 1, UserID: 1, Scopes: []string{"k8s_proxy"}})
	// Hold the token check until every caller is waiting, so the test shows
	// coalescing rather than a cache fill racing the callers.
	release := make(chan struct{})
	gl.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/v4/admin/token" {
			<-release
		}
		return false
	})
	backend, err := gitlab.New(gitlab.Config{URL: gl.URL, Token: "glpat-admin-00000000000000", Timeout: 10 * time.Second, RateLimit: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, reg := newAuth(t, backend)

	const n = 100
	var wg sync.WaitGroup
	results := make([]*identity.Identity, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], _, errs[i] = a.Authenticate(context.Background(), pat("glpat-alice-00000000000000"))
		})
	}
	waitFor(t, "100 misses", func() bool {
		return counter(t, reg, "kubegate_identity_cache_requests_total", "authentication", "result", "miss") == n
	})
	close(release)
	wg.Wait()

	for i := range n {
		if errs[i] != nil || results[i] == nil || results[i].User.Username != "alice" {
			t.Fatalf("caller %d: %+v %v", i, results[i], errs[i])
		}
	}
	if got := gl.Calls("POST /api/v4/admin/token"); got != 1 {
		t.Errorf("GitLab's token check was called %d times, want 1", got)
	}
	if got := gl.Calls("GET /api/v4/users/{id}"); got != 1 {
		t.Errorf("GitLab's users API was called %d times, want 1", got)
	}
	if got := counter(t, reg, "kubegate_identity_cache_loads_total", "authentication", "outcome", "accepted"); got != 1 {
		t.Errorf("loads{accepted} = %v, want 1", got)
	}
	// The next lookup is a hit.
	if _, ok, err := a.Authenticate(context.Background(), pat("glpat-alice-00000000000000")); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if got := counter(t, reg, "kubegate_identity_cache_requests_total", "authentication", "result", "hit"); got != 1 {
		t.Errorf("hits = %v, want 1", got)
	}
	if gl.TotalCalls() != 2 {
		t.Errorf("GitLab saw %d requests in all, want 2", gl.TotalCalls())
	}
}

// TestRevokedTokenStopsWorkingAfterTTL: a token revoked in GitLab keeps working from
// the cache for at most the success TTL; the first lookup after it is refused, and the
// refusal is itself cached for the failure TTL.
func TestRevokedTokenStopsWorkingAfterTTL(t *testing.T) {
	gl := gitlabtest.New(time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC))
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-00000000000000", gitlabtest.Token{ID: 100, UserID: 100, Scopes: []string{"api"}})
	const tok = "glpat-alice-00000000000000"
	gl.AddToken(tok, gitlabtest.Token{ID: 1, UserID: 1, Scopes: []string{"k8s_proxy"}})
	backend, err := gitlab.New(gitlab.Config{URL: gl.URL, Token: "glpat-admin-00000000000000", RateLimit: -1})
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	a, _ := newAuth(t, backend, func(o *Options) { o.Now = clk.Now })
	checks := func() int { return gl.Calls("POST /api/v4/admin/token") }

	steps := []struct {
		name      string
		before    func()
		want      identity.Reason // "" = accepted
		gitlabNow int             // token checks GitLab has seen after the step
	}{
		{name: "first use asks GitLab", want: "", gitlabNow: 1},
		{name: "revoked in GitLab, still cached", before: func() { gl.Revoke(tok); clk.Advance(DefaultTTL - time.Second) }, want: "", gitlabNow: 1},
		{name: "TTL over: GitLab refuses", before: func() { clk.Advance(time.Second) }, want: identity.ReasonRevoked, gitlabNow: 2},
		{name: "refusal cached", before: func() { clk.Advance(DefaultFailureTTL - time.Second) }, want: identity.ReasonRevoked, gitlabNow: 2},
		{name: "failure TTL over: GitLab asked again", before: func() { clk.Advance(time.Second) }, want: identity.ReasonRevoked, gitlabNow: 3},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.before != nil {
				s.before()
			}
			id, ok, err := a.Authenticate(context.Background(), pat(tok))
			if s.want == "" {
				if !ok || err != nil || id.User.Username != "alice" {
					t.Fatalf("want alice accepted, got %+v %v %v", id, ok, err)
				}
			} else {
				var e *identity.Error
				if ok || !errors.As(err, &e) || e.Reason != s.want {
					t.Fatalf("want %s, got %v %v", s.want, ok, err)
				}
				if strings.Contains(e.Error(), tok) {
					t.Errorf("cached error %q contains the token", e)
				}
			}
			if got := checks(); got != s.gitlabNow {
				t.Errorf("GitLab saw %d token checks, want %d", got, s.gitlabNow)
			}
		})
	}
}

func TestWhatIsCached(t *testing.T) {
	rejected := identity.Rejected(identity.ReasonInvalid, errors.New("unknown token"))
	tests := []struct {
		name      string
		answer    func(context.Context, identity.Credential) (*identity.Identity, bool, error)
		opts      func(*Options)
		wantCalls int64 // for three identical lookups
		wantErr   identity.Reason
		notMine   bool
	}{
		{name: "acceptance cached", answer: accept, wantCalls: 1},
		{name: "rejection cached", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, false, rejected
		}, wantCalls: 1, wantErr: identity.ReasonInvalid},
		{name: "not mine cached", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, false, nil
		}, wantCalls: 1, notMine: true},
		{name: "unavailable never cached", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, false, identity.SourceUnavailable("GitLab", errors.New("503"))
		}, wantCalls: 3, wantErr: identity.ReasonUnavailable},
		{name: "a plain error counts as unavailable, never cached", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, false, errors.New("boom")
		}, wantCalls: 3, wantErr: identity.ReasonUnavailable},
		{name: "accepted without identity is denied, not cached", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, true, nil
		}, wantCalls: 3, wantErr: identity.ReasonUnavailable},
		{name: "TTL 0 disables success caching", answer: accept, opts: func(o *Options) { o.TTL = 0 }, wantCalls: 3},
		{name: "failure TTL 0 disables rejection caching", answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
			return nil, false, rejected
		}, opts: func(o *Options) { o.FailureTTL = 0 }, wantCalls: 3, wantErr: identity.ReasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := &counting{answer: tt.answer}
			mods := []func(*Options){}
			if tt.opts != nil {
				mods = append(mods, tt.opts)
			}
			a, _ := newAuth(t, inner, mods...)
			for range 3 {
				id, ok, err := a.Authenticate(context.Background(), pat("t"))
				switch {
				case tt.wantErr != "":
					var e *identity.Error
					if ok || id != nil || !errors.As(err, &e) || e.Reason != tt.wantErr {
						t.Fatalf("want %s, got %+v %v %v", tt.wantErr, id, ok, err)
					}
				case tt.notMine:
					if ok || id != nil || err != nil {
						t.Fatalf("want not mine, got %+v %v %v", id, ok, err)
					}
				default:
					if !ok || err != nil || id.User.Username != "alice" {
						t.Fatalf("want accepted, got %+v %v %v", id, ok, err)
					}
				}
			}
			if got := inner.calls.Load(); got != tt.wantCalls {
				t.Errorf("source called %d times, want %d", got, tt.wantCalls)
			}
		})
	}
}

// TestKeys: every part of access.md §5's key separates entries.
func TestKeys(t *testing.T) {
	base := identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: "s", CSRF: "c"}
	tests := []struct {
		name    string
		other   identity.Credential
		sameKey bool
	}{
		{name: "identical", other: base, sameKey: true},
		{name: "other agent", other: identity.Credential{Type: base.Type, AgentID: 2, Secret: "s", CSRF: "c"}},
		{name: "other access type", other: identity.Credential{Type: identity.AccessOIDCIDToken, AgentID: 1, Secret: "s", CSRF: "c"}},
		{name: "other secret", other: identity.Credential{Type: base.Type, AgentID: 1, Secret: "s2", CSRF: "c"}},
		{name: "other CSRF", other: identity.Credential{Type: base.Type, AgentID: 1, Secret: "s", CSRF: "c2"}},
		{name: "field boundary moved", other: identity.Credential{Type: base.Type, AgentID: 1, Secret: "sc", CSRF: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := &counting{answer: accept}
			a, _ := newAuth(t, inner)
			for _, c := range []identity.Credential{base, tt.other} {
				if _, _, err := a.Authenticate(context.Background(), c); err != nil {
					t.Fatal(err)
				}
			}
			want := int64(2)
			if tt.sameKey {
				want = 1
			}
			if got := inner.calls.Load(); got != want {
				t.Errorf("source called %d times, want %d", got, want)
			}
		})
	}
}

func TestCallersCannotChangeCachedAnswers(t *testing.T) {
	a, _ := newAuth(t, &counting{answer: accept})
	id, _, _ := a.Authenticate(context.Background(), pat("t"))
	id.User.Username = "mallory"
	again, _, _ := a.Authenticate(context.Background(), pat("t"))
	if again.User.Username != "alice" {
		t.Fatalf("a caller changed the cached identity: %+v", again)
	}
}

// TestCallerGivesUp: a caller whose context ends stops waiting with a 503; the shared
// call still completes and fills the cache for the others.
func TestCallerGivesUp(t *testing.T) {
	release := make(chan struct{})
	inner := &counting{answer: func(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
		<-release
		if ctx.Err() != nil {
			return nil, false, identity.SourceUnavailable("test", ctx.Err())
		}
		return accept(ctx, cred)
	}}
	a, _ := newAuth(t, inner)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, _, err := a.Authenticate(ctx, pat("t"))
		done <- err
	}()
	waitFor(t, "the source to be called", func() bool { return inner.calls.Load() == 1 })
	cancel()
	var e *identity.Error
	if err := <-done; !errors.As(err, &e) || !e.Unavailable() {
		t.Fatalf("want unavailable for a caller that gave up, got %v", err)
	}
	close(release)
	waitFor(t, "the shared call to fill the cache", func() bool {
		_, ok := a.store.get(credentialKey(pat("t")))
		return ok
	})
	if _, ok, err := a.Authenticate(context.Background(), pat("t")); !ok || err != nil || inner.calls.Load() != 1 {
		t.Fatalf("want a hit after the detached call finished: %v %v calls=%d", ok, err, inner.calls.Load())
	}
}

func TestBounded(t *testing.T) {
	a, _ := newAuth(t, &counting{answer: accept}, func(o *Options) { o.MaxEntries = 10 })
	for i := range 200 {
		if _, _, err := a.Authenticate(context.Background(), pat(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	a.store.c.CleanUp()
	if n := a.store.c.EstimatedSize(); n > 10 {
		t.Fatalf("cache holds %d entries, bound is 10", n)
	}
}

type resolver struct {
	calls atomic.Int64
	err   error
}

func (r *resolver) Memberships(_ context.Context, u identity.User, listed identity.Listed) ([]identity.Membership, error) {
	r.calls.Add(1)
	if r.err != nil {
		return nil, r.err
	}
	var out []identity.Membership
	for i, p := range listed.Projects {
		out = append(out, identity.Membership{Kind: identity.KindProject, ID: int64(i + 1), Path: p, AccessLevel: identity.Developer})
	}
	return out, nil
}

func TestMemberships(t *testing.T) {
	listed := identity.Listed{Projects: []string{"g/a", "g/b"}, Groups: []string{"g"}}
	alice := identity.User{ID: 1, Username: "alice"}
	tests := []struct {
		name      string
		second    func() (identity.User, identity.Listed)
		err       error
		wantCalls int64
	}{
		{name: "same question is a hit", second: func() (identity.User, identity.Listed) { return alice, listed }, wantCalls: 1},
		{name: "other user", second: func() (identity.User, identity.Listed) { return identity.User{ID: 2, Username: "bob"}, listed }, wantCalls: 2},
		{name: "same id, other username", second: func() (identity.User, identity.Listed) { return identity.User{ID: 1, Username: "alice2"}, listed }, wantCalls: 2},
		{name: "other spelling of a path", second: func() (identity.User, identity.Listed) {
			return alice, identity.Listed{Projects: []string{"G/a", "g/b"}, Groups: []string{"g"}}
		}, wantCalls: 2},
		{name: "project moved to groups", second: func() (identity.User, identity.Listed) {
			return alice, identity.Listed{Projects: []string{"g/a"}, Groups: []string{"g/b", "g"}}
		}, wantCalls: 2},
		{name: "errors are never cached", err: identity.SourceUnavailable("GitLab", errors.New("down")),
			second: func() (identity.User, identity.Listed) { return alice, listed }, wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := &resolver{err: tt.err}
			reg := prometheus.NewRegistry()
			o := DefaultOptions()
			o.Registerer = reg
			c, err := NewMemberships(inner, o)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			first, err := c.Memberships(context.Background(), alice, listed)
			if (err != nil) != (tt.err != nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if tt.err == nil {
				first[0].AccessLevel = identity.Owner // must not reach the cache
			}
			u, l := tt.second()
			got, err := c.Memberships(context.Background(), u, l)
			if (err != nil) != (tt.err != nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if tt.err == nil && got[0].AccessLevel != identity.Developer {
				t.Errorf("a caller changed the cached memberships: %+v", got)
			}
			if n := inner.calls.Load(); n != tt.wantCalls {
				t.Errorf("resolver called %d times, want %d", n, tt.wantCalls)
			}
		})
	}
}

func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := DefaultOptions()
	o.Registerer = reg
	a, err := NewAuthenticator(&counting{answer: accept}, o)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	m, err := NewMemberships(&resolver{}, o)
	if err != nil {
		t.Fatalf("an authentication and a membership cache must share a registry: %v", err)
	}
	defer m.Close()
	if _, err := NewAuthenticator(&counting{answer: accept}, o); err == nil || !strings.Contains(err.Error(), "registering") {
		t.Fatalf("a second authentication cache on the same registry must fail, got %v", err)
	}
	_, _, _ = a.Authenticate(context.Background(), pat("t"))
	// hit and miss exist from the start (at 0) for both caches.
	if n := testutil.CollectAndCount(reg, "kubegate_identity_cache_requests_total"); n != 4 {
		t.Errorf("%d request series, want 4", n)
	}
	if got := counter(t, reg, "kubegate_identity_cache_requests_total", "authentication", "result", "miss"); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}
	if _, err := NewAuthenticator(&counting{answer: accept}, Options{TTL: -1}); err == nil {
		t.Error("a negative TTL must be refused")
	}
}

// BenchmarkHit measures the cache's own cost on a hit: hashing the credential (or the
// user and the listing) and one lookup.
func BenchmarkHit(b *testing.B) {
	a, err := NewAuthenticator(&counting{answer: accept}, DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	m, err := NewMemberships(&resolver{}, DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	cred := pat("glpat-0123456789abcdefghij")
	u := identity.User{ID: 1, Username: "alice"}
	// Listings are prepared once per configuration, as policy.Engine does.
	small := identity.NewListed([]string{"group-1/project-1", "group-2/project-2"}, []string{"group-2", "group-3/subgroup"})
	var projects, groups []string
	for i := range 500 {
		projects = append(projects, fmt.Sprintf("group-%d/subgroup/project-%d", i, i))
		groups = append(groups, fmt.Sprintf("group-%d/subgroup", i))
	}
	large := identity.NewListed(projects, groups)
	b.Run("authenticate", func(b *testing.B) {
		for b.Loop() {
			if _, ok, _ := a.Authenticate(context.Background(), cred); !ok {
				b.Fatal("refused")
			}
		}
	})
	for _, l := range []struct {
		name   string
		listed identity.Listed
	}{{"memberships-4-entries", small}, {"memberships-1000-entries", large}} {
		b.Run(l.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := m.Memberships(context.Background(), u, l.listed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAcceptedIdentityNotCachedPastExpiry: an ID token expiring inside the TTL is
// not accepted from the cache after it expires.
func TestAcceptedIdentityNotCachedPastExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := &now
	expiry := now.Add(10 * time.Second)
	inner := &counting{answer: func(context.Context, identity.Credential) (*identity.Identity, bool, error) {
		return &identity.Identity{User: identity.User{ID: 1, Username: "alice"}, AgentID: 1, Expiry: expiry}, true, nil
	}}
	opts := DefaultOptions()
	opts.TTL = time.Minute
	opts.Now = func() time.Time { return *clock }
	a, err := NewAuthenticator(inner, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cred := identity.Credential{Type: identity.AccessOIDCIDToken, AgentID: 1, Secret: "a.b.c"}
	for _, step := range []struct {
		after     time.Duration
		wantCalls int64
	}{{0, 1}, {5 * time.Second, 1}, {11 * time.Second, 2}} {
		now = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC).Add(step.after)
		if _, ok, _ := a.Authenticate(context.Background(), cred); !ok {
			t.Fatal("refused")
		}
		if got := inner.calls.Load(); got != step.wantCalls {
			t.Fatalf("after %v: %d backend calls, want %d (the cached identity outlived its token)", step.after, got, step.wantCalls)
		}
	}
}

// The byte bound holds on its own (entries far below MaxEntries), and the weigher
// does not under-count what an entry really keeps alive on the heap.
func TestBoundedByBytes(t *testing.T) {
	listed := identity.Listed{}
	for i := range 50 {
		listed.Projects = append(listed.Projects, fmt.Sprintf("an-organisation/a-department/team-%02d/service-%02d", i, i))
	}
	fill := func(t *testing.T, o Options, users int) *Memberships {
		c, err := NewMemberships(&resolver{}, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		for i := range users {
			if _, err := c.Memberships(context.Background(), identity.User{ID: int64(i + 1), Username: fmt.Sprint("user-", i)}, listed); err != nil {
				t.Fatal(err)
			}
		}
		c.store.c.CleanUp()
		return c
	}
	answer, _ := (&resolver{}).Memberships(context.Background(), identity.User{}, listed)
	weight := int64(membershipsSize(clone(answer))) + entryOverhead

	t.Run("the byte bound evicts", func(t *testing.T) {
		o := DefaultOptions()
		o.MaxBytes, o.MaxEntries = MinMaxBytes, 1_000_000
		c := fill(t, o, 2000)
		n := int64(c.store.c.EstimatedSize())
		if n == 0 || n*weight > o.MaxBytes {
			t.Fatalf("%d entries of %d bytes each = %d bytes, bound %d", n, weight, n*weight, o.MaxBytes)
		}
	})
	t.Run("the entry bound still holds", func(t *testing.T) {
		o := DefaultOptions()
		o.MaxEntries = 10 // each entry then weighs at least MaxBytes/10
		c := fill(t, o, 200)
		if n := c.store.c.EstimatedSize(); n > 10 {
			t.Fatalf("%d entries, bound 10", n)
		}
	})
	t.Run("the weigher is not low", func(t *testing.T) {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		const users = 2000
		c := fill(t, DefaultOptions(), users)
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := c.store.c.EstimatedSize(); n != users {
			t.Fatalf("%d entries cached, want all %d", n, users)
		}
		perEntry := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / users
		t.Logf("heap per cached answer %d bytes, weighed %d", perEntry, weight)
		if weight < perEntry*8/10 {
			t.Fatalf("an answer weighs %d bytes but keeps %d alive: the byte bound would be passed", weight, perEntry)
		}
		runtime.KeepAlive(c)
	})
	t.Run("below the minimum is refused", func(t *testing.T) {
		o := DefaultOptions()
		o.MaxBytes = MinMaxBytes - 1
		if _, err := NewMemberships(&resolver{}, o); err == nil || !strings.Contains(err.Error(), "minimum") {
			t.Fatalf("err = %v, want the minimum named", err)
		}
	})
}
