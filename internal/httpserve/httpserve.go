// Package httpserve serves kubegate's small plain-HTTP listeners (the GitLab
// webhook, the browser listener) one way: bounded headers and timeouts, so a
// slow or oversized client holds nothing for long, and a graceful stop.
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// MaxHeaderBytes bounds a request's headers: a session cookie, a CSRF token and a
// browser's usual headers fit several times over.
const MaxHeaderBytes = 16 << 10

// Serve serves h on ln until ctx ends, then stops gracefully (in-flight requests
// get 5 s).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
