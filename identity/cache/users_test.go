package cache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"kubegate.dev/kubegate/identity"
)

type fakeUsers struct {
	calls *atomic.Int64
	user  identity.User
	found bool
	err   error
}

func (f *fakeUsers) LookupUser(_ context.Context, _ string) (identity.User, bool, error) {
	f.calls.Add(1)
	return f.user, f.found, f.err
}

func TestUsers(t *testing.T) {
	alice := identity.User{ID: 7, Username: "alice"}
	tests := []struct {
		name      string
		inner     fakeUsers
		advance   time.Duration // between the two lookups
		wantCalls int64
		wantFound bool
		wantErr   bool
	}{
		{name: "a found user is reused within the TTL", inner: fakeUsers{user: alice, found: true}, advance: 29 * time.Second, wantCalls: 1, wantFound: true},
		{name: "and asked again after it (a blocked user is seen)", inner: fakeUsers{user: alice, found: true}, advance: 30 * time.Second, wantCalls: 2, wantFound: true},
		{name: "not found is reused for the failure TTL", inner: fakeUsers{}, advance: 4 * time.Second, wantCalls: 1},
		{name: "and asked again after it (a new user is seen)", inner: fakeUsers{}, advance: 5 * time.Second, wantCalls: 2},
		{name: "errors are never cached", inner: fakeUsers{err: identity.SourceUnavailable("gitlab", errors.New("down"))}, wantCalls: 2, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			opts := DefaultOptions()
			opts.Now = c.Now
			inner := tt.inner
			inner.calls = new(atomic.Int64)
			u, err := NewUsers(&inner, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			for i, name := range []string{"alice", "Alice"} { // one key whatever the case
				got, found, err := u.LookupUser(context.Background(), name)
				if (err != nil) != tt.wantErr || found != tt.wantFound || (found && got != alice) {
					t.Fatalf("lookup %d: (%+v, %v, %v)", i, got, found, err)
				}
				c.Advance(tt.advance)
			}
			if n := inner.calls.Load(); n != tt.wantCalls {
				t.Errorf("%d calls of the wrapped lookup, want %d", n, tt.wantCalls)
			}
		})
	}
}
