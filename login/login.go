// Package login serves kubegate authz's browser listener: everything under
// contract.BrowserPrefix except the Dashboard itself (Config.Dashboard serves
// contract.DashboardPath and contract.AssetsPrefix).
//
//	GET  /ui/login          the login page (html/template, works without JavaScript)
//	POST /ui/login          password login (form fields username, password; Origin checked)
//	GET  /ui/login/oidc     starts the OIDC authorization-code flow with PKCE
//	GET  /ui/oidc/callback  the provider's redirect back: code exchange, ID token, session
//	POST /ui/logout         ends the session (needs its CSRF token)
//	GET  /ui/session        contract.SessionInfo of the current session (refreshes it)
//
// Sessions are identity/session's: this package only decides when to issue and
// revoke them. Every answer carries internal/webheaders' security headers and
// Cache-Control: no-store. Nothing here logs a cookie, a password, an
// authorization code, a token or a CSRF token.
package login

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/session"
	"kubegate.dev/kubegate/internal/webheaders"
	"kubegate.dev/kubegate/internal/weborigin"
)

// Passwords checks a username and password (the directory implements it). Every
// refusal should be the same *identity.Error; an Unavailable one (busy, source
// down) is answered 503.
type Passwords interface {
	CheckPassword(ctx context.Context, username, password string) (identity.User, error)
}

// Agents lists the agents a user can reach, as the agent list endpoint does
// (extauthz.Server implements it).
type Agents interface {
	AgentsFor(ctx context.Context, u identity.User) ([]contract.AgentInfo, error)
}

// AgentsFunc adapts a function to Agents.
type AgentsFunc func(ctx context.Context, u identity.User) ([]contract.AgentInfo, error)

func (f AgentsFunc) AgentsFor(ctx context.Context, u identity.User) ([]contract.AgentInfo, error) {
	return f(ctx, u)
}

// Config configures New.
type Config struct {
	// PublicURL is the gateway's origin as browsers see it (https://host[:port]):
	// login forms must come from it (Origin), and the OIDC redirect URI is
	// PublicURL + contract.OIDCCallbackPath.
	PublicURL *url.URL
	Sessions  *session.Manager
	// Passwords enables password login; nil: none.
	Passwords Passwords
	// OIDC enables login with an OpenID Connect provider; nil: none.
	OIDC *OIDCConfig
	// Agents fills SessionInfo.Agents.
	Agents Agents
	// Dashboard serves DashboardPath and AssetsPrefix; nil: 404 for them.
	Dashboard http.Handler
	// Limits bound login attempts; zero fields take the defaults.
	Limits Limits
	// ClientAddr names the client a request comes from, for the per-client
	// attempt limit; nil: the connection's remote address.
	ClientAddr func(*http.Request) string
	Logger     *slog.Logger
	// Now is the clock of the attempt limits; nil: time.Now.
	Now func() time.Time
}

// Handler is the browser listener's handler.
type Handler struct {
	cfg       Config
	origin    string // scheme://host[:port] of PublicURL, default port left out
	sessions  *session.Manager
	log       *slog.Logger
	now       func() time.Time
	users     *limiter // attempts per username
	clients   *limiter // attempts per client
	oidc      *oidcLogin
	dashboard http.Handler
}

// maxFormBody bounds a login or logout form: a username, a password of at most
// 1 KiB, a CSRF token and a next path fit many times over.
const maxFormBody = 8 << 10

