package oidctest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"
)

const redirectURI = "https://gateway.example/ui/oidc/callback"

var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func oauthConfig(p *Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID: p.Client.ID, ClientSecret: p.Client.Secret, RedirectURL: redirectURI,
		Endpoint: oauth2.Endpoint{AuthURL: p.AuthorizationEndpoint(), TokenURL: p.TokenEndpoint(), AuthStyle: oauth2.AuthStyleInHeader},
		Scopes:   []string{"openid", "profile"},
	}
}

// authorize sends the browser to the authorization URL and returns where the
// provider redirected it (nil when it did not redirect).
func authorize(t *testing.T, authURL string) (*url.URL, int) {
	t.Helper()
	resp, err := noFollow.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return nil, resp.StatusCode
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc, resp.StatusCode
}

func claimsOf(t *testing.T, idToken string) map[string]any {
	t.Helper()
	parts := strings.Split(idToken, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCodeFlowWithPKCE(t *testing.T) {
	p := Start(t, Options{Client: Client{RedirectURI: redirectURI}})
	p.SetUser(map[string]any{"sub": "42", "nickname": "alice"})
	oc := oauthConfig(p)
	verifier := oauth2.GenerateVerifier()
	loc, _ := authorize(t, oc.AuthCodeURL("st-1", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "n-1")))
	if loc == nil || loc.Query().Get("state") != "st-1" || loc.Query().Get("code") == "" || !strings.HasPrefix(loc.String(), redirectURI+"?") {
		t.Fatalf("redirect %v", loc)
	}
	tok, err := oc.Exchange(context.Background(), loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	c := claimsOf(t, tok.Extra("id_token").(string))
	if c["nonce"] != "n-1" || c["aud"] != p.Client.ID || c["iss"] != p.Issuer() || c["sub"] != "42" || c["nickname"] != "alice" {
		t.Fatalf("claims %v", c)
	}
	// RFC 6749 §4.1.2: a code is single use.
	if _, err := oc.Exchange(context.Background(), loc.Query().Get("code"), oauth2.VerifierOption(verifier)); err == nil || !strings.Contains(p.LastRefusal(), "already used") {
		t.Fatalf("replayed code: %v (%s)", err, p.LastRefusal())
	}
}

// Every authorization request the provider must refuse: without a redirect when
// the client or redirect URI is wrong, with error= otherwise.
func TestAuthorizeRefuses(t *testing.T) {
	p := Start(t, Options{Client: Client{RedirectURI: redirectURI}})
	p.SetUser(map[string]any{"sub": "42"})
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	good := url.Values{"client_id": {p.Client.ID}, "redirect_uri": {redirectURI}, "response_type": {"code"}, "scope": {"openid"},
		"state": {"s"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	tests := []struct {
		name      string
		change    func(url.Values)
		wantCode  int    // without a redirect
		wantError string // error= in the redirect
	}{
		{name: "unknown client", change: func(v url.Values) { v.Set("client_id", "other") }, wantCode: 400},
		{name: "redirect_uri with a suffix", change: func(v url.Values) { v.Set("redirect_uri", redirectURI+"/x") }, wantCode: 400},
		{name: "redirect_uri of another host", change: func(v url.Values) { v.Set("redirect_uri", "https://evil.example/ui/oidc/callback") }, wantCode: 400},
		{name: "redirect_uri twice", change: func(v url.Values) { v.Add("redirect_uri", redirectURI) }, wantCode: 400},
		{name: "implicit flow", change: func(v url.Values) { v.Set("response_type", "token") }, wantError: "unsupported_response_type"},
		{name: "no openid scope", change: func(v url.Values) { v.Set("scope", "profile") }, wantError: "invalid_scope"},
		{name: "no PKCE", change: func(v url.Values) { v.Del("code_challenge"); v.Del("code_challenge_method") }, wantError: "invalid_request"},
		{name: "plain PKCE", change: func(v url.Values) { v.Set("code_challenge_method", "plain") }, wantError: "invalid_request"},
		{name: "short challenge", change: func(v url.Values) { v.Set("code_challenge", "abc") }, wantError: "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := url.Values{}
			for k, vs := range good {
				v[k] = append([]string(nil), vs...)
			}
			tt.change(v)
			loc, code := authorize(t, p.AuthorizationEndpoint()+"?"+v.Encode())
			if tt.wantCode != 0 {
				if loc != nil || code != tt.wantCode {
					t.Fatalf("got %d %v, want %d without a redirect", code, loc, tt.wantCode)
				}
				return
			}
			if loc == nil || loc.Query().Get("error") != tt.wantError || loc.Query().Get("code") != "" || loc.Query().Get("state") != "s" {
				t.Fatalf("got %v, want error=%s and the state", loc, tt.wantError)
			}
		})
	}
	t.Run("denied", func(t *testing.T) {
		p.Deny("access_denied")
		defer p.Deny("")
		loc, _ := authorize(t, p.AuthorizationEndpoint()+"?"+good.Encode())
		if loc == nil || loc.Query().Get("error") != "access_denied" || loc.Query().Get("code") != "" {
			t.Fatalf("got %v", loc)
		}
	})
}

// Every token request the provider must refuse (RFC 6749 §4.1.3, RFC 7636 §4.6).
func TestTokenRefuses(t *testing.T) {
	p := Start(t, Options{Client: Client{RedirectURI: redirectURI}, CodeTTL: 30 * time.Second})
	p.SetUser(map[string]any{"sub": "42"})
	newCode := func(t *testing.T, verifier string) string {
		loc, _ := authorize(t, oauthConfig(p).AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
		if loc == nil || loc.Query().Get("code") == "" {
			t.Fatalf("no code: %v", loc)
		}
		return loc.Query().Get("code")
	}
	tests := []struct {
		name   string
		change func(v url.Values, verifier string)
		want   string
	}{
		{name: "good", change: func(url.Values, string) {}},
		{name: "no verifier", change: func(v url.Values, _ string) { v.Del("code_verifier") }, want: "invalid_grant: code_verifier missing"},
		{name: "another verifier", change: func(v url.Values, _ string) { v.Set("code_verifier", oauth2.GenerateVerifier()) }, want: "does not match"},
		{name: "the challenge as verifier", change: func(v url.Values, verifier string) {
			v.Set("code_verifier", oauth2.S256ChallengeFromVerifier(verifier))
		}, want: "does not match"},
		{name: "another redirect_uri", change: func(v url.Values, _ string) { v.Set("redirect_uri", redirectURI+"2") }, want: "redirect_uri differs"},
		{name: "no redirect_uri", change: func(v url.Values, _ string) { v.Del("redirect_uri") }, want: "redirect_uri differs"},
		{name: "wrong secret", change: func(v url.Values, _ string) { v.Set("client_secret", "guess") }, want: "invalid_client"},
		{name: "no secret", change: func(v url.Values, _ string) { v.Del("client_secret") }, want: "invalid_client"},
		{name: "other client", change: func(v url.Values, _ string) { v.Set("client_id", "other") }, want: "invalid_client"},
		{name: "unknown code", change: func(v url.Values, _ string) { v.Set("code", "forged") }, want: "unknown code"},
		{name: "refresh grant", change: func(v url.Values, _ string) { v.Set("grant_type", "refresh_token") }, want: "unsupported_grant_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verifier := oauth2.GenerateVerifier()
			v := url.Values{"grant_type": {"authorization_code"}, "code": {newCode(t, verifier)}, "redirect_uri": {redirectURI},
				"client_id": {p.Client.ID}, "client_secret": {p.Client.Secret}, "code_verifier": {verifier}}
			tt.change(v, verifier)
			resp, err := http.PostForm(p.TokenEndpoint(), v)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&body)
			if tt.want == "" {
				if resp.StatusCode != 200 || body["id_token"] == nil || resp.Header.Get("Cache-Control") != "no-store" {
					t.Fatalf("got %d %v", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode == 200 || body["id_token"] != nil || !strings.Contains(p.LastRefusal(), tt.want) {
				t.Fatalf("got %d %v (%s), want %q", resp.StatusCode, body, p.LastRefusal(), tt.want)
			}
		})
	}
	t.Run("expired code", func(t *testing.T) {
		verifier := oauth2.GenerateVerifier()
		code := newCode(t, verifier)
		p.FastForward(31 * time.Second)
		defer p.FastForward(-31 * time.Second)
		if _, err := oauthConfig(p).Exchange(context.Background(), code, oauth2.VerifierOption(verifier)); err == nil || !strings.Contains(p.LastRefusal(), "expired") {
			t.Fatalf("expired code: %v %s", err, p.LastRefusal())
		}
	})
	t.Run("tampered claims", func(t *testing.T) {
		p.Tamper(func(c jwt.MapClaims) { c["aud"] = "someone-else" })
		defer p.Tamper(nil)
		verifier := oauth2.GenerateVerifier()
		tok, err := oauthConfig(p).Exchange(context.Background(), newCode(t, verifier), oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		if c := claimsOf(t, tok.Extra("id_token").(string)); c["aud"] != "someone-else" {
			t.Fatalf("claims %v", c)
		}
	})
}

// A public client has no secret: PKCE alone binds the code to the client.
func TestPublicClient(t *testing.T) {
	p := Start(t, Options{Client: Client{ID: "kubegate", Public: true, RedirectURI: redirectURI}})
	p.SetUser(map[string]any{"sub": "1"})
	oc := oauthConfig(p)
	oc.Endpoint.AuthStyle = oauth2.AuthStyleInParams
	verifier := oauth2.GenerateVerifier()
	loc, _ := authorize(t, oc.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)))
	if _, err := oc.Exchange(context.Background(), loc.Query().Get("code"), oauth2.VerifierOption(verifier)); err != nil {
		t.Fatal(err)
	}
}
