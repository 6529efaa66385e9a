package extauthz

// Issue 10, item 5, end to end over gRPC: a flood of made-up personal access tokens
// against Check with the GitLab backend (the stand-in GitLab answering with
// gitlabtest.RealisticLatency) does not keep a user GitLab has accepted out.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
	"kubegate.dev/kubegate/test/loadgen"
)

// madeUpToken is a well-formed token GitLab never issued: glpat- and 20 random
// characters, a new one every call, so no cache helps.
func madeUpToken() string {
	b := make([]byte, 15)
	_, _ = rand.Read(b)
	return "glpat-" + base64.RawURLEncoding.EncodeToString(b)
}

// floodChecks hammers Check with made-up tokens from `callers` goroutines until the
// returned stop is called; stop waits for them and returns how many Checks were
// answered with each HTTP status (0: allowed).
func floodChecks(tb testing.TB, c authv3.AuthorizationClient, callers int) (stop func() map[int]int) {
	tb.Helper()
	var done atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				resp, err := c.Check(context.Background(), checkRequest("GET", podsPath, pat(madeUpToken())))
				code := -1 // a gRPC error
				if err == nil {
					code = int(resp.GetDeniedResponse().GetStatus().GetCode())
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	stopped := false
	stop = func() map[int]int {
		if !stopped {
			stopped = true
			done.Store(true)
			wg.Wait()
		}
		mu.Lock()
		defer mu.Unlock()
		return codes
	}
	tb.Cleanup(func() { stop() })
	return stop
}

func counterValue(tb testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestFloodOfMadeUpTokensOverGRPC: while 32 callers flood Check with made-up tokens,
// alice (whose token GitLab accepted before; caching off, so every Check of hers
// is a full miss: token re-check, user, memberships) is allowed every time. The
// flood gets 401s and fast 503 identity_busy answers, counted in
// kubegate_gitlab_token_checks_total, and never costs GitLab a user or membership
// lookup.
func TestFloodOfMadeUpTokensOverGRPC(t *testing.T) {
	gl := sandboxGitLab(t)
	gl.SetLatency(gitlabtest.RealisticLatency)
	// The defaults for the token budget (10/s, 16 in flight); the users' budget
	// as gitlabArgs sets it (unlimited), caching off.
	f := startWithBackends(t, nil, gitlabArgs(t, gl, "--cache-ttl=0", "--cache-failure-ttl=0")...)
	alice := checkRequest("GET", podsPath, pat(glAliceToken))
	if resp := f.check(t, alice); resp.GetOkResponse() == nil {
		t.Fatalf("alice before the flood: %v", resp)
	}
	users0 := gl.Calls("GET /api/v4/users/{id}")

	stop := floodChecks(t, f.client, 32)
	time.Sleep(200 * time.Millisecond)
	const aliceChecks = 5
	for i := range aliceChecks {
		if resp := f.check(t, alice); resp.GetOkResponse() == nil {
			t.Fatalf("alice's check %d during the flood was denied: %s", i, resp.GetDeniedResponse().GetBody())
		}
	}
	// A busy answer as the attacker sees it.
	var busy denial
	var retryAfter string
	for deadline := time.Now().Add(10 * time.Second); busy.code == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no made-up token was refused as busy during the flood")
		}
		resp := f.check(t, checkRequest("GET", podsPath, pat(madeUpToken())))
		if d := denied(t, resp); d.code == 503 {
			busy = d
			for _, h := range resp.GetDeniedResponse().GetHeaders() {
				if h.GetHeader().GetKey() == "retry-after" {
					retryAfter = h.GetHeader().GetValue()
				}
			}
		}
	}
	codes := stop()
	t.Logf("flood answers by HTTP status: %v", codes)

	if busy.reason != "identity_busy" || !strings.Contains(busy.message, "too many credentials") || !strings.Contains(busy.message, "try again") {
		t.Errorf("busy denial %+v; want identity_busy saying to try again", busy)
	}
	if retryAfter != "1" {
		// client-go retries a 503 by itself only when Retry-After says when.
		t.Errorf("busy denial Retry-After %q, want 1", retryAfter)
	}
	if codes[0] != 0 || codes[-1] != 0 {
		t.Errorf("made-up tokens: %d allowed, %d gRPC errors; want none", codes[0], codes[-1])
	}
	if codes[503] == 0 || codes[401] == 0 {
		t.Errorf("flood answers %v; want both 401 (checked with GitLab) and 503 (busy)", codes)
	}
	if n := counterValue(t, f.reg, "kubegate_gitlab_token_checks_total", map[string]string{"result": "refused_busy"}); n == 0 {
		t.Error("kubegate_gitlab_token_checks_total{result=refused_busy} did not count the busy refusals")
	}
	if got := gl.Calls("GET /api/v4/users/{id}") - users0; got != aliceChecks {
		t.Errorf("GET /users/:id called %d times during the flood, want %d (alice's only)", got, aliceChecks)
	}
}

// BenchmarkMissDuringFlood measures a cache miss of a user GitLab accepted before
// (caching off: every Check is a token re-check, a user lookup and her membership
// reads against the stand-in GitLab with gitlabtest.RealisticLatency per answer),
// first on a quiet service (the floor), then while 32 goroutines flood Check with
// made-up tokens over gRPC as fast as the service answers — its capacity. Reported:
// her p50/p99 as multiples of the quiet run's (p50-x-floor, p99-x-floor) and the
// flood's rate (flood-checks/s). Token budget at its defaults (10/s, 16 in flight).
func BenchmarkMissDuringFlood(b *testing.B) {
	gl := sandboxGitLab(b)
	gl.SetLatency(gitlabtest.RealisticLatency)
	f := startWithBackends(b, nil, gitlabArgs(b, gl, "--cache-ttl=0", "--cache-failure-ttl=0")...)
	alice := checkRequest("GET", podsPath, pat(glAliceToken))
	check := func() error {
		resp, err := f.client.Check(context.Background(), alice)
		if err == nil && resp.GetOkResponse() == nil {
			err = fmt.Errorf("alice denied: %s", resp.GetDeniedResponse().GetBody())
		}
		return err
	}
	if err := check(); err != nil {
		b.Fatal(err)
	}
	var quiet loadgen.Result
	b.Run("quiet", func(b *testing.B) { quiet = loadgen.Run(b, 1, check) })
	b.Run("flood", func(b *testing.B) {
		stop := floodChecks(b, f.client, 32)
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		r := loadgen.Run(b, 1, check)
		elapsed := time.Since(start)
		codes := stop()
		total := 0
		for _, n := range codes {
			total += n
		}
		r.Compare(b, quiet)
		b.ReportMetric(float64(total)/(elapsed+200*time.Millisecond).Seconds(), "flood-checks/s")
	})
}
