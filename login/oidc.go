package login

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/oidc"
	"kubegate.dev/kubegate/identity/session"
)

// OIDCConfig is the OpenID Connect provider browsers log in with: the
// authorization-code flow with PKCE (OIDC Core 1.0 §3.1, RFC 6749 §4.1, RFC 7636).
type OIDCConfig struct {
	Issuer   string
	ClientID string // the browser login's client: the ID token's audience
	// ClientSecretFile holds the client secret (one line); "": a public client
	// that authenticates with PKCE alone.
	ClientSecretFile string
	Scopes           []string // default openid, profile
	// UsernameClaims and UserID map the ID token to a user exactly as for
	// kubectl's OIDC tokens (identity/oidc.Config).
	UsernameClaims []string
	UserID         oidc.UserIDMode
	// Users is the identity source: the user must exist and be active there.
	Users      session.UserLookup
	HTTPClient *http.Client
	Now        func() time.Time
}

// Cookie and purpose of the login state between OIDCLoginPath and the callback.
const (
	LoginCookie  = "kubegate_login"
	loginPurpose = "oidc-login"
	loginTTL     = 10 * time.Minute
	// exchangeTimeout bounds the token request to the provider.
	exchangeTimeout = 10 * time.Second
)

type oidcLogin struct {
	verifier *oidc.Authenticator
	users    session.UserLookup
	clientID string
	secret   string
	scopes   []string
	redirect string
	host     string // the issuer's host, for "Log in with <host>"
}

func newOIDCLogin(c OIDCConfig, redirect string) (*oidcLogin, error) {
	iss, err := url.Parse(c.Issuer)
	if err != nil || iss.Host == "" {
		return nil, fmt.Errorf("login: the OIDC issuer %q is not a URL", c.Issuer)
	}
	if c.Users == nil {
		return nil, errors.New("login: OIDC login needs the identity source to look users up in")
	}
	var secret string
	if c.ClientSecretFile != "" {
		b, err := os.ReadFile(c.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("login: the OIDC client secret file: %w", err)
		}
		if secret = strings.TrimSpace(string(b)); secret == "" || strings.ContainsAny(secret, "\r\n") {
			return nil, fmt.Errorf("login: the OIDC client secret file %s must hold the secret on one line", c.ClientSecretFile)
		}
	}
	users := c.Users
	v, err := oidc.New(oidc.Config{Issuer: c.Issuer, ClientID: c.ClientID, UsernameClaims: c.UsernameClaims, UserID: c.UserID,
		Users: oidc.UserLookupFunc(users.LookupUser), HTTPClient: c.HTTPClient, Now: c.Now})
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = []string{"openid", "profile"} // openid: an ID token (OIDC Core §3.1.2.1); profile: the username claims
	}
	return &oidcLogin{verifier: v, users: users, clientID: c.ClientID, secret: secret, scopes: scopes, redirect: redirect, host: iss.Host}, nil
}

// config is the oauth2 client for the provider's endpoints (from discovery).
func (o *oidcLogin) config(ctx context.Context) (*oauth2.Config, error) {
	authURL, tokenURL, err := o.verifier.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	// One authentication style, never "auto-detect", which retries a refused
	// exchange the other way and so presents the single-use code twice.
	style := oauth2.AuthStyleInHeader // client_secret_basic, the default (OIDC Core §9)
	if o.secret == "" {
		style = oauth2.AuthStyleInParams // a public client sends client_id in the body
	}
	return &oauth2.Config{ClientID: o.clientID, ClientSecret: o.secret, RedirectURL: o.redirect, Scopes: o.scopes,
		Endpoint: oauth2.Endpoint{AuthURL: authURL, TokenURL: tokenURL, AuthStyle: style}}, nil
}

