package sds

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"kubegate.dev/kubegate/internal/filewatch"
)

// watchDebounce lets a kubelet symlink swap (several events) end before the token is
// re-read; it is well inside the one second a rotation may take to reach Envoy.
const watchDebounce = 50 * time.Millisecond

// Watcher re-reads a token file whenever it may have changed and reports each new
// good token. It follows a Kubernetes projected token's "..data" symlink swap (see
// package filewatch) and reacts only to the token's own name and that swap, never to
// other files in the token's directory: the process's own log file may sit there.
// Poll is a safety net for filesystems without inotify events (some bind mounts); 0
// turns it off.
type Watcher struct {
	Path   string
	Poll   time.Duration
	Logger *slog.Logger
	// OnToken receives every token that differs from the last one reported (the
	// first one included). A bad read (empty, unreadable) never reaches it.
	OnToken func(token string)
	// OnReject, if set, receives every failed read; the last good token stays.
	OnReject func(err error)
	// WarnEvery is the least time between two "token file not usable" warnings
	// while the file stays bad (the first is logged at once); zero means
	// filewatch.DefaultRepeatEvery.
	WarnEvery time.Duration
}

// Run watches until ctx ends. last is the token already published, so an
// unchanged file does not produce a new version.
func (w *Watcher) Run(ctx context.Context, last string) error {
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	warn := &filewatch.Repeats{Every: w.WarnEvery}
	// CheckOnStart: the caller read last before Run; a rotation in between would
	// otherwise wait for the next poll (or, with polling off, the next rotation).
	fw := &filewatch.Watcher{Paths: []string{w.Path}, Poll: w.Poll, Debounce: watchDebounce, Log: log, CheckOnStart: true}
	err := fw.Run(ctx, func() {
		tok, err := ReadToken(w.Path)
		if err != nil {
			if ok, suppressed := warn.Allow(); ok {
				log.Warn("token file not usable; still serving the last good token", "err", err, "suppressed", suppressed)
			}
			if w.OnReject != nil {
				w.OnReject(err)
			}
			return
		}
		warn.Reset()
		if tok != last {
			last = tok
			w.OnToken(tok)
		}
	})
	if err != nil {
		return fmt.Errorf("watching the token file: %w", err)
	}
	return nil
}
