// Package oidc authenticates OIDC ID tokens (access.md §2, both bearer forms): the
// signature is checked against the issuer's published keys (discovery, key rotation:
// an unknown key id makes it fetch the keys again), iss, aud, exp, nbf and iat are
// checked with a small clock skew, and "alg: none" and HMAC algorithms are refused.
//
// Who the token is:
//   - the username comes from the first configured claim that holds one (default
//     nickname, then preferred_username: GitLab's ID tokens carry the username in
//     both, see config/initializers/doorkeeper_openid_connect.rb in GitLab, where
//     current GitLab returns them in the ID token; older versions put them in
//     /oauth/userinfo only, and such tokens are refused for want of a username);
//   - the numeric user id, which kubegate needs for memberships, comes either from
//     "sub" (UserIDFromSub: GitLab as the issuer, whose sub is the numeric GitLab
//     user id) or from looking the username up in the membership source
//     (UserIDFromLookup, the default: any issuer, and the user must exist and be
//     active there; the source's spelling of the username is used).
//
// Memberships are not this package's business: they come from whichever
// identity.MembershipResolver the operator configures (GitLab or the directory).
package oidc

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"

	"kubegate.dev/kubegate/identity"
)

// UserIDMode says where the numeric user id comes from.
type UserIDMode string

const (
	// UserIDFromSub parses "sub" as the numeric user id (GitLab as the issuer).
	UserIDFromSub UserIDMode = "sub"
	// UserIDFromLookup looks the username up in the membership source.
	UserIDFromLookup UserIDMode = "lookup"
)

// Defaults for Config's zero fields.
const (
	DefaultClockSkew          = 30 * time.Second
	DefaultTimeout            = 5 * time.Second
	DefaultKeyRefreshInterval = 10 * time.Second
)

// DefaultUsernameClaims are tried in order when Config.UsernameClaims is empty.
var DefaultUsernameClaims = []string{"nickname", "preferred_username"}

// maxTokenLen bounds an ID token; identity.ParseCredential already refuses longer
// credentials, this holds for any caller.
const maxTokenLen = 16 << 10

// allowedAlgs are the asymmetric JWS algorithms kubegate accepts. "none" and the HMAC
// family are absent on purpose: an HMAC "signature" keyed with the issuer's public key
// can be made by anyone.
var allowedAlgs = []string{
	string(jose.RS256), string(jose.RS384), string(jose.RS512),
	string(jose.PS256), string(jose.PS384), string(jose.PS512),
	string(jose.ES256), string(jose.ES384), string(jose.ES512),
	string(jose.EdDSA),
}

// UserLookup finds an active user by username in the membership source; found is false
// for an unknown or inactive user. The GitLab backend implements it.
type UserLookup interface {
	LookupUser(ctx context.Context, username string) (identity.User, bool, error)
}

// UserLookupFunc adapts a function to UserLookup.
type UserLookupFunc func(ctx context.Context, username string) (identity.User, bool, error)

func (f UserLookupFunc) LookupUser(ctx context.Context, username string) (identity.User, bool, error) {
	return f(ctx, username)
}

