//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package tokencache

import (
	"context"
	"errors"
	"time"
)

// lock is not implemented where flock(2) is missing: without it concurrent
// invocations would each create a token, so the cache refuses to run rather than
// pretend to coordinate.
func lock(context.Context, string, time.Duration) (func() error, error) {
	return nil, errors.New("the token cache needs flock(2), which this platform lacks; use --token-file with a token you created")
}
