// Package filewatch tells a service when the files it was configured from may have
// changed, including files behind Kubernetes' symlink swaps. It is shared by
// `kubegate xds` (the agent token) and `kubegate authz` (agent config, directory,
// policy modules).
//
// A Kubernetes ConfigMap, Secret or projected volume is not rewritten in place:
// kubelet's AtomicWriter writes a new timestamped directory "..<timestamp>", points a
// new symlink "..data_tmp" at it, renames that over "..data" and removes the old
// directory; the visible files are symlinks "name -> ..data/name"
// (kubernetes/pkg/volume/util/atomic_writer.go). The file's own inode never changes,
// so a watch on the file would see nothing. Watcher therefore watches directories —
// the one each path names and the one it currently resolves into — and, after each
// burst, re-resolves what to watch.
//
// It reacts only to events about the watched paths themselves: the path's own name,
// what it resolves to, anything inside a watched directory path, a "..data" swap,
// and the removal of a watched directory. Everything else in those directories is
// ignored. That matters: a process whose log file sits next to its token file must
// not re-read the token (and log about it) on each of its own log writes — that was
// a feedback loop of tens of thousands of lines a second (issue 10, item 7).
package filewatch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DataLink is the symlink kubelet's AtomicWriter swaps to publish a new version of a
// volume's files.
const DataLink = "..data"

// DefaultDebounce is how long Watcher waits for a burst of events to end when
// Debounce is zero: editors and kubelet write in several steps.
const DefaultDebounce = 100 * time.Millisecond

// Watcher calls a function whenever any of Paths may have changed.
type Watcher struct {
	// Paths are the files and directories to follow. A directory path is followed
	// with everything below it.
	Paths []string
	// Poll also calls OnChange this often without any event (0: never), for
	// filesystems that deliver no inotify events (some bind mounts).
	Poll time.Duration
	// Debounce waits this long after the last relevant event before calling
	// OnChange; zero means DefaultDebounce.
	Debounce time.Duration
	// Log receives the watcher's own warnings (a directory that cannot be watched);
	// nil discards them.
	Log *slog.Logger
	// Ready, if set, is closed once the directories are watched.
	Ready chan struct{}
	// CheckOnStart calls OnChange once as soon as the directories are watched. A
	// caller reads its files before Run; a change between that read and the watch
	// fires no event it will ever see, and without polling it would serve the old
	// content until the next change.
	CheckOnStart bool
}

// Run watches until ctx ends, calling onChange (from this goroutine only) after each
// burst of relevant events, after a watch error and on every Poll tick. It fails at
// once when no directory can be watched and polling is off: nothing would ever be
// seen.
func (w *Watcher) Run(ctx context.Context, onChange func()) error {
	log := w.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	debounceFor := w.Debounce
	if debounceFor <= 0 {
		debounceFor = DefaultDebounce
	}
	paths := make([]string, 0, len(w.Paths))
	for _, p := range w.Paths {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		paths = append(paths, filepath.Clean(p))
	}

	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", strings.Join(paths, ", "), err)
	}
	defer fw.Close()
	s := &state{fw: fw, log: log, paths: paths, watched: map[string]bool{}}
	s.watch()
	if len(s.watched) == 0 && w.Poll <= 0 {
		return fmt.Errorf("cannot watch the directory of %s and polling is off: make the directory watchable or turn polling on", strings.Join(paths, ", "))
	}
	if w.Ready != nil {
		close(w.Ready)
	}
	if w.CheckOnStart {
		onChange()
	}

	var tick <-chan time.Time
	if w.Poll > 0 {
		t := time.NewTicker(w.Poll)
		defer t.Stop()
		tick = t.C
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("the file watcher stopped")
			}
			if s.relevant(ev) {
				debounce = time.After(debounceFor)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("the file watcher stopped")
			}
			// An overflow loses events: look again rather than trust the silence.
			log.Warn("file watch error; re-reading", "err", err)
			debounce = time.After(debounceFor)
		case <-tick:
			onChange()
		case <-debounce:
			debounce = nil
			s.watch()
			onChange()
		}
	}
}

// state is what one Run knows: the directories under watch and, per path, what it
// resolved to when last looked at.
type state struct {
	fw       *fsnotify.Watcher
	log      *slog.Logger
	paths    []string
	watched  map[string]bool
	resolved map[string]bool // the paths and what they resolve to
	trees    []string        // directory paths (and their resolutions), followed with their contents
}

// watch (re-)resolves every path and adds the directories to watch: each path's
// parent, the parent of what it resolves to and, for a directory, every directory
// below it.
func (s *state) watch() {
	s.resolved = map[string]bool{}
	s.trees = s.trees[:0]
	add := func(dir string) {
		if dir == "" || s.watched[dir] {
			return
		}
		if err := s.fw.Add(dir); err != nil {
			s.log.Warn("cannot watch a directory; changes there are seen only by polling", "dir", dir, "err", err)
			return
		}
		s.watched[dir] = true
	}
	for _, p := range s.paths {
		s.resolved[p] = true
		add(filepath.Dir(p))
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue // missing for now: its name in its parent is still watched
		}
		s.resolved[real] = true
		add(filepath.Dir(real))
		if fi, err := os.Stat(real); err == nil && fi.IsDir() {
			s.trees = append(s.trees, p, real)
			_ = filepath.WalkDir(real, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					add(path)
				}
				return nil
			})
		}
	}
}

// relevant reports whether ev may concern one of the paths. It also forgets a
// watched directory that is gone, so that a later directory of the same name (the
// next symlink target) is watched again.
func (s *state) relevant(ev fsnotify.Event) bool {
	name := filepath.Clean(ev.Name)
	if s.watched[name] {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			delete(s.watched, name)
			_ = s.fw.Remove(name)
		}
		return true
	}
	if s.resolved[name] || filepath.Base(name) == DataLink {
		return true
	}
	for _, t := range s.trees {
		if strings.HasPrefix(name, t+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
