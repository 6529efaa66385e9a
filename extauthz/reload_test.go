package extauthz

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
)

const (
	userModeConfig  = "user_access:\n  access_as: {user: {}}\n  projects: [{id: group-1/project-1}]\n"
	agentModeConfig = "user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n"
)

// accessAs asks the served Check what mode alice's request gets.
func (f *fixture) accessAs(t *testing.T) string {
	t.Helper()
	resp := f.check(t, checkRequest("GET", podsPath, pat(aliceToken)))
	d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: resp.GetDynamicMetadata()}})
	if err != nil {
		t.Fatalf("%v: %v", resp, err)
	}
	return d.AccessAs
}

// eventually waits for cond, failing after a generous deadline: file events are
// asynchronous, and this checks that they arrive, not how fast.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startReloader(t *testing.T, f *fixture, paths []string, build func(context.Context) (*Snapshot, error)) *Reloader {
	t.Helper()
	r := &Reloader{Server: f.server, Paths: paths, Build: build, Debounce: 20 * time.Millisecond, Ready: make(chan struct{})}
	if err := r.ReloadMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	<-r.Ready
	return r
}

func TestReloadOnFileChange(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, userModeConfig)
	f := start(t, cfg, "")
	r := startReloader(t, f, []string{cfg}, func(context.Context) (*Snapshot, error) {
		return snapshotOrError(cfg, f.backend)
	})
	if got := f.accessAs(t); got != "user" {
		t.Fatalf("start: %s", got)
	}

	writeFile(t, cfg, agentModeConfig)
	eventually(t, "agent mode after the edit", func() bool { return f.accessAs(t) == "agent" })

	// A broken edit keeps the last good configuration and counts a failure. It is
	// written whole (a rename): written in place, the watcher may read the file
	// truncated, and an empty agent configuration is a valid one that grants
	// nobody anything, which would be served until the bad content arrives.
	broken := filepath.Join(dir, ".broken.tmp")
	writeFile(t, broken, "user_access:\n  access_as: {agent: {}, user: {}}\n")
	if err := os.Rename(broken, cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failed reload to be counted", func() bool { return testutil.ToFloat64(r.Metrics.reloads.WithLabelValues(SharedLabel, "failure")) >= 1 })
	if got := f.accessAs(t); got != "agent" {
		t.Fatalf("after a bad edit the mode is %s; the last good config must stay", got)
	}

	// An atomic rename, as editors and config management tools write files.
	tmp := filepath.Join(dir, ".config.yaml.tmp")
	writeFile(t, tmp, userModeConfig)
	if err := os.Rename(tmp, cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "user mode after the rename", func() bool { return f.accessAs(t) == "user" })
}

// kubegate authz takes its baseline, builds the first snapshot (seconds for a large
// directory) and only then watches: an edit in that gap fires no event anyone sees.
// The baseline and the look Run takes once its watch is in place catch it.
func TestEditDuringStartUpIsReloaded(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, userModeConfig)
	r := &Reloader{Paths: []string{cfg}, Debounce: 20 * time.Millisecond, Ready: make(chan struct{})}
	r.Baseline()
	f := start(t, cfg, "") // the first snapshot, from the file as the baseline saw it
	writeFile(t, cfg, agentModeConfig)
	r.Server = f.server
	r.Build = func(context.Context) (*Snapshot, error) { return snapshotOrError(cfg, f.backend) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	eventually(t, "agent mode from the edit made before the watch", func() bool { return f.accessAs(t) == "agent" })
}

