package agentconfig

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder collects what a Source delivers.
type recorder struct {
	mu       sync.Mutex
	versions []Version
	errs     []error
}

func (r *recorder) change(v Version) { r.mu.Lock(); r.versions = append(r.versions, v); r.mu.Unlock() }
func (r *recorder) fail(err error)   { r.mu.Lock(); r.errs = append(r.errs, err); r.mu.Unlock() }

func (r *recorder) snapshot() ([]string, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var data []string
	for _, v := range r.versions {
		data = append(data, string(v.Data))
	}
	return data, append([]error(nil), r.errs...)
}

func run(t *testing.T, f *File) *recorder {
	t.Helper()
	r := &recorder{}
	f.Debounce, f.Ready = 20*time.Millisecond, make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, r.change, r.fail) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	<-f.Ready
	return r
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFileDeliversChangesOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v1")
	r := run(t, &File{Path: path})
	waitUntil(t, "the first version", func() bool { d, _ := r.snapshot(); return len(d) == 1 })

	// Same bytes again (and the start-up CheckOnStart look): nothing new.
	write(t, path, "v1")
	time.Sleep(200 * time.Millisecond)
	if d, _ := r.snapshot(); len(d) != 1 || d[0] != "v1" {
		t.Fatalf("delivered %q, want only v1", d)
	}
	write(t, path, "v2")
	waitUntil(t, "v2", func() bool { d, _ := r.snapshot(); return len(d) == 2 && d[1] == "v2" })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.versions[1].Name != path {
		t.Fatalf("version named %q, want %q", r.versions[1].Name, path)
	}
}

func TestFileReportsReadFailuresAndRecovers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	r := run(t, &File{Path: path}) // missing at start
	waitUntil(t, "the missing file to be reported", func() bool { _, e := r.snapshot(); return len(e) >= 1 })
	if _, e := r.snapshot(); !strings.Contains(e[0].Error(), "cannot read the agent configuration") {
		t.Fatalf("error %v", e[0])
	}
	write(t, path, "v1")
	waitUntil(t, "v1 once the file exists", func() bool { d, _ := r.snapshot(); return len(d) == 1 && d[0] == "v1" })

	// Too large: reported, not delivered cut short.
	write(t, path, strings.Repeat("x", MaxSize+1))
	waitUntil(t, "the oversized file to be reported", func() bool {
		_, e := r.snapshot()
		return len(e) >= 2 && strings.Contains(e[len(e)-1].Error(), "larger than")
	})
	if d, _ := r.snapshot(); len(d) != 1 {
		t.Fatalf("an oversized file was delivered: %d versions", len(d))
	}
}

// TestFileFollowsConfigMapSwap: a ConfigMap volume's update (kubelet's
// AtomicWriter: a new ..<ts> directory, ..data renamed over) is delivered.
func TestFileFollowsConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	swap := func(gen int, body string) {
		next := filepath.Join(dir, "..v"+string(rune('0'+gen)))
		if err := os.Mkdir(next, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(next, "config.yaml"), body)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(next), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	swap(1, "v1")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), filepath.Join(dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	r := run(t, &File{Path: filepath.Join(dir, "config.yaml")})
	waitUntil(t, "v1", func() bool { d, _ := r.snapshot(); return len(d) == 1 })
	swap(2, "v2")
	waitUntil(t, "v2 after the swap", func() bool { d, _ := r.snapshot(); return len(d) == 2 && d[1] == "v2" })
}
