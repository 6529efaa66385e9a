package cache

// Issue 10, item 5: how the cache behaves under a flood of made-up credentials.

import (
	"context"
	"fmt"
	"testing"

	"kubegate.dev/kubegate/identity"
)

// TestFloodOfRejections: a flood of distinct made-up tokens, each rejected, never
// hits the negative cache (every one is new), and must not push a user's accepted
// identity out of the bounded cache: her next request is still answered without
// asking the source. A busy refusal (identity.Busy) is never cached, so a user
// refused while the source was busy gets asked about again on her retry.
func TestFloodOfRejections(t *testing.T) {
	const size = 1000
	src := &counting{answer: func(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
		switch cred.Secret {
		case "alice-token":
			return accept(ctx, cred)
		case "busy-now":
			return nil, false, identity.Busy("GitLab", fmt.Errorf("all slots taken"))
		}
		return nil, false, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("unknown token"))
	}}
	a, _ := newAuth(t, src, func(o *Options) { o.MaxEntries = size })
	ctx := context.Background()
	for range 20 { // alice is a regular
		if _, ok, err := a.Authenticate(ctx, pat("alice-token")); !ok || err != nil {
			t.Fatalf("alice: %v, %v", ok, err)
		}
	}
	before := src.calls.Load()
	const junk = 50 * size
	for i := range junk {
		if _, ok, _ := a.Authenticate(ctx, pat(fmt.Sprintf("made-up-%d", i))); ok {
			t.Fatal("a made-up token was accepted")
		}
	}
	if got := src.calls.Load() - before; got != junk {
		t.Errorf("the source was asked %d times for %d distinct made-up tokens", got, junk)
	}
	before = src.calls.Load()
	if _, ok, err := a.Authenticate(ctx, pat("alice-token")); !ok || err != nil {
		t.Fatalf("alice after the flood: %v, %v", ok, err)
	}
	if src.calls.Load() != before {
		t.Error("the flood pushed alice's cached identity out: her next request asked the source")
	}

	for i := range 3 {
		before := src.calls.Load()
		_, _, err := a.Authenticate(ctx, pat("busy-now"))
		if e := identity.AsError(err); e == nil || e.Reason != identity.ReasonBusy {
			t.Fatalf("try %d: %v, want the busy refusal", i, err)
		}
		if src.calls.Load() != before+1 {
			t.Fatalf("try %d answered from the cache: a busy refusal must not be cached", i)
		}
	}
}
