package gitlab

// Issue 10, item 5, from the attacker's side: made-up tokens must not reach GitLab
// when GitLab cannot have issued them, and a flood of well-formed made-up tokens
// must not take GitLab's capacity from users GitLab has accepted.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

// routableToken makes a token the way GitLab's RoutableToken generator does
// (lib/authn/token_field/generator/routable_token.rb): prefix, base64url of 16
// random bytes + the routing payload + its length byte, ".", version (2 base-36
// digits), ".", the base64 part's length (2 base-36 digits), and the CRC-32 of all
// that in 7 base-36 digits.
func routableToken(t testing.TB, prefix, version, payload string) string {
	t.Helper()
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString(append(append(random, payload...), byte(len(payload))))
	tok := fmt.Sprintf("%s%s.%s.%02s", prefix, b64, version, strconv.FormatInt(int64(len(b64)), 36))
	return tok + fmt.Sprintf("%07s", strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(tok))), 36))
}

// lastDigitChanged replaces tok's last character with another digit, so a routable
// token's CRC no longer matches. (Picking '0' or '1' by the old digit's parity left
// it unchanged whenever it was already '0' or '1': a flaky test.)
func lastDigitChanged(tok string) string {
	d := byte('0')
	if tok[len(tok)-1] == '0' {
		d = '1'
	}
	return tok[:len(tok)-1] + string(d)
}

// junkToken is a well-formed made-up classic token: glpat- and 20 random characters.
func junkToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 15)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "glpat-" + base64.RawURLEncoding.EncodeToString(b)
}

func TestTokenShapes(t *testing.T) {
	routable := routableToken(t, "glpat-", "01", "c:1\no:2s\nu:4")
	corrupt := func(tok string, i int) string {
		b := []byte(tok)
		if b[i] == '0' {
			b[i] = '1'
		} else {
			b[i] = '0'
		}
		return string(b)
	}
	tests := []struct {
		name   string
		token  string
		refuse string // "" when GitLab may have issued it
	}{
		{"legacy 20-character token without prefix", "aB3dE5gH7jK9mN1pQ_s-", ""},
		{"classic glpat- token", "glpat-aB3dE5gH7jK9mN1pQ_s-", ""},
		{"custom prefix", "corp-aB3dE5gH7jK9mN1pQ_s-", ""},
		{"custom prefix with a dot", "corp.v2-aB3dE5gH7jK9mN1pQ_s-", ""},
		{"routable token", routable, ""},
		{"routable token with an instance prefix", routableToken(t, "acme-glpat-", "01", "o:1"), ""},
		{"routable token of a later version", func() string {
			tok := routableToken(t, "glpat-", "02", "o:1")
			return corrupt(tok, len(tok)-1) // its checksum is not kubegate's to judge
		}(), ""},
		{"empty", "", "only letters"},
		{"19 characters", "aB3dE5gH7jK9mN1pQ_s", "shortest"},
		{"glpat- and 10 characters", "glpat-0123456789", "shortest"},
		{"a space", "glpat-aB3dE5gH7jK9 mN1pQ_s-", "only letters"},
		{"a slash", "glpat-abc/../../admin/0000", "only letters"},
		{"513 characters", "glpat-" + strings.Repeat("a", 507), "only letters"},
		{"routable with a wrong checksum", corrupt(routable, len(routable)-1), "checksum does not match"},
		{"routable with an upper-case checksum", strings.ToUpper(routable[:len(routable)-7]) + strings.ToUpper(routable[len(routable)-7:]), "checksum"},
		{"routable with a wrong length field", func() string {
			tok := routable[:len(routable)-9] + "zz"
			return tok + fmt.Sprintf("%07s", strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(tok))), 36))
		}(), "length field"},
		{"routable shape without a version", "glpat-aB3dE5gH7jK9mN1pQ_s-xx.abcdefghi", "version field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkShape(tt.token)
			switch {
			case tt.refuse == "" && err != nil:
				t.Fatalf("refused %q, which GitLab may have issued: %v", tt.token, err)
			case tt.refuse != "" && (err == nil || !strings.Contains(err.Error(), tt.refuse)):
				t.Fatalf("checkShape(%q) = %v; want a refusal saying %q", tt.token, err, tt.refuse)
			case err != nil && len(tt.token) >= 8 && strings.Contains(err.Error(), tt.token):
				t.Fatalf("the refusal quotes the token: %v", err)
			}
		})
	}
}