// New checks cfg and makes the handler. It does not contact the OIDC provider:
// discovery happens on the first OIDC login.
func New(cfg Config) (*Handler, error) {
	origin, err := checkPublicURL(cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	var errs []error
	if cfg.Sessions == nil {
		errs = append(errs, errors.New("login: no session manager (--session-key-file)"))
	}
	if cfg.Agents == nil {
		errs = append(errs, errors.New("login: no agent lister"))
	}
	if cfg.Passwords == nil && cfg.OIDC == nil {
		errs = append(errs, errors.New("login: no way to log in: the identity source has no passwords (--identity-source=directory) and no OIDC provider is configured (--oidc-issuer)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, origin: origin, sessions: cfg.Sessions, log: cfg.Logger, now: cfg.Now, dashboard: cfg.Dashboard}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.dashboard == nil {
		h.dashboard = http.NotFoundHandler()
	}
	lim := cfg.Limits.withDefaults()
	h.users = newLimiter(lim.PerUser, lim.UserBurst, lim.MaxTracked)
	h.clients = newLimiter(lim.PerClient, lim.ClientBurst, lim.MaxTracked)
	if cfg.OIDC != nil {
		redirect := *cfg.PublicURL
		redirect.Path, redirect.RawPath = contract.OIDCCallbackPath, ""
		if h.oidc, err = newOIDCLogin(*cfg.OIDC, redirect.String()); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// ParsePublicURL parses and checks a public URL (--public-url) as New does.
func ParsePublicURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("login: the public URL %q does not parse: %w", s, err)
	}
	if _, err := checkPublicURL(u); err != nil {
		return nil, err
	}
	return u, nil
}

// checkPublicURL: an absolute https URL of an origin only (http only for a
// loopback host, where nothing crosses a network), returned as the origin
// browsers send in Origin.
func checkPublicURL(u *url.URL) (string, error) {
	const form = "login: the public URL must be the gateway's origin as browsers reach it, like https://kubegate.example.com or https://127.0.0.1:8443"
	switch {
	case u == nil:
		return "", errors.New(form + " (--public-url)")
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return "", fmt.Errorf("%s: %q has more than scheme, host and port", form, u.Redacted())
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopback(u.Hostname()):
	case u.Scheme == "http":
		return "", fmt.Errorf("%s: %q is plain http on a host that is not loopback: session cookies are Secure, and a login page over http is readable on the way", form, u.Redacted())
	default:
		return "", fmt.Errorf("%s: scheme %q", form, u.Scheme)
	}
	return weborigin.Of(u), nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ServeHTTP dispatches on the exact path; anything else under the prefix is 404.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	webheaders.Set(w.Header())
	p := r.URL.Path
	switch {
	case p == contract.DashboardPath || strings.HasPrefix(p, contract.AssetsPrefix):
		h.dashboard.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	switch p {
	case contract.LoginPath:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.loginPage(w, r)
		case http.MethodPost:
			h.passwordLogin(w, r)
		default:
			methodNotAllowed(w, "GET, HEAD, POST")
		}
	case contract.OIDCLoginPath:
		if h.oidc == nil {
			h.notFound(w)
		} else if only(w, r, http.MethodGet) {
			h.oidcStart(w, r)
		}
	case contract.OIDCCallbackPath:
		if h.oidc == nil {
			h.notFound(w)
		} else if only(w, r, http.MethodGet) {
			h.oidcCallback(w, r)
		}
	case contract.LogoutPath:
		if only(w, r, http.MethodPost) {
			h.logout(w, r)
		}
	case contract.SessionPath:
		if only(w, r, http.MethodGet) {
			h.sessionInfo(w, r)
		}
	default:
		h.notFound(w)
	}
}

// only answers 405 with Allow unless r's method is method (or HEAD for GET).
func only(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	allow := method
	if method == http.MethodGet {
		allow = "GET, HEAD"
	}
	methodNotAllowed(w, allow)
	return false
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed here; allowed: "+allow, http.StatusMethodNotAllowed)
}

func (h *Handler) notFound(w http.ResponseWriter) {
	h.page(w, http.StatusNotFound, pageData{Title: "Not found", Message: "There is no such page on this gateway.", Link: contract.LoginPath, LinkText: "Go to the login page"})
}

// sameOrigin reports whether r was sent by a page of the gateway's own origin:
// its Origin header, or without one its Referer, must be PublicURL's origin.
// Browsers send Origin with every cross-origin POST and with same-origin ones
// (Fetch standard, "append a request Origin header"); a request with neither is
// refused (login CSRF: a foreign page must not log the browser in as someone
// else).
func (h *Handler) sameOrigin(r *http.Request) bool {
	origins := r.Header.Values("Origin")
	if len(origins) > 1 {
		return false
	}
	if len(origins) == 1 {
		u, err := url.Parse(origins[0])
		return err == nil && u.Scheme != "" && u.Host != "" && u.Path == "" && u.RawQuery == "" && weborigin.Of(u) == h.origin && origins[0] == weborigin.Of(u)
	}
	refs := r.Header.Values("Referer")
	if len(refs) != 1 {
		return false
	}
	u, err := url.Parse(refs[0])
	return err == nil && u.Scheme != "" && u.Host != "" && u.User == nil && weborigin.Of(u) == h.origin
}

// safeNext returns next when it is a path under BrowserPrefix that a browser
// resolves to that same path on this origin, else "" (no open redirect):
// no scheme or host ("https://evil", "//evil"), no backslash ("/\evil", which
// browsers read as "//evil"), no dot segments ("/ui/../x"), no doubled slash, no
// control characters, also once percent-decoded.
func safeNext(next string) string {
	if next == "" || len(next) > 1024 || !strings.HasPrefix(next, contract.BrowserPrefix) {
		return ""
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return ""
	}
	for _, s := range []string{next, u.Path} {
		if strings.ContainsAny(s, "\\") || strings.Contains(s, "//") || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return ""
		}
	}
	clean := path.Clean(u.Path)
	if strings.HasSuffix(u.Path, "/") && clean != "/" {
		clean += "/"
	}
	if clean != u.Path || !strings.HasPrefix(clean, contract.BrowserPrefix) {
		return ""
	}
	return next
}

// after is where a successful login goes.
func after(next string) string {
	if s := safeNext(next); s != "" {
		return s
	}
	return contract.DashboardPath
}
