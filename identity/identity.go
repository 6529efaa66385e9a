// Package identity holds who is calling: the credential a request presents, the user
// it authenticates as, and that user's effective access to the projects and groups an
// agent's user_access lists. Sources of users and memberships (the local directory,
// GitLab, OIDC) live in subpackages behind the interfaces defined here.
//
// Data flows one way: credential → identity → memberships. Nothing here decides
// whether a request may pass; that is policy's job.
package identity

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// AccessType is how the caller authenticated. The values are the ones GitLab's agent
// server puts into the agent.gitlab.com/access_type impersonation extra.
type AccessType string

const (
	AccessPersonalAccessToken AccessType = "personal_access_token"
	AccessOIDCIDToken         AccessType = "oidc_id_token"
	AccessSessionCookie       AccessType = "session_cookie"
)

// User is a person known to an identity source.
type User struct {
	ID       int64  // numeric id in the identity source (GitLab user id, or OIDC-mapped id)
	Username string // GitLab username; becomes gitlab:user:<username>
}

// Identity is an authenticated caller: the result of a successful Authenticate.
type Identity struct {
	User       User
	AccessType AccessType
	AgentID    int64 // the agent the credential was presented for
	// Expiry is when the credential stops being valid (an ID token's exp, a PAT's
	// expiry date); zero when it does not expire. Caches never keep an identity
	// past it.
	Expiry time.Time
}

// Credential is what a request presented, parsed but not yet verified.
type Credential struct {
	Type    AccessType
	AgentID int64 // 0 when the form names no agent (bare OIDC token): the gateway's agent applies
	// Secret is the token, ID token or session value. It is never logged: String and
	// LogValue leave it out.
	Secret string
	// CSRF is the CSRF token that must accompany a session cookie.
	CSRF string
}

// String describes the credential without its secret.
func (c Credential) String() string {
	return fmt.Sprintf("%s(agent=%d)", c.Type, c.AgentID)
}

// LogValue keeps the secret out of structured logs even when a Credential is logged whole.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", string(c.Type)), slog.Int64("agent", c.AgentID))
}

// Authenticator verifies a credential. Like k8s.io/apiserver's authenticators it has
// three outcomes:
//   - (nil, false, nil): not mine — this authenticator does not handle the credential type;
//   - (nil, false, err): rejected (an *Error says why and with which HTTP meaning);
//   - (id, true, nil):  accepted.
type Authenticator interface {
	Authenticate(ctx context.Context, cred Credential) (*Identity, bool, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, cred Credential) (*Identity, bool, error)

func (f AuthenticatorFunc) Authenticate(ctx context.Context, cred Credential) (*Identity, bool, error) {
	return f(ctx, cred)
}

// Union tries each authenticator in order and returns the first answer that is not
// "not mine". A rejection stops the chain: a malformed or refused credential never
// falls through to a more lenient authenticator.
type Union []Authenticator

func (u Union) Authenticate(ctx context.Context, cred Credential) (*Identity, bool, error) {
	for _, a := range u {
		id, ok, err := a.Authenticate(ctx, cred)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return id, true, nil
		}
	}
	return nil, false, nil
}
