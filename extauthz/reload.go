package extauthz

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Reloader rebuilds the Server's Snapshot when any of its input files change and
// swaps it in. A build that fails (a typo in the agent config, a bad directory, a
// Rego error) is logged and counted, and the last good snapshot stays in service
// (access.md §1).
type Reloader struct {
	Server *Server
	// Paths are the files and directories the snapshot is built from (agent config,
	// directory file, policy directory).
	Paths []string
	// Build makes a new snapshot from the files.
	Build func(ctx context.Context) (*Snapshot, error)
	Log   *slog.Logger
	// Poll re-reads the inputs this often even without file events (0: never). Some
	// bind mounts deliver no inotify events.
	Poll time.Duration
	// Debounce waits for a burst of events (editors write in several steps) to end.
	Debounce time.Duration
	// Ready, if set, is closed once the files are watched.
	Ready chan struct{}

	reloads     *prometheus.CounterVec
	lastSuccess prometheus.Gauge
	last        [sha256.Size]byte
}

// ReloadMetrics registers the reload counters. Call once, before Run.
func (r *Reloader) ReloadMetrics(reg prometheus.Registerer) error {
	r.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kubegate_authz_reloads_total",
		Help: "Reloads of agent config, directory and policy, by result (success, failure, unchanged).",
	}, []string{"result"})
	r.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kubegate_authz_last_reload_success_timestamp_seconds",
		Help: "When the snapshot in service was built.",
	})
	r.lastSuccess.SetToCurrentTime()
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{r.reloads, r.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("reload metrics: %w", err)
		}
	}
	return nil
}

// Run watches until ctx ends. The snapshot in service when Run starts is taken to
// match the files as they are now.
func (r *Reloader) Run(ctx context.Context) error {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Debounce == 0 {
		r.Debounce = 200 * time.Millisecond
	}
	if r.reloads == nil {
		if err := r.ReloadMetrics(nil); err != nil {
			return err
		}
	}
	r.last, _ = r.digest()

	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching the configuration: %w", err)
	}
	defer w.Close()
	watched := map[string]bool{}
	r.watchDirs(w, watched)
	if r.Ready != nil {
		close(r.Ready)
	}

	var tick <-chan time.Time
	if r.Poll > 0 {
		t := time.NewTicker(r.Poll)
		defer t.Stop()
		tick = t.C
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("the configuration file watcher stopped")
			}
			if ev.Has(fsnotify.Remove) && watched[ev.Name] {
				delete(watched, ev.Name)
			}
			debounce = time.After(r.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("the configuration file watcher stopped")
			}
			r.Log.Warn("configuration watch error; re-reading", "err", err)
			debounce = time.After(r.Debounce)
		case <-tick:
			r.reload(ctx)
		case <-debounce:
			debounce = nil
			// Kubernetes ConfigMap volumes swap a "..data" symlink to a new directory:
			// re-resolve what to watch after every burst.
			r.watchDirs(w, watched)
			r.reload(ctx)
		}
	}
}

// watchDirs watches the directory of every path and of what it resolves to, and
// every directory under a path that is a directory (the policy modules).
func (r *Reloader) watchDirs(w *fsnotify.Watcher, watched map[string]bool) {
	add := func(dir string) {
		if dir == "" || watched[dir] {
			return
		}
		if err := w.Add(dir); err != nil {
			r.Log.Warn("cannot watch a configuration directory; changes there are seen only by polling", "dir", dir, "err", err)
			return
		}
		watched[dir] = true
	}
	for _, p := range r.Paths {
		add(filepath.Dir(p))
		if real, err := filepath.EvalSymlinks(p); err == nil {
			add(filepath.Dir(real))
			if fi, err := os.Stat(real); err == nil && fi.IsDir() {
				_ = filepath.WalkDir(real, func(path string, d fs.DirEntry, err error) error {
					if err == nil && d.IsDir() {
						add(path)
					}
					return nil
				})
			}
		}
	}
}

func (r *Reloader) reload(ctx context.Context) {
	sum, err := r.digest()
	if err == nil && sum == r.last {
		r.reloads.WithLabelValues("unchanged").Inc()
		return
	}
	snap, berr := r.Build(ctx)
	if berr == nil {
		berr = r.Server.Swap(snap)
	}
	if berr != nil {
		r.reloads.WithLabelValues("failure").Inc()
		r.Log.Error("configuration reload failed; the last good configuration stays in service", "err", berr.Error())
		return
	}
	r.last = sum
	r.reloads.WithLabelValues("success").Inc()
	r.lastSuccess.SetToCurrentTime()
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
