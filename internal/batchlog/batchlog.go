// Package batchlog writes a service's log lines in batches. kubegate authz logs one
// line per decision; written one write(2) each, at real size those system calls
// were about a third of the server CPU a no-op ext_authz server spends per Check
// (`make bench-realsize` with --log-level warn against info). Envoy buffers its own
// access logs the same way (file_flush_interval, 1 s by default).
//
// Lines reach the output at most Interval after they were logged, at once when the
// buffer passes MaxBuffered, and at Close. Records at level Warn and above are
// written at once, with every line before them (Handler), so an operator never
// waits for an error. What a crash that skips Close (kill -9) loses is bounded by
// Interval.
package batchlog

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// MaxBuffered is the most bytes held before they are written regardless of the
// interval: a few hundred decision lines.
const MaxBuffered = 64 << 10

// Writer batches writes to Out. It is safe for concurrent use.
type Writer struct {
	mu       sync.Mutex
	out      io.Writer
	interval time.Duration
	buf      []byte
	timer    *time.Timer
	pending  bool // the timer is armed
	closed   bool
}

// New returns a Writer that writes to out at most interval after each line; an
// interval of zero or less writes every line at once.
func New(out io.Writer, interval time.Duration) *Writer {
	return &Writer{out: out, interval: interval}
}

// Write keeps a copy of p for the next flush (p may be reused by the caller).
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.interval <= 0 || w.closed {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
		return w.out.Write(p)
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= MaxBuffered {
		return len(p), w.flushLocked()
	}
	if !w.pending {
		w.pending = true
		if w.timer == nil {
			w.timer = time.AfterFunc(w.interval, func() { _ = w.Flush() })
		} else {
			w.timer.Reset(w.interval)
		}
	}
	return len(p), nil
}

// Flush writes what is buffered now.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.pending {
		w.timer.Stop()
		w.pending = false
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.out.Write(w.buf)
	if cap(w.buf) > 4*MaxBuffered {
		w.buf = nil // one burst of huge lines must not keep its buffer forever
	} else {
		w.buf = w.buf[:0]
	}
	return err
}

// Close writes what is buffered; later writes go out at once.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return w.flushLocked()
}

// Handler wraps h, which writes to w, so that a record at level Warn or above is
// written at once together with every line buffered before it.
func Handler(h slog.Handler, w *Writer) slog.Handler { return urgent{h, w} }

type urgent struct {
	slog.Handler
	w *Writer
}

func (u urgent) Handle(ctx context.Context, r slog.Record) error {
	err := u.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		if ferr := u.w.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (u urgent) WithAttrs(attrs []slog.Attr) slog.Handler {
	return urgent{u.Handler.WithAttrs(attrs), u.w}
}

func (u urgent) WithGroup(name string) slog.Handler { return urgent{u.Handler.WithGroup(name), u.w} }
