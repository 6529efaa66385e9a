package tokencache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }
func newCache(t *testing.T) (*Cache, *clock) {
	clk := &clock{now: t0}
	return &Cache{Dir: filepath.Join(t.TempDir(), "kubegate"), Now: clk.Now}, clk
}

// creator makes numbered tokens valid for 14 hours (one made at t0 expires at the
// end of t0's day) and counts calls.
type creator struct {
	clk   *clock
	calls atomic.Int32
}

func (c *creator) create(context.Context) (Entry, error) {
	n := c.calls.Add(1)
	now := c.clk.Now()
	return Entry{Token: "tok-" + string(rune('0'+n)), ExpiresAt: now.Add(14 * time.Hour), ID: int64(n), CreatedAt: now}, nil
}

func mustNotCreate(t *testing.T) Create {
	return func(context.Context) (Entry, error) {
		t.Fatal("create was called although a valid cached token exists")
		return Entry{}, nil
	}
}

func TestMissCreatesAndStoresPrivately(t *testing.T) {
	c, clk := newCache(t)
	cr := &creator{clk: clk}
	e, reused, err := c.Get(t.Context(), "https://gitlab.example.com\x00digest-a", nil, cr.create)
	if err != nil || reused || e.Token != "tok-1" {
		t.Fatalf("Get = %+v reused=%v err=%v; want a new tok-1", e, reused, err)
	}
	di, err := os.Stat(c.Dir)
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir mode = %v (%v), want 0700", di.Mode().Perm(), err)
	}
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var jsonFiles int
	for _, de := range entries {
		if strings.Contains(de.Name(), "gitlab") || strings.Contains(de.Name(), "digest") {
			t.Errorf("file name %q reveals the key", de.Name())
		}
		if strings.HasSuffix(de.Name(), ".json") {
			jsonFiles++
			fi, _ := de.Info()
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode = %v, want 0600", de.Name(), fi.Mode().Perm())
			}
			data, _ := os.ReadFile(filepath.Join(c.Dir, de.Name()))
			if strings.Contains(string(data), "digest-a") {
				t.Errorf("the cache file contains the key: %s", data)
			}
		}
	}
	if jsonFiles != 1 {
		t.Fatalf("%d cache files, want 1: %v", jsonFiles, entries)
	}
}

func TestReuseAndExpiry(t *testing.T) {
	endOfDay := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		now        time.Time
		wantReused bool
	}{
		{"same hour", t0.Add(time.Hour), true},
		{"just outside the 5 minute margin", endOfDay.Add(-5*time.Minute - time.Second), true},
		{"inside the 5 minute margin", endOfDay.Add(-4 * time.Minute), false},
		{"exactly at the margin", endOfDay.Add(-5 * time.Minute), false},
		{"expired", endOfDay.Add(time.Minute), false},
		{"next day", endOfDay.Add(10 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newCache(t)
			cr := &creator{clk: clk}
			first, _, err := c.Get(t.Context(), "k", nil, cr.create)
			if err != nil {
				t.Fatal(err)
			}
			clk.Set(tt.now)
			create := cr.create
			if tt.wantReused {
				create = mustNotCreate(t)
			}
			got, reused, err := c.Get(t.Context(), "k", nil, create)
			if err != nil {
				t.Fatal(err)
			}
			if reused != tt.wantReused {
				t.Fatalf("reused = %v, want %v", reused, tt.wantReused)
			}
			if tt.wantReused && got != first {
				t.Fatalf("reused entry %+v differs from the stored %+v", got, first)
			}
			if !tt.wantReused {
				if got.Token == first.Token {
					t.Fatalf("got the old token %q back", got.Token)
				}
				// The new token replaced the old one in the file.
				again, reused, err := c.Get(t.Context(), "k", nil, mustNotCreate(t))
				if err != nil || !reused || again.Token != got.Token {
					t.Fatalf("third Get = %+v reused=%v err=%v; want the new token reused", again, reused, err)
				}
			}
		})
	}
}