// Config configures the OIDC authenticator.
type Config struct {
	// Issuer is the issuer URL exactly as it appears in the tokens' iss claim; its
	// /.well-known/openid-configuration is read for jwks_uri and the algorithms.
	Issuer string
	// ClientID is the audience the tokens must name in aud.
	ClientID string
	// UsernameClaims are the claims tried, in order, for the username.
	UsernameClaims []string
	// UserID selects where the numeric user id comes from; empty means UserIDFromLookup.
	UserID UserIDMode
	// Users resolves usernames for UserIDFromLookup.
	Users UserLookup
	// ClockSkew is the leeway for exp, nbf and iat.
	ClockSkew time.Duration
	// Timeout bounds discovery and each key set fetch.
	Timeout time.Duration
	// KeyRefreshInterval is the least time between two fetches of the key set (and
	// between two discovery attempts after a failure).
	KeyRefreshInterval time.Duration
	// HTTPClient, when set, is used to reach the issuer (custom TLS, tests).
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Authenticator verifies OIDC ID tokens. It implements identity.Authenticator for
// identity.AccessOIDCIDToken credentials and is safe for concurrent use.
type Authenticator struct {
	cfg    Config
	client *http.Client

	ready      atomic.Pointer[gooidc.IDTokenVerifier]
	discovery  singleflight.Group
	mu         sync.Mutex
	lastTry    time.Time
	lastErr    error
	authURL    string // from discovery, for browser logins
	tokenURL   string
	discovered atomic.Int64 // successful discoveries, for tests
}

var _ identity.Authenticator = (*Authenticator)(nil)

// New validates cfg. It does not contact the issuer: discovery happens on first use
// (or in Discover), so a briefly unreachable issuer does not stop kubegate starting.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("oidc: the issuer URL is empty")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("oidc: the client id (the audience ID tokens must name) is empty")
	}
	if len(cfg.UsernameClaims) == 0 {
		cfg.UsernameClaims = DefaultUsernameClaims
	}
	switch cfg.UserID {
	case "":
		cfg.UserID = UserIDFromLookup
	case UserIDFromSub, UserIDFromLookup:
	default:
		return nil, fmt.Errorf("oidc: user id mode %q must be %q (sub is the numeric GitLab user id) or %q (look the username up)", cfg.UserID, UserIDFromSub, UserIDFromLookup)
	}
	if cfg.UserID == UserIDFromLookup && cfg.Users == nil {
		return nil, errors.New("oidc: looking usernames up needs a membership source that can find users")
	}
	if cfg.ClockSkew < 0 {
		return nil, errors.New("oidc: the clock skew must not be negative")
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.KeyRefreshInterval < 0 {
		cfg.KeyRefreshInterval = 0
	} else if cfg.KeyRefreshInterval == 0 {
		cfg.KeyRefreshInterval = DefaultKeyRefreshInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := &http.Client{Timeout: cfg.Timeout}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		c.Timeout = cfg.Timeout
		client = &c
	}
	// Discovery documents and key sets are bounded like every other answer.
	client.Transport = limitedBody{next: transportOf(client)}
	return &Authenticator{cfg: cfg, client: client}, nil
}

func transportOf(c *http.Client) http.RoundTripper {
	if c.Transport != nil {
		return c.Transport
	}
	return http.DefaultTransport
}

// Discover reads the issuer's discovery document now, for a startup check; Authenticate
// does the same on first use.
func (a *Authenticator) Discover(ctx context.Context) error {
	_, err := a.verifier(ctx)
	return err
}

// verifier returns the token verifier, discovering the issuer first if needed.
// Concurrent callers share one discovery; after a failure, the next attempt waits for
// KeyRefreshInterval.
func (a *Authenticator) verifier(ctx context.Context) (*gooidc.IDTokenVerifier, error) {
	if v := a.ready.Load(); v != nil {
		return v, nil
	}
	ch := a.discovery.DoChan("", func() (any, error) {
		if v := a.ready.Load(); v != nil {
			return v, nil
		}
		a.mu.Lock()
		if !a.lastTry.IsZero() && a.cfg.Now().Sub(a.lastTry) < a.cfg.KeyRefreshInterval {
			err := a.lastErr
			a.mu.Unlock()
			return nil, err
		}
		a.mu.Unlock()
		v, err := a.discover()
		a.mu.Lock()
		a.lastTry, a.lastErr = a.cfg.Now(), err
		a.mu.Unlock()
		if err != nil {
			return nil, err
		}
		a.ready.Store(v)
		a.discovered.Add(1)
		return v, nil
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the issuer's discovery document: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*gooidc.IDTokenVerifier), nil
	}
}

func (a *Authenticator) discover() (*gooidc.IDTokenVerifier, error) {
	ctx, cancel := context.WithTimeout(gooidc.ClientContext(context.Background(), a.client), a.cfg.Timeout)
	defer cancel()
	// NewProvider checks that the document's issuer is exactly the configured one.
	p, err := gooidc.NewProvider(ctx, a.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("discovering %s: %w", a.cfg.Issuer, err)
	}
	var meta struct {
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, fmt.Errorf("reading %s's discovery document: %w", a.cfg.Issuer, err)
	}
	ep := p.Endpoint()
	a.mu.Lock()
	a.authURL, a.tokenURL = ep.AuthURL, ep.TokenURL
	a.mu.Unlock()
	if meta.JWKSURI == "" {
		return nil, fmt.Errorf("%s's discovery document has no jwks_uri", a.cfg.Issuer)
	}
	// The algorithms the issuer announces, less those kubegate refuses. An issuer that
	// announces none signs with RS256 (OpenID Connect Discovery 1.0, §3).
	algs := []string{string(jose.RS256)}
	if len(meta.Algs) > 0 {
		algs = nil
		for _, alg := range meta.Algs {
			if slices.Contains(allowedAlgs, alg) {
				algs = append(algs, alg)
			}
		}
		if len(algs) == 0 {
			return nil, fmt.Errorf("%s signs ID tokens only with %v; kubegate accepts only asymmetric algorithms (RS*, PS*, ES*, EdDSA)", a.cfg.Issuer, meta.Algs)
		}
	}
	joseAlgs := make([]jose.SignatureAlgorithm, len(algs))
	for i, alg := range algs {
		joseAlgs[i] = jose.SignatureAlgorithm(alg)
	}
	keys := &keySet{url: meta.JWKSURI, client: a.client, algs: joseAlgs, minRefresh: a.cfg.KeyRefreshInterval,
		timeout: a.cfg.Timeout, now: a.cfg.Now}
	return gooidc.NewVerifier(a.cfg.Issuer, keys, &gooidc.Config{
		ClientID:             a.cfg.ClientID,
		SupportedSigningAlgs: algs,
		// go-oidc allows no leeway on exp: moving its clock back by the skew grants
		// it. nbf and iat are checked below with the same skew.
		Now: func() time.Time { return a.cfg.Now().Add(-a.cfg.ClockSkew) },
	}), nil
}

// Authenticate verifies an ID token and maps it to a user.
func (a *Authenticator) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	if cred.Type != identity.AccessOIDCIDToken {
		return nil, false, nil
	}
	tok, claims, err := a.verify(ctx, cred.Secret)
	if err != nil {
		return nil, false, err
	}
	user, err := a.user(ctx, tok.Subject, claims)
	if err != nil {
		return nil, false, err
	}
	return &identity.Identity{User: user, AccessType: cred.Type, AgentID: cred.AgentID, Expiry: tok.Expiry}, true, nil
}