// TestMalformedTokensNeverReachGitLab: tokens GitLab cannot have issued are refused
// (401) without any request to GitLab, in both check modes, and counted.
func TestMalformedTokensNeverReachGitLab(t *testing.T) {
	routable := routableToken(t, "glpat-", "01", "o:1")
	junk := []string{
		"tiny-tok", "aB3dE5gH7jK9mN1pQ_s", "glpat-0123456789",
		"glpat-aB3dE5gH7jK9 mN1pQ_s-", "glpat-abc\r\nX-Injected: 1",
		"glpat-" + strings.Repeat("a", 600),
		lastDigitChanged(routable), // the CRC no longer matches
		"glpat-aB3dE5gH7jK9mN1pQ_s-xx.abcdefghi",
	}
	for _, check := range []PATCheck{PATCheckAdmin, PATCheckSelf} {
		t.Run(string(check), func(t *testing.T) {
			s := newGitLab(t)
			reg := prometheus.NewRegistry()
			b := newBackend(t, s, check, func(c *Config) { c.Registerer = reg })
			for _, tok := range junk {
				id, ok, err := b.Authenticate(context.Background(), pat(tok))
				if ok || id != nil {
					t.Fatalf("accepted %q", tok)
				}
				checkRejection(t, err, identity.ReasonInvalid, tok)
			}
			if n := s.TotalCalls(); n != 0 {
				t.Fatalf("GitLab received %d requests for tokens it cannot have issued; want none", n)
			}
			if got := testutil.ToFloat64(b.checks.WithLabelValues("refused_shape")); got != float64(len(junk)) {
				t.Errorf("refused_shape = %v, want %d", got, len(junk))
			}
		})
	}
}

// TestIssuableShapesReachGitLab: the shapes GitLab does issue are asked about and
// accepted — a legacy 20-character token and a routable one.
func TestIssuableShapesReachGitLab(t *testing.T) {
	for _, check := range []PATCheck{PATCheckAdmin, PATCheckSelf} {
		t.Run(string(check), func(t *testing.T) {
			s := newGitLab(t)
			legacy := "aB3dE5gH7jK9mN1pQ_s-"
			routable := routableToken(t, "glpat-", "01", "c:1\no:2s\nu:1")
			s.AddToken(legacy, gitlabtest.Token{ID: 50, UserID: 2, Name: "old", Scopes: []string{ScopeK8sProxy}})
			s.AddToken(routable, gitlabtest.Token{ID: 51, UserID: 1, Name: "new", Scopes: []string{ScopeK8sProxy}})
			b := newBackend(t, s, check)
			for tok, want := range map[string]string{legacy: "bob", routable: "alice"} {
				id, ok, err := b.Authenticate(context.Background(), pat(tok))
				if err != nil || !ok || id.User.Username != want {
					t.Fatalf("Authenticate(%s token) = %+v, %v, %v; want %s", want, id, ok, err, want)
				}
			}
		})
	}
}

// flood runs Authenticate with fresh well-formed made-up tokens from `callers`
// goroutines until stop is closed, and tallies the outcomes. wait returns once all
// callers are done. Each caller pauses a millisecond between attempts: in-process
// callers on a busy refusal would otherwise only measure CPU starvation of the
// test machine, not the budgets (over the network the flood is paced by the
// connection).
type floodResult struct {
	mu          sync.Mutex
	calls       int
	busy        int // refused at once: no slot free
	rejected    int // GitLab said no
	unavailable int // would have waited on the budget past the timeout: a 503 too
	other       []error
}

func flood(t testing.TB, b *Backend, callers int, stop <-chan struct{}) (r *floodResult, wait func()) {
	t.Helper()
	r = &floodResult{}
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				_, ok, err := b.Authenticate(context.Background(), pat(junkToken(t)))
				var e *identity.Error
				r.mu.Lock()
				r.calls++
				switch {
				case ok:
					r.other = append(r.other, errors.New("a made-up token was accepted"))
				case errors.As(err, &e) && e.Reason == identity.ReasonBusy:
					r.busy++
				case errors.As(err, &e) && e.Reason == identity.ReasonInvalid:
					r.rejected++
				case errors.As(err, &e) && e.Reason == identity.ReasonUnavailable:
					r.unavailable++
				default:
					r.other = append(r.other, err)
				}
				r.mu.Unlock()
			}
		}()
	}
	t.Cleanup(wg.Wait)
	return r, wg.Wait
}