// loginState is sealed into the login cookie: it ties the callback to this
// browser's start of the login.
type loginState struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Next     string `json:"x,omitempty"`
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// oidcStart handles GET OIDCLoginPath: new state, nonce and PKCE verifier,
// sealed into a short cookie for the callback only, and a 302 to the provider
// (OIDC Core 1.0 §3.1.2.1; RFC 7636 §4.1–4.3).
func (h *Handler) oidcStart(w http.ResponseWriter, r *http.Request) {
	cfg, err := h.oidc.config(r.Context())
	if err != nil {
		h.log.Warn("OIDC login: the provider's discovery document cannot be read", "err", err.Error())
		h.page(w, http.StatusServiceUnavailable, pageData{Title: "Log in", Error: "The identity provider " + h.oidc.host + " cannot be reached right now.",
			Message: "Try again in a minute; tell the gateway's operator if it persists.", Link: "/ui/login", LinkText: "Back to the login page"})
		return
	}
	st := loginState{Verifier: oauth2.GenerateVerifier(), Next: safeNext(r.URL.Query().Get("next"))}
	if st.State, err = randomToken(); err == nil {
		st.Nonce, err = randomToken()
	}
	var sealed string
	if err == nil {
		b, _ := json.Marshal(st)
		sealed, err = h.sessions.SealValue(loginPurpose, b, loginTTL)
	}
	if err != nil {
		h.log.Error("OIDC login: sealing the login state", "err", err.Error())
		h.page(w, http.StatusInternalServerError, pageData{Title: "Log in", Error: "The gateway could not start the login. Try again.", Link: "/ui/login", LinkText: "Back to the login page"})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: LoginCookie, Value: sealed, Path: contract.OIDCCallbackPath, MaxAge: int(loginTTL / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, cfg.AuthCodeURL(st.State, oauth2.S256ChallengeOption(st.Verifier), oauth2.SetAuthURLParam("nonce", st.Nonce)), http.StatusFound)
}

// oidcCallback handles GET OIDCCallbackPath (OIDC Core 1.0 §3.1.2.5–3.1.3.7;
// RFC 6749 §4.1.2–4.1.4): the login cookie must open and its state match; the
// code is exchanged with the PKCE verifier; the ID token is verified with this
// client as audience and the login's nonce; the user must exist in the identity
// source. Every failure is a page saying what to do, and makes no session.
func (h *Handler) oidcCallback(w http.ResponseWriter, r *http.Request) {
	// The login cookie is spent whatever happens: a callback is answered once.
	http.SetCookie(w, &http.Cookie{Name: LoginCookie, Value: "", Path: contract.OIDCCallbackPath, MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	fail := func(status int, msg, logMsg string, args ...any) {
		h.log.Warn("OIDC login refused: "+logMsg, args...)
		h.page(w, status, pageData{Title: "Login failed", Error: msg, Message: "Start the login again from the login page.",
			Link: contract.LoginPath, LinkText: "Back to the login page"})
	}
	q := r.URL.Query()
	if errCode := q.Get("error"); errCode != "" {
		// RFC 6749 §4.1.2.1: the provider refused (the user declined, or the
		// request was wrong). The code is one of a fixed set; the description is
		// the provider's text, shown escaped and shortened.
		desc := q.Get("error_description")
		msg := "The identity provider " + h.oidc.host + " refused the login (" + printable(errCode, 64) + ")."
		if desc != "" {
			msg += " It said: " + printable(desc, 200)
		}
		fail(http.StatusUnauthorized, msg, "the provider answered an error", "error", printable(errCode, 64))
		return
	}
	st, ok := h.openLoginState(r)
	if !ok {
		fail(http.StatusBadRequest, "This login was not started in this browser, or took longer than 10 minutes.", "no valid login cookie")
		return
	}
	states := q["state"]
	if len(states) != 1 || subtle.ConstantTimeCompare([]byte(states[0]), []byte(st.State)) != 1 {
		fail(http.StatusBadRequest, "This login answer does not belong to the login this browser started.", "state mismatch")
		return
	}
	codes := q["code"]
	if len(codes) != 1 || codes[0] == "" || len(codes[0]) > 4096 {
		fail(http.StatusBadRequest, "The identity provider's answer has no authorization code.", "no code")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), exchangeTimeout)
	defer cancel()
	cfg, err := h.oidc.config(ctx)
	if err != nil {
		fail(http.StatusServiceUnavailable, "The identity provider "+h.oidc.host+" cannot be reached right now.", "discovery", "err", err.Error())
		return
	}
	tok, err := cfg.Exchange(context.WithValue(ctx, oauth2.HTTPClient, h.oidc.verifier.HTTPClient()), codes[0], oauth2.VerifierOption(st.Verifier))
	if err != nil {
		// The provider's error code only: its response could echo what was sent.
		var re *oauth2.RetrieveError
		code := "no answer"
		if errors.As(err, &re) {
			code = printable(re.ErrorCode, 64)
			if code == "" && re.Response != nil {
				code = re.Response.Status
			}
		}
		fail(http.StatusUnauthorized, "The identity provider did not accept the code of this login.", "code exchange", "provider_error", code)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		fail(http.StatusUnauthorized, "The identity provider answered without an ID token (is the openid scope allowed for this client?).", "no id_token")
		return
	}
	u, _, err := h.oidc.verifier.VerifyLogin(ctx, raw, st.Nonce)
	if err != nil {
		e := identity.AsError(err)
		if e.Unavailable() {
			fail(http.StatusServiceUnavailable, "The identity provider's keys cannot be read right now; try again in a minute.", "verification unavailable", "err", errText(e))
			return
		}
		fail(http.StatusUnauthorized, "The identity provider's ID token was refused, or you have no active account on this gateway.", "ID token", "err", errText(e))
		return
	}
	// The user must exist (and be active) in the identity source, under the id
	// the token mapped to.
	found, ok, err := h.oidc.users.LookupUser(ctx, u.Username)
	switch {
	case err != nil:
		fail(http.StatusServiceUnavailable, "The gateway's identity source cannot be reached right now; try again in a minute.", "user lookup", "err", errText(identity.AsError(err)))
		return
	case !ok || found.ID != u.ID:
		fail(http.StatusUnauthorized, "You have no active account on this gateway; ask its operator.", "user not in the identity source", "user", u.Username)
		return
	}
	s, err := h.sessions.Issue(w, found, session.MethodOIDC)
	if err != nil {
		h.log.Error("issuing a session", "user", found.Username, "err", err.Error())
		fail(http.StatusInternalServerError, "The gateway could not start a session. Try again; tell its operator if it persists.", "issue")
		return
	}
	h.log.Info("logged in", "session", *s, "client", h.client(r))
	http.Redirect(w, r, after(st.Next), http.StatusSeeOther)
}

// openLoginState opens the one login cookie.
func (h *Handler) openLoginState(r *http.Request) (loginState, bool) {
	cookies := r.CookiesNamed(LoginCookie)
	if len(cookies) != 1 || len(cookies[0].Value) > 4096 {
		return loginState{}, false
	}
	plain, err := h.sessions.OpenValue(loginPurpose, cookies[0].Value)
	if err != nil {
		return loginState{}, false
	}
	var st loginState
	if json.Unmarshal(plain, &st) != nil || st.State == "" || st.Nonce == "" || st.Verifier == "" {
		return loginState{}, false
	}
	return st, true
}

// printable keeps the printable ASCII of s, at most n bytes: text from the
// query, for a page (html/template escapes it too) and the log.
func printable(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}
