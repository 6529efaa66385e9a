package extauthz

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/internal/weborigin"
)

// Cross-origin requests with a session cookie (issue 13, access.md §2.3). A
// browser sends the gateway's session cookie with any request to the gateway,
// whichever page started it (SameSite=Lax still lets top-level navigations and,
// between sites sharing a registrable domain, everything through). The CSRF token
// stops a forged API call; refusing every session-cookie request that says it
// comes from another origin stops the rest, WebSockets included (a browser's
// WebSocket carries the CSRF token in the query and always sends Origin,
// RFC 6455 §4.1).
//
// Only the session cookie is checked. kubectl and other clients with a PAT or an
// OIDC ID token send no Origin, and their credential is not ambient: a page in a
// browser cannot make the browser attach it, so a non-browser client is not a
// CSRF vector, and a script that has the token can send it from anywhere anyway.

// ReasonCrossOrigin: a session-cookie request from another origin (Origin or
// Sec-Fetch-Site), or with no origin configured to compare with.
const ReasonCrossOrigin Reason = "cross_origin"

// NormalizeOrigin turns a public URL (authz's --public-url, e.g.
// https://gateway.example:8443/) into the origin a browser sends in its Origin
// header for pages served from it: the scheme and host in lower case and the port
// only when it is not the scheme's default (the serialization of an origin, RFC
// 6454 §6.2, as the WHATWG URL standard writes it). Anything that is not a bare
// http or https origin, optionally with a "/" path, is an error.
func NormalizeOrigin(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("public URL %q is not a URL like https://gateway.example:8443", raw)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", fmt.Errorf("public URL %q: the scheme must be https (or http for a local test)", raw)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return "", fmt.Errorf("public URL %q: give only scheme, host and port (the gateway serves the Dashboard at %s of its own origin)", raw, "/ui/")
	}
	return weborigin.Of(u), nil
}

// NormalizeOrigins normalizes each public URL (NormalizeOrigin).
func NormalizeOrigins(raw []string) ([]string, error) {
	var out []string
	var errs []error
	for _, r := range raw {
		o, err := NormalizeOrigin(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, o)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// sameOrigin is the origin step for a session-cookie request: "" when it may go
// on, else the reason's message. allowed are normalized origins. The comparison is
// exact (a browser serializes Origin one way): "null", a second Origin line, a
// different case, a trailing slash, another port or scheme are all another
// origin. Sec-Fetch-Site, when sent, must be same-origin, or none (a request the
// user started, such as a typed address); same-site, cross-site or two lines are
// refused (Fetch Metadata, https://www.w3.org/TR/fetch-metadata/).
func sameOrigin(allowed []string, h identity.Header) string {
	const use = "the Dashboard must be used from the gateway's own origin"
	if len(allowed) == 0 {
		return "this gateway has no public URL configured, so it cannot tell its own pages from another site's and refuses every session-cookie request; start kubegate authz with --public-url https://<the gateway's address> (the address users open the Dashboard at)"
	}
	if origins, ok := h["origin"]; ok {
		if len(origins) != 1 {
			return fmt.Sprintf("%d Origin headers: %s", len(origins), use)
		}
		matched := false
		for _, a := range allowed {
			if origins[0] == a {
				matched = true
				break
			}
		}
		if !matched {
			return fmt.Sprintf("a request from origin %q with the session cookie: %s", clip(origins[0]), use)
		}
	}
	if sites, ok := h["sec-fetch-site"]; ok {
		if len(sites) != 1 || (sites[0] != "same-origin" && sites[0] != "none") {
			return fmt.Sprintf("Sec-Fetch-Site %q: a request another site started; %s", clip(strings.Join(sites, ", ")), use)
		}
	}
	return ""
}

// clip bounds what of a client's header is echoed in a message.
func clip(s string) string {
	const max = 100
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
