package oidc

// These tests run against a real OIDC provider started in the test: oidctest (on
// github.com/oauth2-proxy/mockoidc) serves discovery, JWKS, authorization and token
// endpoints and signs ID tokens with RS256. Tokens for the happy path come out of the
// authorization code flow with PKCE (golang.org/x/oauth2); malicious and out-of-date tokens are
// signed with the provider's own key (or a stranger's) to isolate one defect each.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
	"golang.org/x/oauth2"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/oidc/oidctest"
	"kubegate.dev/kubegate/test/testkit"
)

// provider is the in-test OIDC provider (oidctest, on mockoidc) with request
// counters and switchable failures.
type provider struct {
	*oidctest.Provider
	jwksCalls, discoveryCalls atomic.Int64
	failJWKS, failDiscovery   atomic.Bool
	hangJWKS                  atomic.Bool
	stop                      chan struct{}
}

const callbackURI = "http://127.0.0.1/callback"

func startProvider(t *testing.T) *provider {
	t.Helper()
	p := &provider{stop: make(chan struct{})}
	p.Provider = oidctest.Start(t, oidctest.Options{Client: oidctest.Client{RedirectURI: callbackURI}, Middleware: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, mockoidc.JWKSEndpoint):
				p.jwksCalls.Add(1)
				if p.hangJWKS.Load() {
					select { // until kubegate gives up, or the test ends
					case <-r.Context().Done():
					case <-p.stop:
					}
					return
				}
				if p.failJWKS.Load() {
					http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
					return
				}
			case strings.HasSuffix(r.URL.Path, mockoidc.DiscoveryEndpoint):
				p.discoveryCalls.Add(1)
				if p.failDiscovery.Load() {
					http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	t.Cleanup(func() { close(p.stop) }) // before the provider's own cleanup shuts it down
	return p
}

// gitlabUser is a user whose ID token looks like GitLab's: sub is the numeric user id,
// nickname and preferred_username the username.
type gitlabUser struct {
	sub, nickname, preferred string
}

// login runs the authorization code flow with PKCE for u and returns the ID token.
func (p *provider) login(t *testing.T, u gitlabUser) string {
	t.Helper()
	p.SetUser(map[string]any{"sub": u.sub, "nickname": u.nickname, "preferred_username": u.preferred})
	oc := oauth2.Config{
		ClientID: p.Client.ID, ClientSecret: p.Client.Secret,
		Endpoint:    oauth2.Endpoint{AuthURL: p.AuthorizationEndpoint(), TokenURL: p.TokenEndpoint(), AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: callbackURI, Scopes: []string{"openid", "profile"},
	}
	verifier := oauth2.GenerateVerifier()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(oc.AuthCodeURL("state", oauth2.SetAuthURLParam("nonce", "n"), oauth2.S256ChallengeOption(verifier)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("authorization did not redirect with a code: %s %v", resp.Status, loc)
	}
	tok, err := oc.Exchange(context.Background(), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := tok.Extra("id_token").(string)
	if id == "" {
		t.Fatal("no id_token in the token response")
	}
	return id
}

// sign signs claims with the provider's key (kid and RS256 as the provider does).
func (p *provider) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := p.Keypair.SignJWT(claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claims returns valid GitLab-like claims for alice at now.
func (p *provider) claims(now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": p.Issuer(), "aud": p.ClientID, "sub": "1", "nickname": "alice",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newAuthenticator(t *testing.T, p *provider, clk *clock, mod ...func(*Config)) *Authenticator {
	t.Helper()
	cfg := Config{Issuer: p.Issuer(), ClientID: p.ClientID, UserID: UserIDFromSub, Now: clk.Now, ClockSkew: 30 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func idToken(tok string) identity.Credential {
	return identity.Credential{Type: identity.AccessOIDCIDToken, Secret: tok}
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func wantReason(t *testing.T, err error, want identity.Reason, token string) {
	t.Helper()
	var e *identity.Error
	if !errors.As(err, &e) || e.Reason != want {
		t.Fatalf("want reason %s, got %v", want, err)
	}
	if want != identity.ReasonUnavailable && e.Public != identity.Unauthorized {
		t.Errorf("public message %q, want %q", e.Public, identity.Unauthorized)
	}
	if token != "" && strings.Contains(e.Error(), token) {
		t.Errorf("error %q contains the token", e.Error())
	}
}

func TestLoginFlowToken(t *testing.T) {
	p := startProvider(t)
	clk := &clock{t: time.Now()}
	a := newAuthenticator(t, p, clk)
	tok := p.login(t, gitlabUser{sub: "42", nickname: "alice", preferred: "alice"})
	tests := []struct {
		name string
		cred identity.Credential
		want identity.Identity
	}{
		{name: "bare form: the gateway's agent", cred: idToken(tok),
			want: identity.Identity{User: identity.User{ID: 42, Username: "alice"}, AccessType: identity.AccessOIDCIDToken}},
		{name: "oidc:<agent-id>: form", cred: identity.Credential{Type: identity.AccessOIDCIDToken, AgentID: 7, Secret: tok},
			want: identity.Identity{User: identity.User{ID: 42, Username: "alice"}, AccessType: identity.AccessOIDCIDToken, AgentID: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok, err := a.Authenticate(context.Background(), tt.cred)
			if err != nil || !ok {
				t.Fatalf("got %+v %v %v, want %+v", id, ok, err, tt.want)
			}
			// The identity carries the ID token's exp, so caches never outlive it.
			if id.Expiry.IsZero() || !id.Expiry.After(time.Now()) {
				t.Fatalf("expiry %v, want the token's exp", id.Expiry)
			}
			got := *id
			got.Expiry = time.Time{}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, ok, err := a.Authenticate(context.Background(), identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: tok}); ok || err != nil {
		t.Fatalf("a PAT credential is not mine: %v %v", ok, err)
	}
	if n := p.jwksCalls.Load(); n != 1 {
		t.Errorf("key set fetched %d times, want 1", n)
	}
}

func TestRefusedTokens(t *testing.T) {
	p := startProvider(t)
	now := time.Now()
	clk := &clock{t: now}
	a := newAuthenticator(t, p, clk)
	// Warm up: discovery and the key set, so counters below concern the tokens only.
	if _, ok, err := a.Authenticate(context.Background(), idToken(p.sign(t, p.claims(now)))); !ok || err != nil {
		t.Fatalf("a valid token was refused: %v", err)
	}
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	with := func(changes jwt.MapClaims, drop ...string) jwt.MapClaims {
		c := p.claims(now)
		for k, v := range changes {
			c[k] = v
		}
		for _, k := range drop {
			delete(c, k)
		}
		return c
	}
	valid := p.sign(t, p.claims(now))
	parts := strings.Split(valid, ".")
	pubDER, _ := x509.MarshalPKIXPublicKey(p.Keypair.PublicKey)
	hs256 := func(key []byte) string {
		kid, _ := p.Keypair.KeyID()
		signing := b64(map[string]string{"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + parts[1]
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(signing))
		return signing + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	}
	strangerToken := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, p.claims(now))
		tok.Header["kid"] = "not-published"
		s, err := tok.SignedString(stranger)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	strangerSameKid := func() string {
		kid, _ := p.Keypair.KeyID()
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, p.claims(now))
		tok.Header["kid"] = kid
		s, _ := tok.SignedString(stranger)
		return s
	}()
	tests := []struct {
		name   string
		token  string
		reason identity.Reason // "" = accepted
	}{
		{name: "valid", token: valid},
		{name: "expired", token: p.sign(t, with(jwt.MapClaims{"exp": now.Add(-time.Hour).Unix()})), reason: identity.ReasonExpired},
		{name: "expired within the clock skew", token: p.sign(t, with(jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix()}))},
		{name: "no exp", token: p.sign(t, with(nil, "exp")), reason: identity.ReasonExpired},
		{name: "not yet valid", token: p.sign(t, with(jwt.MapClaims{"nbf": now.Add(time.Hour).Unix()})), reason: identity.ReasonInvalid},
		{name: "nbf two minutes ahead (go-oidc alone would allow five)", token: p.sign(t, with(jwt.MapClaims{"nbf": now.Add(2 * time.Minute).Unix()})), reason: identity.ReasonInvalid},
		{name: "nbf within the clock skew", token: p.sign(t, with(jwt.MapClaims{"nbf": now.Add(10 * time.Second).Unix()}))},
		{name: "issued in the future", token: p.sign(t, with(jwt.MapClaims{"iat": now.Add(time.Hour).Unix()})), reason: identity.ReasonInvalid},
		{name: "nbf not a number", token: p.sign(t, with(jwt.MapClaims{"nbf": "soon"})), reason: identity.ReasonInvalid},
		{name: "wrong audience", token: p.sign(t, with(jwt.MapClaims{"aud": "another-client"})), reason: identity.ReasonInvalid},
		{name: "audience list without ours", token: p.sign(t, with(jwt.MapClaims{"aud": []string{"a", "b"}})), reason: identity.ReasonInvalid},
		{name: "audience list with ours but no azp", token: p.sign(t, with(jwt.MapClaims{"aud": []string{"a", p.ClientID}})), reason: identity.ReasonInvalid},
		{name: "audience list with ours, azp another client", token: p.sign(t, with(jwt.MapClaims{"aud": []string{"a", p.ClientID}, "azp": "a"})), reason: identity.ReasonInvalid},
		{name: "audience list with ours, azp ours", token: p.sign(t, with(jwt.MapClaims{"aud": []string{"a", p.ClientID}, "azp": p.ClientID}))},
		{name: "one audience, azp ours", token: p.sign(t, with(jwt.MapClaims{"azp": p.ClientID}))},
		{name: "one audience, azp another client", token: p.sign(t, with(jwt.MapClaims{"azp": "another-client"})), reason: identity.ReasonInvalid},
		{name: "azp not a string", token: p.sign(t, with(jwt.MapClaims{"aud": []string{"a", p.ClientID}, "azp": []string{p.ClientID}})), reason: identity.ReasonInvalid},
		{name: "audience list of ours alone, no azp", token: p.sign(t, with(jwt.MapClaims{"aud": []string{p.ClientID}}))},
		{name: "wrong issuer", token: p.sign(t, with(jwt.MapClaims{"iss": "https://evil.example/oidc"})), reason: identity.ReasonInvalid},
		{name: "alg none", token: b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + parts[1] + ".", reason: identity.ReasonInvalid},
		{name: "alg none with a signature", token: b64(map[string]string{"alg": "none"}) + "." + parts[1] + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "HS256 keyed with the public key (DER)", token: hs256(pubDER), reason: identity.ReasonInvalid},
		{name: "HS256 keyed with the JWKS modulus", token: hs256(p.Keypair.PublicKey.N.Bytes()), reason: identity.ReasonInvalid},
		{name: "tampered payload", token: parts[0] + "." + b64(with(jwt.MapClaims{"sub": "2", "nickname": "root"})) + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "tampered header", token: b64(map[string]string{"alg": "RS512", "kid": "x"}) + "." + parts[1] + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "truncated signature", token: parts[0] + "." + parts[1] + "." + parts[2][:20], reason: identity.ReasonInvalid},
		{name: "signed by a stranger's key, unknown kid", token: strangerToken, reason: identity.ReasonInvalid},
		{name: "signed by a stranger's key, the provider's kid", token: strangerSameKid, reason: identity.ReasonInvalid},
		{name: "garbage", token: "a.b.c", reason: identity.ReasonInvalid},
		{name: "not base64", token: "e30.%%%.e30", reason: identity.ReasonInvalid},
		{name: "JSON array header", token: "W10." + parts[1] + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "huge header", token: b64(map[string]string{"alg": "RS256", "kid": strings.Repeat("k", 10000)}) + "." + parts[1] + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "longer than 16 KiB", token: b64(map[string]string{"alg": "RS256", "x": strings.Repeat("k", 20000)}) + "." + parts[1] + "." + parts[2], reason: identity.ReasonInvalid},
		{name: "JWE (five parts)", token: "a.b.c.d.e", reason: identity.ReasonInvalid},
		{name: "no username claim", token: p.sign(t, with(nil, "nickname")), reason: identity.ReasonInvalid},
		{name: "username not GitLab-shaped", token: p.sign(t, with(jwt.MapClaims{"nickname": "jane doe@example.com"})), reason: identity.ReasonInvalid},
		{name: "username not a string", token: p.sign(t, with(jwt.MapClaims{"nickname": 7})), reason: identity.ReasonInvalid},
		{name: "preferred_username when nickname is missing", token: p.sign(t, with(jwt.MapClaims{"preferred_username": "alice"}, "nickname"))},
		{name: "sub not numeric", token: p.sign(t, with(jwt.MapClaims{"sub": "a1b2"})), reason: identity.ReasonInvalid},
		{name: "sub with a leading zero", token: p.sign(t, with(jwt.MapClaims{"sub": "01"})), reason: identity.ReasonInvalid},
		{name: "sub zero", token: p.sign(t, with(jwt.MapClaims{"sub": "0"})), reason: identity.ReasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok, err := a.Authenticate(context.Background(), idToken(tt.token))
			if tt.reason == "" {
				if err != nil || !ok || id.User != (identity.User{ID: 1, Username: "alice"}) {
					t.Fatalf("want alice accepted, got %+v %v %v", id, ok, err)
				}
				return
			}
			if ok || id != nil {
				t.Fatalf("accepted %+v", id)
			}
			wantReason(t, err, tt.reason, tt.token)
		})
	}
	// The stranger's unknown kid made one refresh at most; tampered and forged tokens
	// with the known kid made none.
	if n := p.jwksCalls.Load(); n > 2 {
		t.Errorf("the key set was fetched %d times; refused tokens must not each cause a fetch", n)
	}
}

// TestKeyRotation: the provider starts signing with a new key; the first token with
// the unknown kid makes kubegate fetch the key set again and succeed. Tokens of the
// retired key then fail, and unknown kids do not cause more than one fetch per
// refresh interval.
func TestKeyRotation(t *testing.T) {
	p := startProvider(t)
	now := time.Now()
	clk := &clock{t: now}
	a := newAuthenticator(t, p, clk)
	old := p.sign(t, p.claims(now))
	if _, ok, err := a.Authenticate(context.Background(), idToken(old)); !ok || err != nil {
		t.Fatal(err)
	}
	next, err := mockoidc.RandomKeypair(2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := next.KeyID(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultKeyRefreshInterval)
	p.Keypair = next // the provider now publishes only the new key

	rotated := p.sign(t, p.claims(now))
	steps := []struct {
		name      string
		token     string
		ok        bool
		jwksCalls int64
	}{
		{name: "new kid: fetch again, accept", token: rotated, ok: true, jwksCalls: 2},
		{name: "new key again: cached", token: rotated, ok: true, jwksCalls: 2},
		{name: "retired key: refused without a fetch inside the interval", token: old, ok: false, jwksCalls: 2},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			_, ok, err := a.Authenticate(context.Background(), idToken(s.token))
			if ok != s.ok {
				t.Fatalf("accepted=%v (%v), want %v", ok, err, s.ok)
			}
			if !ok {
				wantReason(t, err, identity.ReasonInvalid, s.token)
			}
			if n := p.jwksCalls.Load(); n != s.jwksCalls {
				t.Errorf("key set fetched %d times, want %d", n, s.jwksCalls)
			}
		})
	}
}

func TestIssuerUnavailable(t *testing.T) {
	t.Run("discovery fails, then recovers after the retry interval", func(t *testing.T) {
		p := startProvider(t)
		clk := &clock{t: time.Now()}
		a := newAuthenticator(t, p, clk)
		tok := p.sign(t, p.claims(clk.Now()))
		p.failDiscovery.Store(true)
		for range 3 {
			_, ok, err := a.Authenticate(context.Background(), idToken(tok))
			if ok {
				t.Fatal("accepted without discovery")
			}
			wantReason(t, err, identity.ReasonUnavailable, tok)
			if e := identity.AsError(err); !strings.Contains(e.Public, "identity source (OIDC issuer) is unavailable") {
				t.Errorf("message %q", e.Public)
			}
		}
		if n := p.discoveryCalls.Load(); n != 1 {
			t.Errorf("discovery tried %d times within the retry interval, want 1", n)
		}
		p.failDiscovery.Store(false)
		clk.Advance(DefaultKeyRefreshInterval)
		if _, ok, err := a.Authenticate(context.Background(), idToken(tok)); !ok || err != nil {
			t.Fatalf("not recovered: %v", err)
		}
	})
	t.Run("key set unreachable", func(t *testing.T) {
		p := startProvider(t)
		clk := &clock{t: time.Now()}
		a := newAuthenticator(t, p, clk)
		p.failJWKS.Store(true)
		tok := p.sign(t, p.claims(clk.Now()))
		_, ok, err := a.Authenticate(context.Background(), idToken(tok))
		if ok {
			t.Fatal("accepted without keys")
		}
		wantReason(t, err, identity.ReasonUnavailable, tok)
	})
	t.Run("key set hangs: 503 within the timeout, nothing left running", func(t *testing.T) {
		p := startProvider(t)
		clk := &clock{t: time.Now()}
		a := newAuthenticator(t, p, clk, func(c *Config) { c.Timeout = 300 * time.Millisecond })
		p.hangJWKS.Store(true)
		tok := p.sign(t, p.claims(clk.Now()))
		_, ok, err := a.Authenticate(context.Background(), idToken(tok))
		if ok {
			t.Fatal("accepted without keys")
		}
		wantReason(t, err, identity.ReasonUnavailable, tok)
		testkit.NoGoroutinesLeft(t, "kubegate.dev/kubegate/identity/oidc")
	})
	t.Run("issuer not listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		a, err := New(Config{Issuer: "http://" + addr + "/oidc", ClientID: "c", UserID: UserIDFromSub})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Discover(context.Background()); err == nil {
			t.Fatal("Discover succeeded without an issuer")
		}
		_, ok, err := a.Authenticate(context.Background(), idToken("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))
		if ok {
			t.Fatal("accepted")
		}
		wantReason(t, err, identity.ReasonUnavailable, "")
	})
	t.Run("discovery names another issuer", func(t *testing.T) {
		p := startProvider(t)
		a, err := New(Config{Issuer: p.Issuer() + "/", ClientID: p.ClientID, UserID: UserIDFromSub})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Discover(context.Background()); err == nil || !strings.Contains(err.Error(), "did not match the issuer") {
			t.Fatalf("want an issuer mismatch, got %v", err)
		}
	})
}

func TestUserLookup(t *testing.T) {
	p := startProvider(t)
	clk := &clock{t: time.Now()}
	users := UserLookupFunc(func(_ context.Context, username string) (identity.User, bool, error) {
		switch strings.ToLower(username) {
		case "alice":
			return identity.User{ID: 1, Username: "alice"}, true, nil
		case "flaky":
			return identity.User{}, false, identity.SourceUnavailable("GitLab", errors.New("503"))
		}
		return identity.User{}, false, nil
	})
	a := newAuthenticator(t, p, clk, func(c *Config) { c.UserID = UserIDFromLookup; c.Users = users })
	tests := []struct {
		name     string
		nickname string
		sub      string
		want     identity.User
		reason   identity.Reason
	}{
		{name: "username found, the source's spelling and id win", nickname: "Alice", sub: "auth0|abc", want: identity.User{ID: 1, Username: "alice"}},
		{name: "unknown user", nickname: "mallory", sub: "1", reason: identity.ReasonInvalid},
		{name: "source unavailable", nickname: "flaky", sub: "1", reason: identity.ReasonUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := p.claims(clk.Now())
			c["nickname"], c["sub"] = tt.nickname, tt.sub
			tok := p.sign(t, c)
			id, ok, err := a.Authenticate(context.Background(), idToken(tok))
			if tt.reason != "" {
				if ok {
					t.Fatalf("accepted %+v", id)
				}
				wantReason(t, err, tt.reason, tok)
				return
			}
			if !ok || err != nil || id.User != tt.want {
				t.Fatalf("got %+v %v %v, want %+v", id, ok, err, tt.want)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no issuer", cfg: Config{ClientID: "c"}, want: "issuer URL is empty"},
		{name: "no client id", cfg: Config{Issuer: "https://i"}, want: "client id"},
		{name: "lookup without a source", cfg: Config{Issuer: "https://i", ClientID: "c"}, want: "membership source that can find users"},
		{name: "unknown user id mode", cfg: Config{Issuer: "https://i", ClientID: "c", UserID: "email"}, want: `user id mode "email"`},
		{name: "negative skew", cfg: Config{Issuer: "https://i", ClientID: "c", UserID: UserIDFromSub, ClockSkew: -time.Second}, want: "clock skew"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// FuzzVerify feeds arbitrary tokens to the verifier with a static key set: nothing but
// the one token really signed with the key may verify, and nothing may panic.
func FuzzVerify(f *testing.F) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	signed, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": "https://issuer.example", "aud": "c", "sub": "1", "exp": now.Add(time.Hour).Unix(),
	}).SignedString(key)
	if err != nil {
		f.Fatal(err)
	}
	parts := strings.Split(signed, ".")
	f.Add(signed)
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add("eyJhbGciOiJub25lIn0." + parts[1] + ".")
	f.Add("a.b.c")
	f.Add("....")
	ks := &keySet{
		algs: []jose.SignatureAlgorithm{jose.RS256}, now: time.Now, minRefresh: time.Hour,
		keys:      []jose.JSONWebKey{{Key: &key.PublicKey, Algorithm: "RS256", Use: "sig"}},
		attempted: now, // no fetching: the key set is all there is
	}
	v := gooidc.NewVerifier("https://issuer.example", ks, &gooidc.Config{ClientID: "c", SupportedSigningAlgs: []string{"RS256"}})
	f.Fuzz(func(t *testing.T, tok string) {
		if _, err := v.Verify(context.Background(), tok); err == nil && tok != signed {
			t.Fatalf("verified a token not signed with the key: %q", tok)
		}
	})
}

// TestKeySetOnlyCompact: the key set verifies the compact serialization of a JWS and
// refuses the same signature in the JSON serializations, which a JWT never uses.
func TestKeySetOnlyCompact(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(`{"iss":"https://issuer.example","sub":"1"}`)
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	ks := &keySet{
		algs: []jose.SignatureAlgorithm{jose.RS256}, now: time.Now, minRefresh: time.Hour,
		keys:      []jose.JSONWebKey{{Key: &key.PublicKey, Algorithm: "RS256", Use: "sig"}},
		attempted: time.Now(), // no fetching: the key set is all there is
	}
	tests := []struct {
		name   string
		raw    string
		accept bool
	}{
		{name: "compact", raw: compact, accept: true},
		{name: "flattened JSON", raw: jws.FullSerialize()},
		{name: "general JSON", raw: general(t, jws.FullSerialize())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ks.VerifySignature(context.Background(), tt.raw)
			if tt.accept {
				if err != nil || string(got) != string(payload) {
					t.Fatalf("got %q, %v; want the payload verified", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("verified %q: a JWT is only ever the compact serialization", tt.raw)
			}
		})
	}
}

// general turns go-jose's serialization of one signature, which is the flattened
// JSON form (RFC 7515 section 7.2.2), into the general JSON form (section 7.2.1).
func general(t *testing.T, flattened string) string {
	t.Helper()
	var f map[string]json.RawMessage
	if err := json.Unmarshal([]byte(flattened), &f); err != nil || f["payload"] == nil || f["signature"] == nil {
		t.Fatalf("flattened serialization %q: %v", flattened, err)
	}
	out, err := json.Marshal(map[string]any{
		"payload":    f["payload"],
		"signatures": []map[string]json.RawMessage{{"protected": f["protected"], "signature": f["signature"]}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// VerifyLogin: the token from a browser login's code exchange must carry that
// login's nonce, besides everything Authenticate checks.
func TestVerifyLoginNonce(t *testing.T) {
	p := startProvider(t)
	clk := &clock{t: time.Now()}
	a := newAuthenticator(t, p, clk)
	tok := p.login(t, gitlabUser{sub: "42", nickname: "alice"}) // nonce "n"
	now := time.Now()
	withNonce := func(n any) string {
		c := p.claims(now)
		if n != nil {
			c["nonce"] = n
		}
		return p.sign(t, c)
	}
	otherAud := p.claims(now)
	otherAud["aud"], otherAud["nonce"] = "another-client", "n"
	tests := []struct {
		name, token, nonce string
		wantErr            bool
	}{
		{name: "the login's nonce", token: tok, nonce: "n"},
		{name: "another nonce", token: tok, nonce: "m", wantErr: true},
		{name: "no nonce expected", token: tok, nonce: "", wantErr: true},
		{name: "token without a nonce", token: withNonce(nil), nonce: "n", wantErr: true},
		{name: "nonce not a string", token: withNonce(7), nonce: "7", wantErr: true},
		{name: "another audience", token: p.sign(t, otherAud), nonce: "n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, exp, err := a.VerifyLogin(context.Background(), tt.token, tt.nonce)
			if tt.wantErr {
				wantReason(t, err, identity.ReasonInvalid, tt.token)
				return
			}
			if err != nil || u.ID != 42 || u.Username != "alice" || exp.IsZero() {
				t.Fatalf("got %+v %v %v", u, exp, err)
			}
		})
	}
	authURL, tokenURL, err := a.Endpoints(context.Background())
	if err != nil || authURL != p.AuthorizationEndpoint() || tokenURL != p.TokenEndpoint() {
		t.Fatalf("endpoints %q %q %v", authURL, tokenURL, err)
	}
}
