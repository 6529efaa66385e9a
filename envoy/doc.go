// Package envoy renders and validates the Envoy v3 bootstrap that puts kubegate in
// front of a Kubernetes API server.
//
// The data plane is fixed by ../shared/spec/envoy.md: one TLS listener whose HTTP
// connection manager runs ext_authz (kubegate authz), ext_proc (kubegate extproc),
// credential_injector (the agent's service-account token from SDS) and the router,
// in that order, to one HTTP/1.1 TLS cluster for the API server.
//
// Render builds that bootstrap from go-control-plane types with one builder per
// resource (resources.go); Validate checks any bootstrap a person hands in: strict
// decoding with JSON paths (decode.go), protoc-gen-validate rules on every message
// including those inside google.protobuf.Any (pgv.go), and kubegate's own rules that
// catch configurations which would fail open or break kubectl exec (rules.go).
// With Options.Browser (--browser), the browser half is rendered too (browser.go):
// /ui/ to kubegate authz's browser listener with ext_authz and ext_proc disabled
// for that route only, redirects to it, and CORS response headers stripped on the
// API routes; rules_browser.go holds the rules that keep it the only way around
// the two filters.
// MeshResources builds the same listener and clusters for a service mesh's Envoy,
// with the agent token read through file-based SDS (mesh.go; the Helm chart's
// mesh.mode=istio embeds its output).
//
// Names that other code looks things up by (cluster, filter, secret names) are the
// exported constants in names.go.
package envoy
