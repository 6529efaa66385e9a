// Package dashboard serves kubegate's Dashboard for Kubernetes: one HTML page and its
// assets (CSS and ES-module JavaScript), embedded in the binary with go:embed.
// kubegate authz's browser listener serves Handler under contract.BrowserPrefix; the
// page then talks only to its own origin: contract.SessionPath for who is logged in
// (and the CSRF token), and the Kubernetes API under contract.PathPrefix with the
// session cookie, Gitlab-Agent-Id and X-Csrf-Token, so every call that reaches a
// cluster passes ext_authz and ext_proc as the user, like kubectl's.
//
// Why no framework and no build step: the Dashboard is a few hundred lines of
// standard DOM, fetch and streams (a watch and a log are a fetch whose body is read
// as it arrives). A framework would add a toolchain (npm, a bundler) beyond go build,
// code to vendor, audit and upgrade, and nothing this page needs. Plain ES modules
// run as they are in current Chromium and Firefox, and the strict
// Content-Security-Policy (script-src 'self', no inline script or style, no other
// origin) holds without exceptions. The test bed drives the page in a real Chromium
// (test/browser).
package dashboard
