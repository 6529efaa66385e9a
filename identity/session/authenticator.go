package session

import (
	"context"
	"errors"
	"fmt"

	"kubegate.dev/kubegate/identity"
)

// UserLookup finds an active user by username; found is false for an unknown or
// inactive one (the same shape as identity/oidc.UserLookup, so the directory and
// GitLab backends serve both).
type UserLookup interface {
	LookupUser(ctx context.Context, username string) (identity.User, bool, error)
}

// UserLookupFunc adapts a function to UserLookup.
type UserLookupFunc func(ctx context.Context, username string) (identity.User, bool, error)

func (f UserLookupFunc) LookupUser(ctx context.Context, username string) (identity.User, bool, error) {
	return f(ctx, username)
}

// Authenticator returns the identity.Authenticator for session cookies (access.md
// §2.3): "not mine" for any other credential type. A session is accepted when its
// cookie opens (ours, untampered, not expired), the CSRF token is the session's
// own, it is not revoked, and its user still exists and is active with the same
// numeric id. Do not put it behind the identity cache: a cached success would
// outlive a logout.
func (m *Manager) Authenticator(users UserLookup) identity.Authenticator {
	return &authenticator{m: m, users: users}
}

type authenticator struct {
	m     *Manager
	users UserLookup
}

func (a *authenticator) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	if cred.Type != identity.AccessSessionCookie {
		return nil, false, nil
	}
	s, err := a.m.open(cred.Secret)
	if err != nil {
		return nil, false, err
	}
	if !s.CSRFMatches(cred.CSRF) {
		why := "the CSRF token is not this session's"
		if cred.CSRF == "" {
			why = "no CSRF token"
		}
		return nil, false, identity.Rejected(identity.ReasonCSRF, fmt.Errorf("%s: %s", s, why))
	}
	if err := a.m.checkRevoked(ctx, s); err != nil {
		return nil, false, err
	}
	u, found, err := a.users.LookupUser(ctx, s.User.Username)
	if err != nil {
		return nil, false, identity.AsError(err)
	}
	if !found {
		return nil, false, identity.Rejected(identity.ReasonInactive, fmt.Errorf("%s: the user no longer exists or is not active", s))
	}
	if u.ID != s.User.ID {
		return nil, false, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("%s: sealed for user id %d, but %s is id %d now", s, s.User.ID, u.Username, u.ID))
	}
	if u.ID <= 0 {
		return nil, false, identity.Rejected(identity.ReasonInvalid, errors.New("the user lookup returned no user id"))
	}
	return &identity.Identity{User: u, AccessType: identity.AccessSessionCookie, AgentID: cred.AgentID,
		Expiry: s.IdleExpiresAt(a.m.cfg.IdleTimeout)}, true, nil
}
