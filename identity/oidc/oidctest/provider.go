// Package oidctest is an OpenID Connect provider for tests: the authorization-code
// flow with PKCE as a strict provider runs it, so that a relying party (kubegate's
// browser login) is tested against the checks a real provider makes, not against
// one that accepts anything.
//
// It builds on github.com/oauth2-proxy/mockoidc, the provider kubegate's OIDC
// tests already run: mockoidc serves discovery and the JWKS and holds the RS256
// key; this package replaces its /authorize and /token, which let through what
// a real provider refuses (a redirect_uri that differs at /token, a code without
// PKCE or with the "plain" method, codes that never expire), with:
//
//   - /authorize (OIDC Core 1.0 §3.1.2.1, RFC 6749 §4.1.1, RFC 7636 §4.3):
//     client_id must be the registered client and redirect_uri its registered URI,
//     exactly (else an error page, never a redirect: RFC 6749 §4.1.2.1);
//     response_type must be "code", scope must hold "openid", code_challenge_method
//     must be S256 with a code_challenge of 43 characters (else a redirect with
//     error=, RFC 6749 §4.1.2.1); state is passed back unchanged (§4.1.2) and the
//     nonce kept for the ID token. The user approved is the one the test chose
//     (SetUser); with Deny set, the answer is error=<Deny> instead.
//   - /token (RFC 6749 §4.1.3, OIDC Core 1.0 §3.1.3): POST, grant_type
//     authorization_code; the client secret, if the client has one, by
//     client_secret_basic or client_secret_post; the code single use (a second
//     presentation is invalid_grant, RFC 6749 §4.1.2) and valid CodeTTL; client_id
//     and redirect_uri identical to the authorization request's; code_verifier
//     checked per RFC 7636 §4.6 (BASE64URL(SHA256(verifier)) == challenge).
//   - the ID token (OIDC Core 1.0 §2, §3.1.3.6): iss, sub, aud (the client id),
//     exp, iat, auth_time, the authorization request's nonce, and the user's
//     claims; Tamper may change any of them before signing.
package oidctest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// Client is the one client registered with the provider.
type Client struct {
	ID string // "" : mockoidc's random id
	// Secret, when set, must accompany every token request. "" with Public set:
	// a public client (RFC 6749 §2.1) that authenticates with PKCE alone.
	Secret string
	Public bool
	// RedirectURI is the one redirect URI registered for the client, compared
	// exactly (no prefix or pattern match).
	RedirectURI string
}

// Options configure Start.
type Options struct {
	Client Client
	// CodeTTL is how long a code may be exchanged; default one minute (RFC 6749
	// §4.1.2 recommends at most ten).
	CodeTTL time.Duration
	// Middleware wraps every endpoint (counters, injected failures).
	Middleware func(http.Handler) http.Handler
}

// Provider is a running provider.
type Provider struct {
	*mockoidc.MockOIDC
	Client  Client
	CodeTTL time.Duration

	mu     sync.Mutex
	user   jwt.MapClaims // claims of the user /authorize approves; nil: access_denied
	deny   string
	tamper func(jwt.MapClaims)
	codes  map[string]*grant

	// Counters for tests.
	Authorizations, TokenRequests, TokensIssued atomic.Int64
	lastRefusal                                 atomic.Value // string: the last /token refusal
}

type grant struct {
	clientID, redirectURI, challenge, nonce string
	user                                    jwt.MapClaims
	issued                                  time.Time
	used                                    bool
}

