package gitlab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/identity"
)

// maxTokenLen bounds what is sent to GitLab as a token. GitLab's personal access tokens
// are well under 100 characters; anything much longer is not one.
const maxTokenLen = 512

// tokenInfo is the part of a personal access token GitLab describes that kubegate
// reads. The fields are pointers where GitLab's answer must carry them: an answer
// without them does not describe a personal access token.
//
// Both endpoints answer with this shape: GET /personal_access_tokens/self
// (https://docs.gitlab.com/api/personal_access_tokens/#self-inform) and POST
// /admin/token (https://docs.gitlab.com/api/admin/token/#get-information-on-a-token;
// its example has no "active", so "active" is optional).
type tokenInfo struct {
	UserID    int64     `json:"user_id"`
	Name      string    `json:"name"`
	Revoked   *bool     `json:"revoked"`
	Active    *bool     `json:"active"`
	Scopes    *[]string `json:"scopes"`
	ExpiresAt *string   `json:"expires_at"` // a date, "2024-10-04", or null
}

// userInfo is the part of GET /users/:id (https://docs.gitlab.com/api/users/) read.
type userInfo struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
	State    string `json:"state"`
}

// Authenticate verifies a personal access token (access.md §2): GitLab must know it,
// and it must not be revoked or expired, must carry the k8s_proxy scope and must belong
// to an active user. Other credential types are not this authenticator's.
func (b *Backend) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	if cred.Type != identity.AccessPersonalAccessToken {
		return nil, false, nil
	}
	if err := checkShape(cred.Secret); err != nil {
		// Not sent to GitLab at all: GitLab cannot have issued it, and a value with
		// unexpected characters has no business in a request header.
		b.checks.WithLabelValues("refused_shape").Inc()
		return nil, false, identity.Rejected(identity.ReasonInvalid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()

	digest := sha256.Sum256([]byte(cred.Secret))
	info, err := b.checkTokenInfo(ctx, cred.Secret, digest)
	if err == nil {
		err = b.checkToken(info)
	}
	var u *userInfo
	if err == nil {
		u, err = b.userByID(ctx, info.UserID)
	}
	if err != nil {
		if e := identity.AsError(err); !e.Unavailable() {
			b.known.forget(digest) // GitLab refused it: no longer a known user's
		}
		return nil, false, err
	}
	b.known.remember(digest)
	id := &identity.Identity{
		User:       identity.User{ID: u.ID, Username: u.Username},
		AccessType: cred.Type,
		AgentID:    cred.AgentID,
	}
	if info.ExpiresAt != nil {
		// checkToken has parsed it already; GitLab ends a token at 00:00 UTC that day.
		id.Expiry, _ = time.Parse(time.DateOnly, *info.ExpiresAt)
	}
	return id, true, nil
}

// tokenShaped accepts what GitLab's tokens are made of: glpat-<base64url>, the newer
// glpat-<…>.<…>.<…> form and custom prefixes (letters, digits, '-', '_').
func tokenShaped(tok string) bool {
	if tok == "" || len(tok) > maxTokenLen {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// checkTokenInfo asks GitLab about the token from the right budget: a token GitLab
// accepted recently is a known user's and uses the users' budget; any other token
// is unauthenticated traffic and needs one of the bounded in-flight slots (none
// free: refused at once) and the token budget.
func (b *Backend) checkTokenInfo(ctx context.Context, tok string, digest [sha256.Size]byte) (*tokenInfo, error) {
	if b.known.has(digest) {
		b.checks.WithLabelValues("sent_known").Inc()
		return b.tokenInfo(ctx, b.client, tok)
	}
	select {
	case b.inFlight <- struct{}{}:
		defer func() { <-b.inFlight }()
	default:
		b.checks.WithLabelValues("refused_busy").Inc()
		return nil, identity.Busy(sourceName, fmt.Errorf("%d token checks already in flight (--gitlab-token-checks-in-flight)", cap(b.inFlight)))
	}
	b.checks.WithLabelValues("sent_unknown").Inc()
	return b.tokenInfo(ctx, b.tokens, tok)
}

// tokenInfo asks GitLab about the token, the way Config.PATCheck selects, from
// client's budget.
func (b *Backend) tokenInfo(ctx context.Context, client *gl.Client, tok string) (*tokenInfo, error) {
	var info tokenInfo
	var a answer
	switch b.check {
	case PATCheckSelf:
		// The user's token authenticates this request itself; GitLab lets a token of
		// any scope describe itself, and answers 401 for an unknown, revoked or expired
		// one, 400 for a token that is not a personal access token.
		a = callOn(ctx, client, "GET /personal_access_tokens/self", http.MethodGet, "personal_access_tokens/self", nil, &info,
			gl.WithToken(gl.PrivateToken, tok))
		switch {
		case a.ok():
		case a.err == nil && isCredentialRefusal(a.status, http.StatusBadRequest):
			return nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("GitLab refused the token (%s answered %d)", a.endpoint, a.status))
		default:
			return nil, a.unavailable()
		}
	default:
		// The token goes in the JSON body, authenticated by the administrator service
		// token. 404: unknown token; 422: a token type GitLab cannot identify. 401/403
		// concern the service token, not the user's, so they are a 503.
		a = callOn(ctx, client, "POST /admin/token", http.MethodPost, "admin/token", struct {
			Token string `json:"token"`
		}{tok}, &info)
		switch {
		case a.ok():
		case a.err == nil && (a.status == http.StatusNotFound || a.status == http.StatusUnprocessableEntity || a.status == http.StatusBadRequest):
			return nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("GitLab does not know the token as one it can identify (%s answered %d)", a.endpoint, a.status))
		default:
			return nil, a.unavailable()
		}
	}
	return &info, nil
}

// isCredentialRefusal reports the statuses with which GitLab refuses a credential
// that the request itself carried.
func isCredentialRefusal(status int, also ...int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return slices.Contains(also, status)
}

// checkToken applies access.md §2 to GitLab's description of the token. The order
// matches the directory backend: revoked, expired, inactive, scope.
func (b *Backend) checkToken(t *tokenInfo) error {
	if t.UserID <= 0 || t.Revoked == nil || t.Scopes == nil {
		// Deploy tokens, feed tokens, job tokens and the like are described without a
		// user and scopes (or not at all): they look like tokens but are not PATs.
		return identity.Rejected(identity.ReasonInvalid, errors.New("GitLab describes the token, but not as a personal access token"))
	}
	name := strconv.Quote(t.Name)
	if *t.Revoked {
		return identity.Rejected(identity.ReasonRevoked, fmt.Errorf("token %s of user %d is revoked", name, t.UserID))
	}
	if t.ExpiresAt != nil {
		day, err := time.Parse(time.DateOnly, *t.ExpiresAt)
		if err != nil {
			return identity.SourceUnavailable(sourceName, fmt.Errorf("GitLab's expires_at for token %s is not a date", name))
		}
		// GitLab: a token expires at 00:00 UTC on its expiry date.
		if !b.now().Before(day) {
			return identity.Rejected(identity.ReasonExpired, fmt.Errorf("token %s of user %d expired on %s", name, t.UserID, *t.ExpiresAt))
		}
	}
	if t.Active != nil && !*t.Active {
		return identity.Rejected(identity.ReasonInvalid, fmt.Errorf("GitLab says token %s of user %d is not active", name, t.UserID))
	}
	if !slices.Contains(*t.Scopes, ScopeK8sProxy) {
		return identity.Rejected(identity.ReasonScope, fmt.Errorf("token %s of user %d lacks the %s scope", name, t.UserID, ScopeK8sProxy))
	}
	return nil
}

// userByID reads the token's owner; only an active user may authenticate.
func (b *Backend) userByID(ctx context.Context, id int64) (*userInfo, error) {
	var u userInfo
	a := b.call(ctx, "GET /users/:id", http.MethodGet, "users/"+strconv.FormatInt(id, 10), nil, &u)
	switch {
	case a.ok():
	case a.err == nil && a.status == http.StatusNotFound:
		return nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("the token's user %d does not exist", id))
	default:
		return nil, a.unavailable()
	}
	if u.ID != id || !validUsername(u.Username) {
		return nil, identity.SourceUnavailable(sourceName, fmt.Errorf("GET /users/:id: GitLab's answer for user %d has id %d and an unusable username", id, u.ID))
	}
	if u.State != "active" {
		return nil, identity.Rejected(identity.ReasonInactive, fmt.Errorf("user %s is %q", u.Username, u.State))
	}
	return &u, nil
}