// VerifyLogin verifies an ID token a browser login obtained from the issuer's
// token endpoint (the authorization-code flow) exactly as Authenticate verifies a
// bearer one — signature, iss, aud (this client id), exp, nbf, iat, azp — and in
// addition that its nonce is the one the login sent in the authorization request
// (OpenID Connect Core 1.0 §3.1.3.7 point 11: it must be present and equal, which
// ties the token to this browser's login and stops a replayed one), then maps it
// to a user as Authenticate does. Errors are *identity.Error.
func (a *Authenticator) VerifyLogin(ctx context.Context, rawIDToken, nonce string) (identity.User, time.Time, error) {
	if nonce == "" {
		return identity.User{}, time.Time{}, identity.Rejected(identity.ReasonInvalid, errors.New("the login sent no nonce"))
	}
	tok, claims, err := a.verify(ctx, rawIDToken)
	if err != nil {
		return identity.User{}, time.Time{}, err
	}
	var got string
	if raw, ok := claims["nonce"]; !ok || json.Unmarshal(raw, &got) != nil || subtle.ConstantTimeCompare([]byte(got), []byte(nonce)) != 1 {
		return identity.User{}, time.Time{}, identity.Rejected(identity.ReasonInvalid, errors.New("the ID token's nonce is missing or is not this login's"))
	}
	user, err := a.user(ctx, tok.Subject, claims)
	if err != nil {
		return identity.User{}, time.Time{}, err
	}
	return user, tok.Expiry, nil
}

// verify checks an ID token's signature and claims (not yet who it is).
func (a *Authenticator) verify(ctx context.Context, raw string) (*gooidc.IDToken, map[string]json.RawMessage, error) {
	if len(raw) > maxTokenLen {
		return nil, nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("the ID token is longer than %d bytes", maxTokenLen))
	}
	v, err := a.verifier(ctx)
	if err != nil {
		return nil, nil, identity.SourceUnavailable("OIDC issuer", err)
	}
	mark := &unavailableMark{}
	tok, err := v.Verify(context.WithValue(ctx, unavailableKey{}, mark), raw)
	if err != nil {
		var expired *gooidc.TokenExpiredError
		switch {
		case mark.err != nil:
			return nil, nil, identity.SourceUnavailable("OIDC issuer", mark.err)
		case errors.As(err, &expired):
			return nil, nil, identity.Rejected(identity.ReasonExpired, fmt.Errorf("the ID token expired at %s", expired.Expiry.UTC().Format(time.RFC3339)))
		default:
			return nil, nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("ID token refused: %w", err))
		}
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return nil, nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("ID token claims: %w", err))
	}
	if err := a.checkTimes(claims); err != nil {
		return nil, nil, identity.Rejected(identity.ReasonInvalid, err)
	}
	if err := a.checkAuthorizedParty(tok.Audience, claims); err != nil {
		return nil, nil, identity.Rejected(identity.ReasonInvalid, err)
	}
	return tok, claims, nil
}

// ClientID is the audience the tokens must name.
func (a *Authenticator) ClientID() string { return a.cfg.ClientID }