func TestCheck(t *testing.T) {
	boom := errors.New("GitLab unreachable")
	tests := []struct {
		name        string
		check       Check
		wantReused  bool
		wantErr     error
		wantCreated int32
	}{
		{"accepts", func(context.Context, Entry) (bool, error) { return true, nil }, true, nil, 1},
		{"refuses (revoked)", func(context.Context, Entry) (bool, error) { return false, nil }, false, nil, 2},
		{"fails", func(context.Context, Entry) (bool, error) { return false, boom }, false, boom, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newCache(t)
			cr := &creator{clk: clk}
			if _, _, err := c.Get(t.Context(), "k", nil, cr.create); err != nil {
				t.Fatal(err)
			}
			var checked Entry
			check := func(ctx context.Context, e Entry) (bool, error) { checked = e; return tt.check(ctx, e) }
			_, reused, err := c.Get(t.Context(), "k", check, cr.create)
			if !errors.Is(err, tt.wantErr) || reused != tt.wantReused {
				t.Fatalf("Get reused=%v err=%v; want reused=%v err=%v", reused, err, tt.wantReused, tt.wantErr)
			}
			if checked.Token != "tok-1" {
				t.Fatalf("check saw %+v, want the cached tok-1", checked)
			}
			if n := cr.calls.Load(); n != tt.wantCreated {
				t.Fatalf("create called %d times, want %d", n, tt.wantCreated)
			}
		})
	}
	t.Run("not called for an expired entry", func(t *testing.T) {
		c, clk := newCache(t)
		cr := &creator{clk: clk}
		if _, _, err := c.Get(t.Context(), "k", nil, cr.create); err != nil {
			t.Fatal(err)
		}
		clk.Set(t0.AddDate(0, 0, 2))
		check := func(context.Context, Entry) (bool, error) {
			t.Fatal("check called for an expired entry")
			return false, nil
		}
		if _, reused, err := c.Get(t.Context(), "k", check, cr.create); err != nil || reused {
			t.Fatalf("reused=%v err=%v; want a new token", reused, err)
		}
	})
}

