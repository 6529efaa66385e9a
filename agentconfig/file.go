package agentconfig

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"time"

	"kubegate.dev/kubegate/internal/boundedread"
	"kubegate.dev/kubegate/internal/filewatch"
)

// MaxSize bounds an agent configuration file; package policy refuses larger ones
// too. A file over it is reported to onError, never delivered cut short.
const MaxSize = 4 << 20

// File is an agent configuration in a local file (a copy of
// .gitlab/agents/<name>/config.yaml, often a ConfigMap key), watched with package
// filewatch, so a Kubernetes symlink swap is seen as well as an edit in place.
// A version is delivered only when its content differs from the last one
// delivered: a touch, a rewrite with the same bytes or a poll tick changes nothing.
type File struct {
	// Path is the file.
	Path string
	// Poll also re-reads the file this often without file events (0: never), for
	// filesystems that deliver none.
	Poll time.Duration
	// Debounce waits for a burst of events to end (0: filewatch.DefaultDebounce).
	Debounce time.Duration
	// Log receives the watcher's own warnings; nil discards them.
	Log *slog.Logger
	// Ready, if set, is closed once the file is watched.
	Ready chan struct{}
}

var _ Source = (*File)(nil)

// Run reads the file, delivers it, and then delivers each changed version until
// ctx ends. A read that fails (the file missing, unreadable, too large) goes to
// onError and the last version delivered stays the one in service. The watch's
// CheckOnStart reads once more when the watch is in place, so a change between
// the first read and the watch is not lost.
func (f *File) Run(ctx context.Context, onChange func(Version), onError func(error)) error {
	var last [sha256.Size]byte
	delivered := false
	look := func() {
		data, err := f.read()
		if err != nil {
			onError(err)
			return
		}
		sum := sha256.Sum256(data)
		if delivered && sum == last {
			return
		}
		last, delivered = sum, true
		onChange(Version{Name: f.Path, Data: data})
	}
	look()
	w := &filewatch.Watcher{Paths: []string{f.Path}, Poll: f.Poll, Debounce: f.Debounce, Log: f.Log, Ready: f.Ready, CheckOnStart: true}
	if err := w.Run(ctx, look); err != nil {
		return fmt.Errorf("watching the agent configuration %s: %w", f.Path, err)
	}
	return nil
}

// Read reads the file once, bounded and with Run's errors, without watching it:
// for a caller that parses it ahead of Run's first delivery (extauthz.Preparsed).
func (f *File) Read() ([]byte, error) { return f.read() }

func (f *File) read() ([]byte, error) {
	file, err := os.Open(f.Path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the agent configuration: %w", err)
	}
	defer file.Close()
	data, tooLarge, err := boundedread.File(file, MaxSize)
	switch {
	case err != nil:
		return nil, fmt.Errorf("cannot read the agent configuration %s: %w", f.Path, err)
	case tooLarge:
		return nil, fmt.Errorf("%s: the file is larger than %d MiB; is it the agent configuration?", f.Path, MaxSize>>20)
	}
	return data, nil
}