// TestReloadConfigMapSymlinkSwap follows how a Kubernetes ConfigMap volume updates:
// config.yaml → ..data/config.yaml, ..data → ..<timestamp>, and the ..data symlink
// is replaced by a rename (kubelet's AtomicWriter).
func TestReloadConfigMapSymlinkSwap(t *testing.T) {
	vol := t.TempDir()
	writeVersion := func(name, body string) {
		if err := os.MkdirAll(filepath.Join(vol, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(vol, name, "config.yaml"), body)
		tmpLink := filepath.Join(vol, "..data_tmp")
		if err := os.Symlink(name, tmpLink); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmpLink, filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..v1", userModeConfig)
	cfg := filepath.Join(vol, "config.yaml")
	if err := os.Symlink("..data/config.yaml", cfg); err != nil {
		t.Fatal(err)
	}
	f := start(t, cfg, "")
	startReloader(t, f, []string{cfg}, func(context.Context) (*Snapshot, error) { return snapshotOrError(cfg, f.backend) })
	writeVersion("..v2", agentModeConfig)
	eventually(t, "agent mode after the ConfigMap update", func() bool { return f.accessAs(t) == "agent" })
}

func TestReloadSkipsUnchangedFiles(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, userModeConfig)
	f := start(t, cfg, "")
	var builds atomic.Int64
	r := startReloader(t, f, []string{cfg}, func(context.Context) (*Snapshot, error) {
		builds.Add(1)
		return snapshotOrError(cfg, f.backend)
	})
	writeFile(t, cfg, userModeConfig) // same bytes: an event, but nothing to do
	eventually(t, "the event to be handled", func() bool {
		return testutil.ToFloat64(r.Metrics.reloads.WithLabelValues(SharedLabel, "unchanged")) >= 1
	})
	if n := builds.Load(); n != 0 {
		t.Fatalf("rebuilt %d times for identical content (a rebuild flushes the decision cache)", n)
	}
}

// TestReloadDoesNotFeedOnItsOwnLog is issue 10 item 7 for authz: the agent config is
// gone and the service logs into the config's directory. Each failed rebuild logs
// an error, a file event in the watched directory; reacting to it would rebuild and
// log again without end. Within a second the rebuilds and log lines stay a handful.
func TestReloadDoesNotFeedOnItsOwnLog(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, userModeConfig)
	f := start(t, cfg, "")
	logFile, err := os.Create(filepath.Join(dir, "authz.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	var builds atomic.Int64
	r := &Reloader{Server: f.server, Paths: []string{cfg}, Debounce: 20 * time.Millisecond, Ready: make(chan struct{}),
		Log: slog.New(slog.NewJSONHandler(logFile, nil)),
		// Every failure is logged here: the name filter alone must break the loop.
		FailureLogEvery: time.Nanosecond,
		Build: func(context.Context) (*Snapshot, error) {
			builds.Add(1)
			return snapshotOrError(cfg, f.backend)
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Ready
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(logFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(string(data), "\n")
	t.Logf("in 1s: %d rebuilds, %d log lines", builds.Load(), lines)
	if builds.Load() == 0 {
		t.Fatal("the config's removal was not noticed")
	}
	if builds.Load() >= 10 || lines >= 10 {
		t.Fatalf("in 1s: %d rebuilds and %d log lines; the reloader feeds on its own log", builds.Load(), lines)
	}
	if got := f.accessAs(t); got != "user" {
		t.Fatalf("after the config vanished the mode is %s; the last good config must stay", got)
	}
}

// TestReloadFailureLogIsRateLimited: while the files stay broken, the first failure
// is logged and later ones are counted, not logged each time.
func TestReloadFailureLogIsRateLimited(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, cfg, userModeConfig)
	f := start(t, cfg, "")
	var logged strings.Builder
	var mu sync.Mutex
	r := &Reloader{Server: f.server, Paths: []string{cfg}, Debounce: 10 * time.Millisecond, Ready: make(chan struct{}),
		Log:   slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logged}, nil)),
		Build: func(context.Context) (*Snapshot, error) { return snapshotOrError(cfg, f.backend) }}
	if err := r.ReloadMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Ready
	for i := range 5 {
		writeFile(t, cfg, fmt.Sprintf("user_access:\n  access_as: {agent: {}, user: {}}\n# %d\n", i))
		n := float64(i + 1)
		eventually(t, "the failed reload to be counted", func() bool { return testutil.ToFloat64(r.Metrics.reloads.WithLabelValues(SharedLabel, "failure")) >= n })
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logged.String(), "configuration reload failed"); n != 1 {
		t.Fatalf("%d failure lines for 5 failures within the interval; want 1:\n%s", n, logged.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
