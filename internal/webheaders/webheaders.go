// Package webheaders is the one set of security headers every page and answer of
// kubegate's browser listener carries (the login pages and the Dashboard alike),
// so the two cannot drift apart.
package webheaders

import "net/http"

// ContentSecurityPolicy allows only the gateway's own scripts, styles, images
// (and data: images), fetches and form targets; no inline script or style, no
// framing by any page (clickjacking), no <base> rewriting. With it, injected
// markup cannot run script or send a form elsewhere.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Set puts the security headers on h, replacing any already there:
// Content-Security-Policy, X-Content-Type-Options nosniff (no guessing a
// script out of another type), Referrer-Policy no-referrer (URLs, which may
// carry an OIDC code or state, never leave in a Referer) and X-Frame-Options
// DENY (frame-ancestors for older browsers).
func Set(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}
