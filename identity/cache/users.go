package cache

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sync/singleflight"

	"kubegate.dev/kubegate/identity"
)

// UserLookup finds an active user by username; found is false for an unknown or
// inactive one (the shape of identity/oidc.UserLookup and identity/session.UserLookup).
type UserLookup interface {
	LookupUser(ctx context.Context, username string) (identity.User, bool, error)
}

// Users is the caching decorator for a UserLookup: a found user is reused for TTL,
// "not found" for FailureTTL; errors are never cached. Browser sessions with GitLab
// use it: every Dashboard request checks that the session's user is still active,
// and without it each would be a GitLab call. A user blocked in GitLab keeps a
// session working at most TTL, as a cached token does; a logout is not cached (the
// session package checks it on every request).
type Users struct {
	inner   UserLookup
	opts    Options
	store   *store[userAnswer]
	flights singleflight.Group
	m       *metrics
}

type userAnswer struct {
	u     identity.User
	found bool
	err   error
}

// NewUsers wraps inner. Call Close when done with it.
func NewUsers(inner UserLookup, opts Options) (*Users, error) {
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	s, err := newStore(opts, func(a userAnswer) int { return len(a.u.Username) + 24 })
	if err != nil {
		return nil, err
	}
	m, err := newMetrics("users", opts.Registerer, s.size)
	if err != nil {
		s.close()
		return nil, err
	}
	return &Users{inner: inner, opts: opts, store: s, m: m}, nil
}

// LookupUser answers from the cache or asks the wrapped lookup once for all
// concurrent lookups of the username (GitLab matches usernames without regard to
// case, and so does the key).
func (c *Users) LookupUser(ctx context.Context, username string) (identity.User, bool, error) {
	key := newDigest(16 + len(username)).str("user").str(strings.ToLower(username)).sum()
	if a, ok := c.store.get(key); ok {
		c.m.hits.Inc()
		return a.u, a.found, nil
	}
	c.m.misses.Inc()
	a, err := coalesce(ctx, &c.flights, key, c.opts.LoadTimeout, func(lctx context.Context) userAnswer {
		u, found, err := c.inner.LookupUser(lctx, username)
		switch {
		case err != nil:
			c.m.loads.WithLabelValues("error").Inc()
			return userAnswer{err: err}
		case found:
			c.m.loads.WithLabelValues("found").Inc()
			c.store.put(key, userAnswer{u: u, found: true}, c.opts.TTL)
		default:
			c.m.loads.WithLabelValues("not_found").Inc()
			c.store.put(key, userAnswer{}, c.opts.FailureTTL)
		}
		return userAnswer{u: u, found: found}
	})
	if err != nil {
		return identity.User{}, false, identity.SourceUnavailable("identity backend", fmt.Errorf("gave up waiting: %w", err))
	}
	return a.u, a.found, a.err
}

// Close stops the cache's background goroutine.
func (c *Users) Close() { c.store.close() }
