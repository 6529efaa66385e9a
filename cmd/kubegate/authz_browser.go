package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"kubegate.dev/kubegate/dashboard"

	"github.com/spf13/pflag"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity/backends"
	"kubegate.dev/kubegate/identity/oidc"
	"kubegate.dev/kubegate/login"
)

// browserFlags are kubegate authz's browser listener: the login pages, the
// session endpoint and (once built in) the Dashboard, under contract.BrowserPrefix.
type browserFlags struct {
	addr             string
	publicURL        string
	oidcClientID     string
	oidcClientSecret string
}

func (b *browserFlags) add(f *pflag.FlagSet) {
	f.StringVar(&b.addr, "browser-listen", "", "serve the browser half on ADDR (host:port, plain HTTP/1.1 for Envoy, which routes "+contract.BrowserPrefix+" to it): the login page, password and OIDC login, logout and the session endpoint; empty: off. Needs --public-url and --session-key-file")
	f.StringVar(&b.publicURL, "public-url", "", "the gateway's origin as browsers reach it (scheme://host[:port], e.g. https://kubegate.example.com): login forms must come from it, and the OIDC redirect URI is it + "+contract.OIDCCallbackPath+"; https unless the host is loopback (required with --browser-listen)")
	f.StringVar(&b.oidcClientID, "oidc-browser-client-id", "", "the OIDC client the browser login uses (its ID tokens name it as audience; register the redirect URI <public-url>"+contract.OIDCCallbackPath+" for it); default: --oidc-client-id")
	f.StringVar(&b.oidcClientSecret, "oidc-client-secret-file", "", "the browser login's OIDC client secret, one line; empty: a public client (PKCE only)")
}

func (b *browserFlags) validate(id *backends.Options) []error {
	var errs []error
	if b.addr == "" {
		for name, set := range map[string]bool{"--oidc-browser-client-id": b.oidcClientID != "", "--oidc-client-secret-file": b.oidcClientSecret != ""} {
			if set {
				errs = append(errs, fmt.Errorf("%s is for the browser login: it needs --browser-listen", name))
			}
		}
		if b.publicURL != "" {
			if _, err := login.ParsePublicURL(b.publicURL); err != nil {
				errs = append(errs, fmt.Errorf("--public-url: %w", err))
			}
		}
		return errs
	}
	if b.publicURL == "" {
		errs = append(errs, errors.New("--browser-listen needs --public-url: the gateway's origin as browsers reach it, like https://kubegate.example.com"))
	} else if _, err := login.ParsePublicURL(b.publicURL); err != nil {
		errs = append(errs, fmt.Errorf("--public-url: %w", err))
	}
	if id.SessionKeyFile == "" {
		errs = append(errs, errors.New("--browser-listen needs --session-key-file: browser sessions are sealed with its key"))
	}
	if (b.oidcClientID != "" || b.oidcClientSecret != "") && id.OIDCIssuer == "" {
		errs = append(errs, errors.New("--oidc-browser-client-id and --oidc-client-secret-file need --oidc-issuer"))
	}
	if id.Source != backends.SourceDirectory && id.OIDCIssuer == "" {
		errs = append(errs, errors.New("--browser-listen: there is no way to log in: passwords need --identity-source=directory, OIDC needs --oidc-issuer"))
	}
	return errs
}

// listen opens --browser-listen now, so a taken port stops the start.
func (b *browserFlags) open(log *slog.Logger) (net.Listener, error) {
	if b.addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		return nil, fmt.Errorf("--browser-listen %s: %w", b.addr, err)
	}
	log.Info("serving the browser listener", "listen", ln.Addr().String(), "public_url", b.publicURL)
	return ln, nil
}

// handler builds the login handler over the identity source and the gateway's
// agents.
func (b *browserFlags) handler(bk *backends.Backends, id *backends.Options, srv *extauthz.Server, log *slog.Logger) (http.Handler, error) {
	pub, err := login.ParsePublicURL(b.publicURL)
	if err != nil {
		return nil, fmt.Errorf("--public-url: %w", err)
	}
	if bk.Sessions == nil {
		return nil, errors.New("--browser-listen needs --session-key-file")
	}
	cfg := login.Config{PublicURL: pub, Sessions: bk.Sessions, Agents: srv, Dashboard: dashboardHandler(), ClientAddr: login.ForwardedClient, Logger: log.With("component", "browser")}
	if bk.HasPasswords() {
		cfg.Passwords = bk
	}
	if id.OIDCIssuer != "" {
		clientID := b.oidcClientID
		if clientID == "" {
			clientID = id.OIDCClientID
		}
		cfg.OIDC = &login.OIDCConfig{Issuer: id.OIDCIssuer, ClientID: clientID, ClientSecretFile: b.oidcClientSecret,
			UsernameClaims: id.OIDCUsernameClaims, UserID: oidc.UserIDMode(id.OIDCUserID), Users: bk}
	}
	return login.New(cfg)
}

// dashboardHandler serves DashboardPath and AssetsPrefix: the embedded Dashboard.
func dashboardHandler() http.Handler { return dashboard.Handler() }
