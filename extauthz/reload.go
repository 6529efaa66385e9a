package extauthz

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/internal/filewatch"
)

// Reloader rebuilds what the Server decides with when any of its input files
// change and swaps it in: the whole Snapshot of a one-agent Server (Build), or
// whatever Reload rebuilds (kubegate authz: the directory and operator modules
// every agent shares, Server.SwapShared; each agent's configuration has its own
// agentconfig.Source, Server.RunAgent). It reacts only to events about those files (package filewatch: their
// names, a Kubernetes "..data" swap, anything inside the policy directory), not to
// other files in their directories, such as its own log. A build that fails (a typo in the agent config, a bad directory, a
// Rego error) is logged and counted, and the last good snapshot stays in service
// (access.md §1).
type Reloader struct {
	Server *Server
	// Paths are the files and directories the snapshot is built from (agent config,
	// directory file, policy directory).
	Paths []string
	// Build makes a new snapshot from the files, for Server.Swap (one-agent
	// servers).
	Build func(ctx context.Context) (*Snapshot, error)
	// Reload, if set, is used instead of Build and Swap: it rebuilds from the
	// files and installs the result, or returns an error and changes nothing.
	Reload func(ctx context.Context) error
	// Metrics receive the reloads (nil: ReloadMetrics makes them), under the
	// agent label Label (default SharedLabel).
	Metrics *ReloadMetrics
	Label   string
	Log     *slog.Logger
	// Poll re-reads the inputs this often even without file events (0: never). Some
	// bind mounts deliver no inotify events.
	Poll time.Duration
	// Debounce waits for a burst of events (editors write in several steps) to end.
	Debounce time.Duration
	// Ready, if set, is closed once the files are watched.
	Ready chan struct{}

	// FailureLogEvery is the least time between two "reload failed" lines while the
	// files stay broken (the first is logged at once; every failure is counted);
	// zero means filewatch.DefaultRepeatEvery.
	FailureLogEvery time.Duration

	failures  filewatch.Repeats
	last      [sha256.Size]byte
	baselined bool
}

// Baseline records the files' content as the content the first snapshot is built
// from. Call it before that build: a file that changes during the build (or
// before Run has its watch in place) then differs from the baseline and is
// reloaded. Without Baseline, Run takes the files as they are when it starts.
func (r *Reloader) Baseline() {
	r.last, _ = r.digest()
	r.baselined = true
}

// ReloadMetrics makes and registers reload metrics of the Reloader's own, for a
// Reloader not given the Server's (Metrics). Call once, before Run.
func (r *Reloader) ReloadMetrics(reg prometheus.Registerer) error {
	m, err := NewReloadMetrics(reg)
	if err != nil {
		return err
	}
	r.Metrics = m
	return nil
}

func (r *Reloader) label() string {
	if r.Label == "" {
		return SharedLabel
	}
	return r.Label
}

// Run watches until ctx ends. The snapshot in service when Run starts is taken to
// match the files as Baseline saw them (or as they are now, without Baseline).
func (r *Reloader) Run(ctx context.Context) error {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Debounce == 0 {
		r.Debounce = 200 * time.Millisecond
	}
	r.failures.Every = r.FailureLogEvery
	if r.Metrics == nil {
		if err := r.ReloadMetrics(nil); err != nil {
			return err
		}
	}
	// The snapshot in service was built just before Run.
	r.Metrics.lastSuccess.WithLabelValues(r.label()).SetToCurrentTime()
	if !r.baselined {
		r.Baseline()
	}
	// CheckOnStart compares the files with the baseline once the watch is in place:
	// a change in between fires no event the watcher sees.
	w := &filewatch.Watcher{Paths: r.Paths, Poll: r.Poll, Debounce: r.Debounce, Log: r.Log, Ready: r.Ready, CheckOnStart: true}
	if err := w.Run(ctx, func() { r.reload(ctx) }); err != nil {
		return fmt.Errorf("watching the configuration: %w", err)
	}
	return nil
}

func (r *Reloader) reload(ctx context.Context) {
	sum, err := r.digest()
	if err == nil && sum == r.last {
		r.Metrics.unchanged(r.label())
		return
	}
	var berr error
	if r.Reload != nil {
		berr = r.Reload(ctx)
	} else {
		var snap *Snapshot
		if snap, berr = r.Build(ctx); berr == nil {
			berr = r.Server.Swap(snap)
		}
	}
	if berr != nil {
		r.Metrics.failure(r.label())
		if ok, suppressed := r.failures.Allow(); ok {
			r.Log.Error("configuration reload failed; the last good configuration stays in service", "err", berr.Error(), "suppressed", suppressed)
		}
		return
	}
	r.failures.Reset()
	r.last = sum
	r.Metrics.success(r.label())
	r.Log.Info("configuration reloaded")
}

// digest hashes the content of every input file, so an event that changed nothing
// (a touch, a rewrite with the same bytes) does not rebuild and flush caches.
func (r *Reloader) digest() ([sha256.Size]byte, error) {
	h := sha256.New()
	var firstErr error
	for _, p := range r.Paths {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real // a ConfigMap's files and a policy directory may be symlinks
		}
		var files []string
		_ = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				firstErr = err
				return nil
			}
			if !d.IsDir() {
				files = append(files, path)
			}
			return nil
		})
		sort.Strings(files)
		for _, f := range files {
			fmt.Fprintf(h, "%s\x00", f)
			file, err := os.Open(f)
			if err != nil {
				firstErr = err
				continue
			}
			_, err = io.Copy(h, file)
			file.Close()
			if err != nil {
				firstErr = err
			}
		}
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum, firstErr
}