// LookupUser finds an active user by username (GET /users?username=, case-insensitive
// like GitLab). It serves the OIDC backend, which maps an ID token's username claim to
// a GitLab user. found is false for an unknown or inactive user.
func (b *Backend) LookupUser(ctx context.Context, username string) (identity.User, bool, error) {
	if !validUsername(username) {
		return identity.User{}, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var users []userInfo
	a := b.call(ctx, "GET /users?username=", http.MethodGet, "users", struct {
		Username string `url:"username"`
	}{username}, &users)
	if !a.ok() {
		return identity.User{}, false, a.unavailable()
	}
	for _, u := range users {
		if u.ID > 0 && strings.EqualFold(u.Username, username) && validUsername(u.Username) {
			if u.State != "active" {
				return identity.User{}, false, nil
			}
			return identity.User{ID: u.ID, Username: u.Username}, true, nil
		}
	}
	return identity.User{}, false, nil
}

// validUsername accepts what GitLab allows in a username and what can stand in
// gitlab:user:<username>: letters, digits, '_', '-', '.'.
func validUsername(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// knownTokenTTL is how long a token GitLab accepted counts as a known user's: its
// re-checks (after the cache's --cache-ttl) come from the users' budget, so that a
// flood of unknown tokens cannot keep a user who was here within the hour out.
// GitLab still checks it every time; a refusal forgets it at once.
const knownTokenTTL = time.Hour

// maxKnownTokens bounds the set; past it, the set starts over (the cost is only that
// the next checks of those tokens come from the unauthenticated budget again).
const maxKnownTokens = 10000

// knownTokens holds the SHA-256 of the tokens GitLab accepted recently, never a
// token.
type knownTokens struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]time.Time // expiry
	now func() time.Time
}

func newKnownTokens(now func() time.Time) *knownTokens {
	return &knownTokens{m: map[[sha256.Size]byte]time.Time{}, now: now}
}

func (k *knownTokens) has(d [sha256.Size]byte) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	exp, ok := k.m[d]
	return ok && k.now().Before(exp)
}

func (k *knownTokens) remember(d [sha256.Size]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) >= maxKnownTokens {
		clear(k.m)
	}
	k.m[d] = k.now().Add(knownTokenTTL)
}

func (k *knownTokens) forget(d [sha256.Size]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, d)
}
