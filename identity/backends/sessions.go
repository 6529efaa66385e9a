package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"kubegate.dev/kubegate/identity/session"
)

// validateSessions checks the --session-* flags.
func (o *Options) validateSessions() []error {
	var errs []error
	if o.SessionIdleTimeout <= 0 || o.SessionMaxAge <= 0 {
		errs = append(errs, errors.New("--session-idle-timeout and --session-max-age must both be positive"))
	} else if o.SessionIdleTimeout > o.SessionMaxAge {
		errs = append(errs, fmt.Errorf("--session-idle-timeout (%s) must not be longer than --session-max-age (%s)", o.SessionIdleTimeout, o.SessionMaxAge))
	}
	if o.SessionMaxAge > session.MaxMaxAge {
		errs = append(errs, fmt.Errorf("--session-max-age (%s) must be at most 168h (7 days): a copied cookie works until then", o.SessionMaxAge))
	}
	return errs
}

// buildSessions makes the session Manager when --session-key-file is set.
func (b *Backends) buildSessions(_ context.Context, o Options, log *slog.Logger) error {
	if o.SessionKeyFile == "" {
		log.Info("browser sessions off (no --session-key-file): session cookies are refused")
		return nil
	}
	m, err := session.New(session.Config{KeyFile: o.SessionKeyFile, IdleTimeout: o.SessionIdleTimeout, MaxAge: o.SessionMaxAge,
		Log: log.With("component", "session")})
	if err != nil {
		return fmt.Errorf("--session-key-file: %w", err)
	}
	log.Warn("browser session logouts are kept in this process's memory (one replica only): a restart logs everyone out, and a logout on one replica is not seen by another")
	b.Sessions = m
	b.runners = append(b.runners, m.Run)
	return nil
}

// Run runs the identity parts that work in the background — today the session key
// file watch (key rotation) — until ctx ends. It returns nil at once when there is
// nothing to run, and the first error of any part (the others are stopped then).
func (b *Backends) Run(ctx context.Context) error {
	if len(b.runners) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(b.runners))
	var wg sync.WaitGroup
	for i, run := range b.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = run(ctx); errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