// TestFloodOfMadeUpTokens floods the backend with well-formed made-up tokens, more at
// once than it checks in flight, against a GitLab that takes RealisticLatency per
// answer. While it lasts, a user GitLab accepted before re-authenticates and reads
// her memberships: both succeed. Afterwards GitLab's log shows that the flood cost
// only token checks, within the unauthenticated budget: no user or membership
// lookups, and none of the users' budget.
func TestFloodOfMadeUpTokens(t *testing.T) {
	const (
		tokenRate = 20.0
		inFlight  = 4
		callers   = 32
	)
	s := newGitLab(t)
	s.SetLatency(gitlabtest.RealisticLatency)
	reg := prometheus.NewRegistry()
	b := newBackend(t, s, PATCheckAdmin, func(c *Config) {
		// The users' budget is exactly one burst of what alice needs (10 calls) at
		// 10/s, and the timeout one second: had the flood (20 checks/s reaching
		// GitLab) any share of that budget, alice would wait for tokens past it.
		c.TokenRateLimit, c.TokenChecksInFlight, c.RateLimit, c.Registerer = tokenRate, inFlight, 10, reg
		c.Timeout = time.Second
	})
	// Alice authenticated earlier: GitLab accepted her token.
	if _, ok, err := b.Authenticate(context.Background(), pat(aliceToken)); !ok || err != nil {
		t.Fatalf("alice before the flood: %v, %v", ok, err)
	}
	users0 := s.Calls("GET /api/v4/users/{id}")

	stop := make(chan struct{})
	start := time.Now()
	r, wait := flood(t, b, callers, stop)
	stopFlood := sync.OnceFunc(func() { close(stop) })
	t.Cleanup(stopFlood)               // runs before flood's wait, also when the test fails early
	time.Sleep(200 * time.Millisecond) // the flood is under way

	// Her cache entry expired: a full re-check and her memberships, during the flood.
	id, ok, err := b.Authenticate(context.Background(), pat(aliceToken))
	if !ok || err != nil || id.User.Username != "alice" {
		t.Fatalf("alice's re-check during the flood: %+v, %v, %v", id, ok, err)
	}
	ms, err := b.Memberships(context.Background(), id.User, sandboxListed)
	if err != nil || len(ms) == 0 {
		t.Fatalf("alice's memberships during the flood: %v, %v", ms, err)
	}
	time.Sleep(300 * time.Millisecond)
	stopFlood()
	wait()
	elapsed := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("flood: %d attempts in %v: %d busy, %d rejected by GitLab, %d out of budget", r.calls, elapsed, r.busy, r.rejected, r.unavailable)

	if len(r.other) > 0 {
		t.Fatalf("flood outcomes other than busy, rejected or unavailable: %v", r.other[0])
	}
	if r.busy == 0 {
		t.Error("no check was refused as busy: the in-flight bound did not apply")
	}
	sentUnknown := testutil.ToFloat64(b.checks.WithLabelValues("sent_unknown"))
	if limit := tokenRate*elapsed.Seconds() + tokenRate + 1; sentUnknown > limit+1 { // +1: alice's first check
		t.Errorf("%v unknown tokens sent to GitLab in %v; the budget allows %v", sentUnknown, elapsed, limit)
	}
	if got := testutil.ToFloat64(b.checks.WithLabelValues("sent_known")); got != 1 {
		t.Errorf("sent_known = %v, want 1 (alice's re-check, from the users' budget)", got)
	}
	if got := testutil.ToFloat64(b.checks.WithLabelValues("refused_busy")); got != float64(r.busy) {
		t.Errorf("refused_busy = %v, want %d", got, r.busy)
	}
	// The flood never got past the token check: only alice's user lookups.
	if got := s.Calls("GET /api/v4/users/{id}") - users0; got != 1 {
		t.Errorf("GET /users/:id called %d times during the flood, want 1 (alice's)", got)
	}
	if n := s.Calls("POST /api/v4/admin/token"); float64(n) != sentUnknown+1 {
		t.Errorf("GitLab saw %d token checks, the backend counted %v sent", n, sentUnknown+1)
	}
}

// TestBusyIsNotARejection: a check refused as busy is a 503 telling the client to
// retry, and the same token succeeds once a slot is free.
func TestBusyIsNotARejection(t *testing.T) {
	s := newGitLab(t)
	hold := make(chan struct{})
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/v4/admin/token" {
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}
		return false
	})
	b := newBackend(t, s, PATCheckAdmin, func(c *Config) { c.TokenChecksInFlight = 1 })
	first := make(chan error, 1)
	go func() {
		_, _, err := b.Authenticate(context.Background(), pat(junkToken(t)))
		first <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for s.Calls("POST /api/v4/admin/token") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first check never reached GitLab")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, ok, err := b.Authenticate(context.Background(), pat(aliceToken))
	var e *identity.Error
	if ok || !errors.As(err, &e) || e.Reason != identity.ReasonBusy || !e.Unavailable() || !strings.Contains(e.Public, "try again") {
		t.Fatalf("second check while the only slot is taken: ok=%v err=%v; want a busy 503 saying to retry", ok, err)
	}
	if n := s.Calls("POST /api/v4/admin/token"); n != 1 {
		t.Fatalf("GitLab saw %d token checks; the busy one must not be sent", n)
	}
	close(hold)
	if err := <-first; err == nil {
		t.Fatal("the made-up token was accepted")
	}
	if _, ok, err := b.Authenticate(context.Background(), pat(aliceToken)); !ok || err != nil {
		t.Fatalf("alice after the slot freed: %v, %v", ok, err)
	}
}
