package session

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/test/cluster"
)

// testSyncBound keeps the fail-closed tests short; production's default is 5s.
const testSyncBound = time.Second

// startEtcd starts the test bed's real etcd, or skips when the binary is missing.
func startEtcd(t *testing.T) *cluster.Etcd {
	t.Helper()
	if _, err := cluster.EtcdBinary(); err != nil {
		t.Skipf("no etcd binary, so the shared revocation store is not tested: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := cluster.StartEtcd(ctx, t.TempDir(), cluster.EtcdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

// newEtcdStore makes a store (one "replica") and runs it until the test ends.
func newEtcdStore(t *testing.T, url string, grace time.Duration) *Etcd {
	t.Helper()
	s, err := NewEtcd(EtcdConfig{Endpoints: []string{url}, SyncBound: testSyncBound, Prefix: "/test/revoked", Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = s.Close() })
	waitFor(t, 30*time.Second, "the store to become current", func() bool {
		_, err := s.Revoked(context.Background(), "x")
		return err == nil
	})
	return s
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("waited %s for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestEtcdReplicas: a logout on one replica is refused on the other within the sync
// bound, and a replayed cookie is refused on both.
func TestEtcdReplicas(t *testing.T) {
	e := startEtcd(t)
	keyFile := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, keyFile, newKey(t))
	users := newUsers(alice)
	replica := func() (*Manager, identity.Authenticator) {
		m, err := New(Config{KeyFile: keyFile, Revocations: newEtcdStore(t, e.URL, 0)})
		if err != nil {
			t.Fatal(err)
		}
		return m, m.Authenticator(users)
	}
	a, authA := replica()
	_, authB := replica()
	ctx := context.Background()

	rec := httptest.NewRecorder()
	s, err := a.Issue(rec, alice, MethodPassword)
	if err != nil {
		t.Fatal(err)
	}
	c := cred(rec.Result().Cookies()[0].Value, s.CSRFToken)
	for name, auth := range map[string]identity.Authenticator{"A": authA, "B": authB} {
		if _, ok, err := auth.Authenticate(ctx, c); !ok {
			t.Fatalf("replica %s refused a live session: %v", name, err)
		}
	}
	if err := a.Revoke(ctx, httptest.NewRecorder(), s); err != nil {
		t.Fatal(err)
	}
	t.Run("replayed on the replica that logged out: refused at once", func(t *testing.T) {
		_, ok, err := authA.Authenticate(ctx, c)
		if ok {
			t.Fatal("accepted")
		}
		wantReason(t, err, identity.ReasonRevoked)
	})
	t.Run("replayed on the other replica: refused within the sync bound", func(t *testing.T) {
		var last error
		took := waitFor(t, testSyncBound, "replica B to refuse the logged-out session", func() bool {
			_, ok, err := authB.Authenticate(ctx, c)
			last = err
			return !ok
		})
		wantReason(t, last, identity.ReasonRevoked)
		t.Logf("replica B refused the logged-out session after %s (bound %s)", took, testSyncBound)
	})
	t.Run("a quiet watch stays current by progress notifications, without relisting", func(t *testing.T) {
		store := newEtcdStore(t, e.URL, 0)
		time.Sleep(3 * testSyncBound) // no events at all meanwhile
		if _, err := store.Revoked(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		store.mu.Lock()
		lists := store.lists
		store.mu.Unlock()
		if lists != 1 {
			t.Fatalf("%d lists in 3 sync bounds without events, want 1: progress notifications did not confirm the watch", lists)
		}
	})
	t.Run("another session is unaffected", func(t *testing.T) {
		rec := httptest.NewRecorder()
		s2, err := a.Issue(rec, alice, MethodOIDC)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := authB.Authenticate(ctx, cred(rec.Result().Cookies()[0].Value, s2.CSRFToken)); !ok {
			t.Fatal(err)
		}
	})
}

// TestEtcdFailsClosed: with etcd gone, Revoked errors once the copy is older than the
// bound (a 503, never an accepted logged-out session), and recovers, listing first,
// when etcd is back.
func TestEtcdFailsClosed(t *testing.T) {
	e := startEtcd(t)
	store := newEtcdStore(t, e.URL, 0)
	ctx := context.Background()
	if err := store.Revoke(ctx, "before-outage", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.Kill()
	var last error
	took := waitFor(t, testSyncBound+5*time.Second, "Revoked to fail with etcd stopped", func() bool {
		_, last = store.Revoked(ctx, "anything")
		return last != nil
	})
	t.Logf("Revoked failed closed %s after etcd stopped (bound %s)", took, testSyncBound)
	if !strings.Contains(last.Error(), "sync bound") {
		t.Errorf("error %q does not say why", last)
	}
	t.Run("the authenticator answers 503", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.Revocations = store })
		s, c := f.issue(t, alice)
		_, ok, err := f.m.Authenticator(f.users).Authenticate(ctx, cred(c.Value, s.CSRFToken))
		if ok {
			t.Fatal("accepted with etcd down")
		}
		wantReason(t, err, identity.ReasonUnavailable)
	})
	t.Run("a logout with etcd down fails, saying so", func(t *testing.T) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := store.Revoke(rctx, "during-outage", time.Now().Add(time.Hour)); err == nil {
			t.Fatal("Revoke succeeded with etcd down")
		}
	})
	restart := time.Now()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd healthy again in %s", time.Since(restart))
	took = waitFor(t, 30*time.Second, "the store to recover", func() bool {
		_, err := store.Revoked(ctx, "x")
		return err == nil
	})
	t.Logf("the store was current again %s after etcd was", took)
	if got, err := store.Revoked(ctx, "before-outage"); err != nil || !got {
		t.Fatalf("after recovery the revocation made before the outage reads (%v, %v)", got, err)
	}
}

// TestEtcdBounded: revocations expire with their leases, in etcd and in every
// replica's copy, so many logouts do not accumulate.
func TestEtcdBounded(t *testing.T) {
	e := startEtcd(t)
	a, b := newEtcdStore(t, e.URL, time.Millisecond), newEtcdStore(t, e.URL, time.Millisecond) // leases of the sessions' lifetime
	ctx := context.Background()
	const n = 200
	until := time.Now().Add(3 * time.Second)
	for i := range n {
		if err := a.Revoke(ctx, fmt.Sprint("s", i), until); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the other replica to see all revocations", func() bool { return b.Len() == n })
	if got, err := b.Revoked(ctx, "s7"); err != nil || !got {
		t.Fatalf("s7 on the other replica: (%v, %v)", got, err)
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{e.URL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	count := func() int64 {
		resp, err := client.Get(ctx, "/test/revoked/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if got := count(); got != n {
		t.Fatalf("%d revocations in etcd, want %d", got, n)
	}
	t.Run("a revocation outlives its session by the grace (clock differences)", func(t *testing.T) {
		g := newEtcdStore(t, e.URL, 0)
		if err := g.Revoke(ctx, "graced", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		resp, err := client.Get(ctx, "/test/revoked/graced")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%v %v", resp, err)
		}
		ttl, err := client.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
		if err != nil {
			t.Fatal(err)
		}
		if want := int64((time.Minute + RevocationGrace) / time.Second); ttl.GrantedTTL != want {
			t.Errorf("lease of %ds, want %ds (the session's remaining minute plus the grace)", ttl.GrantedTTL, want)
		}
		if _, err := client.Delete(ctx, "/test/revoked/graced"); err != nil {
			t.Fatal(err)
		}
	})
	// etcd's lessor expires leases on its own schedule, a little after the TTL.
	waitFor(t, 30*time.Second, "the leases to delete the revocations in etcd", func() bool { return count() == 0 })
	waitFor(t, 10*time.Second, "both copies to empty", func() bool { return a.Len() == 0 && b.Len() == 0 })
	if got, err := b.Revoked(ctx, "s7"); err != nil || got {
		t.Fatalf("an expired revocation still answers: (%v, %v)", got, err)
	}
}

func TestEtcdConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     EtcdConfig
		wantErr string
	}{
		{name: "no endpoints", cfg: EtcdConfig{}, wantErr: "needs endpoints"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewEtcd(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
	t.Run("not read yet: fails closed", func(t *testing.T) {
		s, err := NewEtcd(EtcdConfig{Endpoints: []string{"http://127.0.0.1:1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Revoked(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "not yet read") {
			t.Fatalf("error %v, want a refusal before the first list", err)
		}
	})
	t.Run("TLS files", func(t *testing.T) {
		if _, err := EtcdTLS("", "cert.pem", ""); err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "both") {
			t.Fatalf("error %v", err)
		}
		if cfg, err := EtcdTLS("", "", ""); cfg != nil || err != nil {
			t.Fatalf("no files: (%v, %v), want plain", cfg, err)
		}
		if _, err := EtcdTLS(filepath.Join(t.TempDir(), "missing-ca.pem"), "", ""); err == nil {
			t.Fatal("a missing CA file was accepted")
		}
	})
}
