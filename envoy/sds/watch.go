package sds

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher re-reads a token file whenever it may have changed and reports each new
// good token. A Kubernetes projected token is not rewritten in place: kubelet
// writes a new timestamped directory and swaps the "..data" symlink next to the
// file (AtomicWriter), so the file's own inode never changes and a watch on the
// file itself would see nothing. Watcher therefore watches the directories — the
// one the path names and the one it currently resolves into — and re-reads the
// path on any event there. Poll is a safety net for filesystems without inotify
// events (some bind mounts); 0 turns it off.
type Watcher struct {
	Path   string
	Poll   time.Duration
	Logger *slog.Logger
	// OnToken receives every token that differs from the last one reported (the
	// first one included). A bad read (empty, unreadable) never reaches it.
	OnToken func(token string)
	// OnReject, if set, receives every failed read; the last good token stays.
	OnReject func(err error)
}

// Run watches until ctx ends. last is the token already published, so an
// unchanged file does not produce a new version.
func (w *Watcher) Run(ctx context.Context, last string) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", w.Path, err)
	}
	defer fw.Close()
	watched := map[string]bool{}
	watchDirs := func() {
		dirs := []string{filepath.Dir(w.Path)}
		if real, err := filepath.EvalSymlinks(w.Path); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		for _, d := range dirs {
			if watched[d] {
				continue
			}
			if err := fw.Add(d); err != nil {
				w.Logger.Warn("cannot watch token directory; relying on polling", "dir", d, "err", err)
				continue
			}
			watched[d] = true
		}
	}
	watchDirs()
	if len(watched) == 0 && w.Poll <= 0 {
		return fmt.Errorf("cannot watch the directory of %s and polling is off (--poll-interval 0)", w.Path)
	}

	var tick <-chan time.Time
	if w.Poll > 0 {
		t := time.NewTicker(w.Poll)
		defer t.Stop()
		tick = t.C
	}
	reload := func() {
		tok, err := ReadToken(w.Path)
		if err != nil {
			w.Logger.Warn("token file not usable; still serving the last good token", "err", err)
			if w.OnReject != nil {
				w.OnReject(err)
			}
			return
		}
		if tok != last {
			last = tok
			w.OnToken(tok)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return fmt.Errorf("file watcher for %s closed", w.Path)
			}
			// The directory a watch was on may be gone (the old timestamped one);
			// forget it so a later symlink target in the same place is re-added.
			if ev.Has(fsnotify.Remove) && watched[ev.Name] {
				delete(watched, ev.Name)
			}
			watchDirs()
			reload()
		case err, ok := <-fw.Errors:
			if !ok {
				return fmt.Errorf("file watcher for %s closed", w.Path)
			}
			w.Logger.Warn("file watch error; re-reading the token", "err", err)
			reload()
		case <-tick:
			reload()
		}
	}
}