// Start runs a provider on a loopback port until the test ends.
func Start(t testing.TB, opts Options) *Provider {
	t.Helper()
	m, err := mockoidc.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Keypair.KeyID(); err != nil { // computed once, before the server reads it
		t.Fatal(err)
	}
	m.CodeChallengeMethodsSupported = []string{"S256"} // as discovery announces it
	c := opts.Client
	if c.ID == "" {
		c.ID = m.ClientID
	}
	if c.Secret == "" && !c.Public {
		c.Secret = m.ClientSecret
	}
	m.ClientID, m.ClientSecret = c.ID, c.Secret
	p := &Provider{MockOIDC: m, Client: c, CodeTTL: opts.CodeTTL, codes: map[string]*grant{}}
	if p.CodeTTL <= 0 {
		p.CodeTTL = time.Minute
	}
	if opts.Middleware != nil {
		if err := m.AddMiddleware(opts.Middleware); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.AddMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case mockoidc.AuthorizationEndpoint:
				p.authorize(w, r)
			case mockoidc.TokenEndpoint:
				p.token(w, r)
			default:
				next.ServeHTTP(w, r)
			}
		})
	}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ln, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return p
}

// SetUser makes /authorize approve the user with these claims (sub at least;
// e.g. nickname, preferred_username) from now on; nil makes it answer
// access_denied.
func (p *Provider) SetUser(claims map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.user = jwt.MapClaims(claims)
}

// Deny makes /authorize answer error=<code> (e.g. access_denied) instead of a
// code; "" approves again.
func (p *Provider) Deny(code string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deny = code
}

// Tamper changes the claims of every ID token issued from now on, before it is
// signed (another audience, another nonce, an expired token); nil stops it.
func (p *Provider) Tamper(f func(jwt.MapClaims)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tamper = f
}

// LastRefusal is the error the token endpoint last answered ("" if none).
func (p *Provider) LastRefusal() string {
	s, _ := p.lastRefusal.Load().(string)
	return s
}

// authorize is the authorization endpoint (OIDC Core 1.0 §3.1.2.1; RFC 6749
// §4.1.1; RFC 7636 §4.3).
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		page(w, http.StatusBadRequest, "malformed request")
		return
	}
	q := r.Form
	p.Authorizations.Add(1)
	// RFC 6749 §4.1.2.1: with a wrong client or redirect URI the provider must not
	// redirect (it would send a code or an error to an attacker's URI).
	if single(q, "client_id") != p.Client.ID {
		page(w, http.StatusBadRequest, "unknown client_id")
		return
	}
	if single(q, "redirect_uri") != p.Client.RedirectURI {
		page(w, http.StatusBadRequest, "redirect_uri is not the client's registered redirect URI")
		return
	}
	redirect := func(params url.Values) {
		u, _ := url.Parse(p.Client.RedirectURI)
		v := u.Query()
		for k, vs := range params {
			v[k] = vs
		}
		if st := q.Get("state"); st != "" {
			v.Set("state", st) // §4.1.2: exactly as received
		}
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	fail := func(code, desc string) { redirect(url.Values{"error": {code}, "error_description": {desc}}) }
	switch {
	case single(q, "response_type") != "code":
		fail("unsupported_response_type", "only the authorization code flow (response_type=code)")
		return
	case !slices.Contains(strings.Fields(q.Get("scope")), "openid"):
		fail("invalid_scope", "scope must include openid")
		return
	case single(q, "code_challenge_method") != "S256":
		fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
		return
	case !validPKCE(single(q, "code_challenge"), 43, 43):
		fail("invalid_request", "code_challenge must be BASE64URL(SHA256(code_verifier)), 43 characters")
		return
	}
	p.mu.Lock()
	user, deny := p.user, p.deny
	p.mu.Unlock()
	switch {
	case deny != "":
		fail(deny, "the user or the provider refused")
		return
	case user == nil:
		fail("access_denied", "no user logged in at the provider")
		return
	}
	code := random()
	p.mu.Lock()
	p.codes[code] = &grant{clientID: p.Client.ID, redirectURI: p.Client.RedirectURI, challenge: q.Get("code_challenge"),
		nonce: q.Get("nonce"), user: user, issued: p.Now()}
	p.mu.Unlock()
	redirect(url.Values{"code": {code}})
}