// Endpoints returns the issuer's authorization and token endpoints from its
// discovery document (read on first use, as for verification).
func (a *Authenticator) Endpoints(ctx context.Context) (authURL, tokenURL string, err error) {
	if _, err := a.verifier(ctx); err != nil {
		return "", "", err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.authURL == "" || a.tokenURL == "" {
		return "", "", fmt.Errorf("%s's discovery document has no authorization_endpoint or token_endpoint", a.cfg.Issuer)
	}
	return a.authURL, a.tokenURL, nil
}

// HTTPClient is the bounded client that reaches the issuer (for the token
// endpoint too).
func (a *Authenticator) HTTPClient() *http.Client { return a.client }

// checkTimes applies the clock skew to nbf and iat (go-oidc allows a fixed five
// minutes on nbf and does not look at iat).
func (a *Authenticator) checkTimes(claims map[string]json.RawMessage) error {
	latest := a.cfg.Now().Add(a.cfg.ClockSkew)
	for _, name := range []string{"nbf", "iat"} {
		raw, ok := claims[name]
		if !ok {
			continue
		}
		t, err := numericDate(raw)
		if err != nil {
			return fmt.Errorf("the ID token's %s is not a NumericDate", name)
		}
		if t.After(latest) {
			if name == "nbf" {
				return fmt.Errorf("the ID token is not valid before %s", t.UTC().Format(time.RFC3339))
			}
			return fmt.Errorf("the ID token was issued in the future (%s)", t.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// checkAuthorizedParty applies OpenID Connect Core 1.0 §3.1.3.7 (ID Token
// Validation, points 4 and 5), which go-oidc leaves to the caller: a token issued
// to several audiences must name this client in azp, the party it was issued to;
// and an azp, when present, must be this client. Without this, a token another
// client obtained for itself, with kubegate merely among its audiences, would be
// accepted.
func (a *Authenticator) checkAuthorizedParty(aud []string, claims map[string]json.RawMessage) error {
	raw, present := claims["azp"]
	if !present {
		if len(aud) > 1 {
			return fmt.Errorf("the ID token has %d audiences but no azp: a token for several audiences is accepted only when azp names this client", len(aud))
		}
		return nil
	}
	var azp string
	if err := json.Unmarshal(raw, &azp); err != nil {
		return errors.New("the ID token's azp is not a string")
	}
	if azp != a.cfg.ClientID {
		return errors.New("the ID token was issued to another client (azp)")
	}
	return nil
}

// numericDate reads a JWT NumericDate: seconds since the epoch, possibly fractional.
func numericDate(raw json.RawMessage) (time.Time, error) {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return time.Time{}, err
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f > 1e11 {
		return time.Time{}, errors.New("out of range")
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), nil
}

// user maps the verified token to a user of the membership source.
func (a *Authenticator) user(ctx context.Context, sub string, claims map[string]json.RawMessage) (identity.User, error) {
	username, claim := "", ""
	for _, c := range a.cfg.UsernameClaims {
		var s string
		if raw, ok := claims[c]; ok && json.Unmarshal(raw, &s) == nil && s != "" {
			username, claim = s, c
			break
		}
	}
	if username == "" {
		return identity.User{}, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("the ID token has none of the username claims %v", a.cfg.UsernameClaims))
	}
	if !validUsername(username) {
		return identity.User{}, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("the ID token's %s is not a GitLab-style username (letters, digits, '.', '_', '-')", claim))
	}
	switch a.cfg.UserID {
	case UserIDFromSub:
		id, err := strconv.ParseInt(sub, 10, 64)
		if err != nil || id <= 0 || strconv.FormatInt(id, 10) != sub {
			return identity.User{}, identity.Rejected(identity.ReasonInvalid, errors.New("the ID token's sub is not a numeric user id (with --oidc-user-id=sub the issuer must be GitLab)"))
		}
		return identity.User{ID: id, Username: username}, nil
	default:
		u, found, err := a.cfg.Users.LookupUser(ctx, username)
		if err != nil {
			return identity.User{}, identity.AsError(err)
		}
		if !found || u.ID <= 0 {
			return identity.User{}, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("user %s (from the ID token's %s) is not an active user of the membership source", username, claim))
		}
		return u, nil
	}
}

// validUsername accepts GitLab usernames: they become gitlab:user:<username>.
func validUsername(s string) bool {
	if len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return s != ""
}

// limitedBody bounds discovery documents and key sets (1 MiB each).
type limitedBody struct{ next http.RoundTripper }

func (l limitedBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxJWKS+1), resp.Body}
	return resp, nil
}
