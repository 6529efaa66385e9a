package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// quiet is how long a test waits to conclude that no call came: many times the
// debounce, so a call that was going to come would have.
const quiet = 400 * time.Millisecond

// volume lays files out the way kubelet's AtomicWriter does
// (kubernetes/pkg/volume/util/atomic_writer.go): dir/name -> ..data/name,
// ..data -> ..<version>; a new version is a new directory, a "..data_tmp" symlink
// renamed over "..data", then the old directory removed.
type volume struct {
	t   *testing.T
	dir string
	gen int
}

func newVolume(t *testing.T, name, content string) *volume {
	v := &volume{t: t, dir: t.TempDir()}
	v.swap(name, content)
	if err := os.Symlink(filepath.Join(DataLink, name), filepath.Join(v.dir, name)); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *volume) swap(name, content string) {
	v.t.Helper()
	old := filepath.Join(v.dir, "..v"+string(rune('0'+v.gen)))
	v.gen++
	next := "..v" + string(rune('0'+v.gen))
	must(v.t, os.Mkdir(filepath.Join(v.dir, next), 0o755))
	must(v.t, os.WriteFile(filepath.Join(v.dir, next, name), []byte(content), 0o600))
	tmp := filepath.Join(v.dir, "..data_tmp")
	must(v.t, os.Symlink(next, tmp))
	must(v.t, os.Rename(tmp, filepath.Join(v.dir, DataLink)))
	must(v.t, os.RemoveAll(old))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// start runs a Watcher on paths and counts its calls.
func start(t *testing.T, paths ...string) *atomic.Int64 {
	t.Helper()
	var calls atomic.Int64
	ready := make(chan struct{})
	w := &Watcher{Paths: paths, Debounce: 20 * time.Millisecond, Ready: ready}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func() { calls.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return &calls
}

func waitCalls(t *testing.T, calls *atomic.Int64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no call", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatcherReactsToItsPathsOnly(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T) (watch string, act func())
		called bool
	}{
		{"the file rewritten", func(t *testing.T) (string, func()) {
			p := filepath.Join(t.TempDir(), "token")
			must(t, os.WriteFile(p, []byte("a"), 0o600))
			return p, func() { must(t, os.WriteFile(p, []byte("b"), 0o600)) }
		}, true},
		{"the file created after being missing", func(t *testing.T) (string, func()) {
			p := filepath.Join(t.TempDir(), "token")
			return p, func() { must(t, os.WriteFile(p, []byte("b"), 0o600)) }
		}, true},
		{"the file removed", func(t *testing.T) (string, func()) {
			p := filepath.Join(t.TempDir(), "token")
			must(t, os.WriteFile(p, []byte("a"), 0o600))
			return p, func() { must(t, os.Remove(p)) }
		}, true},
		{"an atomic rename over the file", func(t *testing.T) (string, func()) {
			dir := t.TempDir()
			p := filepath.Join(dir, "config.yaml")
			must(t, os.WriteFile(p, []byte("a"), 0o600))
			return p, func() {
				tmp := filepath.Join(dir, ".config.yaml.tmp")
				must(t, os.WriteFile(tmp, []byte("b"), 0o600))
				must(t, os.Rename(tmp, p))
			}
		}, true},
		{"a ..data swap of a projected volume", func(t *testing.T) (string, func()) {
			v := newVolume(t, "token", "a")
			return filepath.Join(v.dir, "token"), func() { v.swap("token", "b") }
		}, true},
		{"a file added below a watched directory", func(t *testing.T) (string, func()) {
			dir := filepath.Join(t.TempDir(), "policy")
			must(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
			return dir, func() { must(t, os.WriteFile(filepath.Join(dir, "sub", "deny.rego"), []byte("package x"), 0o600)) }
		}, true},
		{"another file in the token's directory", func(t *testing.T) (string, func()) {
			dir := t.TempDir()
			p := filepath.Join(dir, "token")
			must(t, os.WriteFile(p, []byte("a"), 0o600))
			return p, func() {
				for i := range 50 {
					must(t, os.WriteFile(filepath.Join(dir, "xds.log"), []byte{byte(i)}, 0o600))
				}
			}
		}, false},
		{"another file next to a missing token", func(t *testing.T) (string, func()) {
			dir := t.TempDir()
			return filepath.Join(dir, "token"), func() {
				f, err := os.Create(filepath.Join(dir, "xds.log"))
				must(t, err)
				defer f.Close()
				for range 50 {
					_, err := f.WriteString("warning\n")
					must(t, err)
				}
			}
		}, false},
		{"a sibling of a directory path", func(t *testing.T) (string, func()) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "policy")
			must(t, os.Mkdir(dir, 0o755))
			return dir, func() { must(t, os.WriteFile(filepath.Join(parent, "policy.bak"), []byte("x"), 0o600)) }
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			watch, act := tt.setup(t)
			calls := start(t, watch)
			act()
			if tt.called {
				waitCalls(t, calls, tt.name)
				return
			}
			time.Sleep(quiet)
			if n := calls.Load(); n != 0 {
				t.Fatalf("%d calls for events that do not concern %s", n, watch)
			}
		})
	}
}

