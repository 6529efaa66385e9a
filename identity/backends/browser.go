package backends

import (
	"context"
	"errors"

	"kubegate.dev/kubegate/identity"
)

// CheckPassword checks a browser login's password against the directory in
// service (it follows reloads), for login.Passwords. Only the directory holds
// passwords: with another identity source, HasPasswords is false.
func (b *Backends) CheckPassword(ctx context.Context, username, password string) (identity.User, error) {
	d := b.dir.Load()
	if d == nil {
		return identity.User{}, identity.SourceUnavailable("directory", errors.New("no directory loaded"))
	}
	return d.CheckPassword(ctx, username, password)
}

// HasPasswords reports whether the identity source can check passwords.
func (b *Backends) HasPasswords() bool { return b.source == SourceDirectory }

// LookupUser finds an active user in the identity source in service — the
// directory, or GitLab — for the browser's OIDC login (the user must exist).
func (b *Backends) LookupUser(ctx context.Context, username string) (identity.User, bool, error) {
	if b.source == SourceDirectory {
		return b.lookupInDirectory(ctx, username)
	}
	if b.sessionUsers == nil {
		return identity.User{}, false, identity.SourceUnavailable("identity source", errors.New("no user lookup"))
	}
	return b.sessionUsers.LookupUser(ctx, username)
}
