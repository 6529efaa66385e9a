package backends

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/identity"
)

// The browser login's password check and user lookup follow the directory in
// service; before one is installed they fail closed (503, never a login).
func TestBrowserPasswordsAndUsers(t *testing.T) {
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(context.Background(), o, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if !b.HasPasswords() {
		t.Fatal("the directory source has passwords")
	}
	ctx := context.Background()
	var e *identity.Error
	if _, err := b.CheckPassword(ctx, "alice", "alice-sandbox-password"); !errors.As(err, &e) || !e.Unavailable() {
		t.Fatalf("before a directory: %v", err)
	}
	if _, _, err := b.LookupUser(ctx, "alice"); !errors.As(err, &e) || !e.Unavailable() {
		t.Fatalf("before a directory: %v", err)
	}
	if _, _, err := b.Sources(sandboxDirectory(t)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user, pw string
		want           string // username; "" for a refusal
	}{
		{"alice", "alice", "alice-sandbox-password", "alice"},
		{"bob", "bob", "bob-sandbox-password", "bob"},
		{"alice with bob's password", "alice", "bob-sandbox-password", ""},
		{"carol has no password", "carol", "alice-sandbox-password", ""},
		{"mallory is blocked", "mallory", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := b.CheckPassword(ctx, tt.user, tt.pw)
			if tt.want == "" {
				if !errors.As(err, &e) || e.Reason != identity.ReasonInvalid {
					t.Fatalf("got %v %v, want a refusal", u, err)
				}
				return
			}
			if err != nil || u.Username != tt.want {
				t.Fatalf("got %v %v", u, err)
			}
		})
	}
	if u, ok, err := b.LookupUser(ctx, "carol"); !ok || err != nil || u.ID != 3 {
		t.Fatalf("carol: %v %v %v", u, ok, err)
	}
	if _, ok, err := b.LookupUser(ctx, "mallory"); ok || err != nil {
		t.Fatalf("mallory is blocked: %v %v", ok, err)
	}
}