// TestWatcherFollowsSuccessiveSwaps checks that the watch survives the removal of the
// directory the path resolved into: every new version is seen.
func TestWatcherFollowsSuccessiveSwaps(t *testing.T) {
	v := newVolume(t, "token", "v0")
	calls := start(t, filepath.Join(v.dir, "token"))
	for i := 1; i <= 3; i++ {
		before := calls.Load()
		v.swap("token", "v"+string(rune('0'+i)))
		deadline := time.Now().Add(10 * time.Second)
		for calls.Load() == before {
			if time.Now().After(deadline) {
				t.Fatalf("swap %d: no call", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestWatcherNeedsAWatchOrPolling(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "such", "dir", "token")
	err := (&Watcher{Paths: []string{missing}}).Run(context.Background(), func() {})
	if err == nil {
		t.Fatal("Run with nothing watchable and no polling returned nil")
	}
}

func TestRepeats(t *testing.T) {
	now := time.Unix(1000, 0)
	r := &Repeats{Every: 10 * time.Second, Now: func() time.Time { return now }}
	steps := []struct {
		name           string
		advance        time.Duration
		reset          bool
		wantOK         bool
		wantSuppressed int
	}{
		{"first failure is logged", 0, false, true, 0},
		{"a second one right after is suppressed", time.Second, false, false, 0},
		{"and a third", time.Second, false, false, 0},
		{"after the interval one is logged with the count", 8 * time.Second, false, true, 2},
		{"the count starts over", time.Second, false, false, 0},
		{"after a success the next failure is logged at once", time.Second, true, true, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			now = now.Add(s.advance)
			if s.reset {
				r.Reset()
			}
			ok, n := r.Allow()
			if ok != s.wantOK || n != s.wantSuppressed {
				t.Fatalf("Allow() = %v, %d; want %v, %d", ok, n, s.wantOK, s.wantSuppressed)
			}
		})
	}
}

// A caller reads its file, then starts the watcher; a swap in between fires before
// any watch exists. CheckOnStart makes the first look happen once the watch is in
// place, so that swap is not lost; without it, nothing comes (the race the SDS
// watcher lost under load in CI).
func TestCheckOnStartSeesAChangeBeforeTheWatch(t *testing.T) {
	for _, check := range []bool{true, false} {
		v := newVolume(t, "token", "v0")
		v.swap("token", "v1") // after the caller's read, before Run
		var calls atomic.Int64
		ready := make(chan struct{})
		w := &Watcher{Paths: []string{filepath.Join(v.dir, "token")}, Debounce: 20 * time.Millisecond, Ready: ready, CheckOnStart: check}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx, func() { calls.Add(1) }) }()
		<-ready
		time.Sleep(quiet)
		cancel()
		must(t, <-done)
		if got, want := calls.Load(), map[bool]int64{true: 1, false: 0}[check]; got != want {
			t.Errorf("CheckOnStart=%v: %d calls with no event after the watch, want %d", check, got, want)
		}
	}
}