// token is the token endpoint (RFC 6749 §4.1.3, §5; OIDC Core 1.0 §3.1.3).
func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	p.TokenRequests.Add(1)
	refuse := func(status int, code, desc string) {
		p.lastRefusal.Store(code + ": " + desc)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
	}
	if r.Method != http.MethodPost {
		refuse(http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST")
		return
	}
	if err := r.ParseForm(); err != nil {
		refuse(http.StatusBadRequest, "invalid_request", "malformed body")
		return
	}
	f := r.PostForm
	// Client authentication (RFC 6749 §2.3.1): HTTP Basic or the body, not both.
	clientID, secret, basic := r.BasicAuth()
	if basic {
		if f.Has("client_secret") {
			refuse(http.StatusBadRequest, "invalid_request", "client credentials in the header and the body")
			return
		}
		clientID, _ = url.QueryUnescape(clientID)
		secret, _ = url.QueryUnescape(secret)
	} else {
		clientID, secret = single(f, "client_id"), single(f, "client_secret")
	}
	if clientID != p.Client.ID || (p.Client.Secret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(p.Client.Secret)) != 1) {
		refuse(http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	if single(f, "grant_type") != "authorization_code" {
		refuse(http.StatusBadRequest, "unsupported_grant_type", "only authorization_code")
		return
	}
	p.mu.Lock()
	g := p.codes[single(f, "code")]
	var used bool
	if g != nil {
		used, g.used = g.used, true // spent on its first presentation, whatever follows
	}
	p.mu.Unlock()
	switch {
	case g == nil:
		refuse(http.StatusBadRequest, "invalid_grant", "unknown code")
		return
	case used:
		refuse(http.StatusBadRequest, "invalid_grant", "the code was already used")
		return
	case p.Now().Sub(g.issued) > p.CodeTTL:
		refuse(http.StatusBadRequest, "invalid_grant", "the code expired")
		return
	case g.clientID != clientID:
		refuse(http.StatusBadRequest, "invalid_grant", "the code was issued to another client")
		return
	case single(f, "redirect_uri") != g.redirectURI:
		refuse(http.StatusBadRequest, "invalid_grant", "redirect_uri differs from the authorization request's")
		return
	}
	// RFC 7636 §4.6: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) == code_challenge;
	// §4.1: the verifier is 43 to 128 unreserved characters.
	verifier := single(f, "code_verifier")
	if !validPKCE(verifier, 43, 128) {
		refuse(http.StatusBadRequest, "invalid_grant", "code_verifier missing or malformed")
		return
	}
	sum := sha256.Sum256([]byte(verifier))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(g.challenge)) != 1 {
		refuse(http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
		return
	}
	now := p.Now()
	claims := jwt.MapClaims{}
	for k, v := range g.user {
		claims[k] = v
	}
	claims["iss"], claims["aud"] = p.Issuer(), clientID
	claims["iat"], claims["auth_time"], claims["exp"] = now.Unix(), g.issued.Unix(), now.Add(5*time.Minute).Unix()
	if g.nonce != "" {
		claims["nonce"] = g.nonce
	}
	p.mu.Lock()
	tamper := p.tamper
	p.mu.Unlock()
	if tamper != nil {
		tamper(claims)
	}
	idToken, err := p.Keypair.SignJWT(claims)
	if err != nil {
		refuse(http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	p.TokensIssued.Add(1)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store") // RFC 6749 §5.1
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": random(), "token_type": "Bearer", "expires_in": 300, "id_token": idToken,
	})
}

// single is a parameter that must appear at most once (RFC 6749 §3.1: "Request
// and response parameters MUST NOT be included more than once"); "" otherwise.
func single(v url.Values, key string) string {
	if len(v[key]) != 1 {
		return ""
	}
	return v[key][0]
}

// validPKCE: n..m characters of [A-Za-z0-9-._~] (RFC 7636 §4.1, §4.2).
func validPKCE(s string, n, m int) bool {
	if len(s) < n || len(s) > m {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

func random() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func page(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><title>Error</title><p>%s</p>", html.EscapeString(msg))
}
