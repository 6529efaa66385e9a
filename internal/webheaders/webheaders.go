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

// ReferrerPolicy is the Referrer-Policy of every answer (Set says why).
const ReferrerPolicy = "same-origin"

// Set puts the security headers on h, replacing any already there:
// Content-Security-Policy, X-Content-Type-Options nosniff (no guessing a
// script out of another type), Referrer-Policy same-origin (URLs, which may
// carry an OIDC code or state, never leave this origin in a Referer) and
// X-Frame-Options DENY (frame-ancestors for older browsers).
//
// Not no-referrer: under it a browser sends `Origin: null` with a form POST
// (Fetch standard, "append a request Origin header": a non-CORS request that is
// not GET or HEAD gets a null origin when the policy is no-referrer), so the
// login form's own same-origin check could never pass. same-origin keeps the
// real Origin on same-origin requests and sends nothing to other origins.
func Set(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", ReferrerPolicy)
	h.Set("X-Frame-Options", "DENY")
}