func TestUnusableFilesAreMisses(t *testing.T) {
	tests := []struct {
		name    string
		content string
	}{
		{"not JSON", "{{{"},
		{"empty", ""},
		{"other version", `{"version":99,"entry":{"token":"x","expires_at":"2099-01-01T00:00:00Z"}}`},
		{"no token", `{"version":1,"entry":{"expires_at":"2099-01-01T00:00:00Z"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newCache(t)
			if err := ensureDir(c.Dir); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(c.Dir, fileName("k")+".json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			cr := &creator{clk: clk}
			e, reused, err := c.Get(t.Context(), "k", nil, cr.create)
			if err != nil || reused || e.Token != "tok-1" {
				t.Fatalf("Get = %+v reused=%v err=%v; want a new token", e, reused, err)
			}
			if got, ok := read(path); !ok || got.Token != "tok-1" {
				t.Fatalf("file now holds %+v (%v), want tok-1", got, ok)
			}
		})
	}
}

func TestKeysAreSeparate(t *testing.T) {
	c, clk := newCache(t)
	cr := &creator{clk: clk}
	a, _, err := c.Get(t.Context(), "user-a", nil, cr.create)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := c.Get(t.Context(), "user-b", nil, cr.create)
	if err != nil {
		t.Fatal(err)
	}
	if a.Token == b.Token {
		t.Fatalf("two keys share token %q", a.Token)
	}
	if err := c.Remove("user-a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove("user-a"); err != nil {
		t.Fatalf("removing a missing entry: %v", err)
	}
	if _, reused, _ := c.Get(t.Context(), "user-b", nil, mustNotCreate(t)); !reused {
		t.Fatal("removing user-a's entry lost user-b's")
	}
}

// TestConcurrentGetsCreateOneToken starts many Gets for one key at once; each opens
// the lock file itself, as separate processes would. create lingers so that the others
// arrive while it runs: without the lock every one of them would create a token.
func TestConcurrentGetsCreateOneToken(t *testing.T) {
	c, clk := newCache(t)
	var calls atomic.Int32
	const n = 16
	var ready, start sync.WaitGroup
	ready.Add(n)
	start.Add(1)
	create := func(ctx context.Context) (Entry, error) {
		calls.Add(1)
		time.Sleep(50 * time.Millisecond)
		return Entry{Token: "only", ExpiresAt: clk.Now().Add(24 * time.Hour)}, nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ready.Done()
			start.Wait()
			e, _, err := c.Get(context.Background(), "k", nil, create)
			if err == nil && e.Token != "only" {
				err = errors.New("got token " + e.Token)
			}
			errs <- err
		})
	}
	ready.Wait()
	start.Done()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("%d tokens created by %d concurrent Gets, want 1", got, n)
	}
}

func TestLockWaitEnds(t *testing.T) {
	c, clk := newCache(t)
	if err := ensureDir(c.Dir); err != nil {
		t.Fatal(err)
	}
	unlock, err := lock(t.Context(), filepath.Join(c.Dir, fileName("k")+".lock"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	cr := &creator{clk: clk}

	t.Run("timeout", func(t *testing.T) {
		c := *c
		c.LockTimeout = 100 * time.Millisecond
		_, _, err := c.Get(t.Context(), "k", nil, cr.create)
		if err == nil || !strings.Contains(err.Error(), "held the token cache lock") {
			t.Fatalf("err = %v, want a lock timeout that says what to do", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, _, err := c.Get(ctx, "k", nil, cr.create)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("other keys are not blocked", func(t *testing.T) {
		if _, _, err := c.Get(t.Context(), "other", nil, cr.create); err != nil {
			t.Fatal(err)
		}
	})
	if n := cr.calls.Load(); n != 1 {
		t.Fatalf("create called %d times, want only for the unblocked key", n)
	}
}

func TestDirectoryIsTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kubegate")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: dir}
	if _, _, err := c.Get(t.Context(), "k", nil, func(context.Context) (Entry, error) {
		return Entry{Token: "x", ExpiresAt: time.Now().Add(time.Hour)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

func TestCreatedButNotCached(t *testing.T) {
	c, clk := newCache(t)
	if err := ensureDir(c.Dir); err != nil {
		t.Fatal(err)
	}
	// A directory where the cache file should go makes the rename fail.
	if err := os.Mkdir(filepath.Join(c.Dir, fileName("k")+".json"), 0o700); err != nil {
		t.Fatal(err)
	}
	cr := &creator{clk: clk}
	e, _, err := c.Get(t.Context(), "k", nil, cr.create)
	if err == nil || !strings.Contains(err.Error(), "could not be cached") {
		t.Fatalf("err = %v, want a caching failure", err)
	}
	if e.Token != "tok-1" {
		t.Fatalf("entry = %+v, want the created token returned anyway", e)
	}
}

func TestErrors(t *testing.T) {
	t.Run("no directory", func(t *testing.T) {
		_, _, err := (&Cache{}).Get(t.Context(), "k", nil, mustNotCreate(t))
		if err == nil {
			t.Fatal("no error without a directory")
		}
	})
	t.Run("directory is a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := (&Cache{Dir: f}).Get(t.Context(), "k", nil, mustNotCreate(t))
		if err == nil {
			t.Fatal("no error for a file as the cache directory")
		}
	})
	t.Run("create fails", func(t *testing.T) {
		c, _ := newCache(t)
		boom := errors.New("boom")
		_, _, err := c.Get(t.Context(), "k", nil, func(context.Context) (Entry, error) { return Entry{}, boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
		if _, ok := read(filepath.Join(c.Dir, fileName("k")+".json")); ok {
			t.Fatal("a failed create left an entry")
		}
	})
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/var/tmp/xdg")
	got, err := DefaultDir()
	if err != nil || got != "/var/tmp/xdg/kubegate" {
		t.Fatalf("DefaultDir = %q, %v; want /var/tmp/xdg/kubegate", got, err)
	}
}
