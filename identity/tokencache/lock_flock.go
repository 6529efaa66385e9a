//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package tokencache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockPoll is how often a waiting invocation tries the lock again. flock's blocking
// form cannot be cancelled, so the non-blocking form is retried until the deadline.
const lockPoll = 20 * time.Millisecond

// lock takes an exclusive flock(2) on path, waiting up to wait (or until ctx ends).
// flock locks belong to the open file description, so two opens of the same file,
// even in one process, exclude each other; the kernel releases the lock when the
// process exits, however it exits.
func lock(ctx context.Context, path string, wait time.Duration) (unlock func() error, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the token cache lock %s: %w", path, err)
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(lockPoll)
	defer tick.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() error {
				uerr := syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				return errors.Join(uerr, f.Close())
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking the token cache %s: %w", path, err)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			_ = f.Close()
			return nil, fmt.Errorf("another kubegate get-token has held the token cache lock %s for more than %s; if none is running, try again (the lock is released when that process exits)", path, wait)
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for the token cache lock %s: %w", path, ctx.Err())
		}
	}
}
