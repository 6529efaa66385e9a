// Package dataplane is a stand-in for Envoy that runs the bootstrap
// `kubegate envoy render` produces, for kubegate's tests and local sandbox where no
// Envoy binary can run. It is a test tool, not a product data plane.
//
//	dp, err := dataplane.Start(ctx, bootstrapYAML, dataplane.Options{OnUpstreamRequest: record})
//	defer dp.Close()
//	kubectl --server dp.URL()+"/k8s-proxy" ...
//
// Start runs envoy.Validate first, then reads every setting it emulates from the
// bootstrap — listener address, certificates and ALPN; codec type, header limits,
// underscore policy, path normalization, upgrade_configs; the route's prefix,
// prefix_rewrite and timeout; the filter order; ext_authz, ext_proc and
// credential_injector settings; every cluster's endpoint, connect timeout,
// protocol, TLS CA/SNI/SAN matchers and circuit breakers; SDS or ADS; the
// overload manager's connection limit; the admin address — and refuses, with the
// path of each field, any bootstrap that sets something it does not emulate
// (support.go lists what it does). A configuration mistake therefore fails a
// test instead of being papered over.
//
// What it emulates, and the Envoy source each part follows (file names are in
// github.com/envoyproxy/envoy; each function cites the function it mirrors):
//
//   - Header map: lower-case keys, pseudo-headers first, a second line of an
//     "inline" header (Authorization among them) folded into the first with ","
//     (common/http/header_map_impl.cc insertByKey, header_map_impl.h INLINE_*).
//   - Connection manager: max_headers_count / max_request_headers_kb (431) and
//     headers_with_underscores_action (400 and close on HTTP/1, reset on HTTP/2)
//     while parsing (http1/http2 codec_impl.cc); path_with_escaped_slashes_action,
//     normalize_path, merge_slashes (conn_manager_utility.cc maybeNormalizePath);
//     mutateRequestHeaders for an edge proxy with use_remote_address: hop-by-hop
//     headers dropped, x-forwarded-for/-proto, x-envoy-external-address, a fresh
//     x-request-id, internal x-envoy-* headers removed; 403 for an upgrade type
//     not in upgrade_configs; "server: envoy"; local replies as
//     Utility::prepareLocalReply builds them, through local_reply_config mappers
//     (local_reply.cc: and/status_code/metadata filters, status, body,
//     headers_to_add; no body formats); the stdout access log in its
//     configured format (the command operators a kubegate format uses; others
//     refused) or Envoy's default; request_headers_timeout; HTTP/2
//     max_concurrent_streams and initial stream and connection windows, advertised
//     and enforced by Go's HTTP/2 server (hardening.go).
//   - Listener: transport_socket_connect_timeout bounds the TLS handshake, and a
//     connection reaches the HTTP server only once it is done (hardening.go);
//     per_connection_buffer_limit_bytes is accepted and not acted on (a flow
//     control watermark; no kubegate filter buffers a body).
//   - local_ratelimit (filters/http/local_ratelimit/local_ratelimit.cc,
//     common/local_ratelimit/local_ratelimit_impl.cc): remote_address descriptors
//     from the filter's rate_limits, a bucket per value for a wildcard descriptor
//     in an LRU of max_dynamic_descriptors, buckets full at creation and refilled
//     by whole fill intervals, 429 "local_rate_limited" with response flag RL
//     (ratelimit.go).
//   - ext_authz (filters/http/ext_authz/ext_authz.cc, common/ext_authz/
//     check_request_utils.cc and ext_authz_grpc_impl.cc): skipped without a
//     route; CheckRequest with the stream id, method, path, host, scheme,
//     protocol, header_map (raw_value) or the comma-joined headers map, peer
//     addresses and the listener certificate as destination principal; the gRPC
//     call bounded by grpc_service.timeout; OK answers applied in Envoy's order
//     (headers, then headers_to_remove, response headers, query parameters with
//     QueryParamsMulti's sorted re-serialization) through validate_mutations and
//     decoder_header_mutation_rules, a refused one being a 500; dynamic metadata
//     stored under envoy.filters.http.ext_authz with ext_authz_duration; denials
//     with their status (403 by default), headers and body; errors, timeouts and
//     unreachable services answered with status_on_error (or error_response's
//     own status) unless failure_mode_allow.
//   - ext_proc (filters/http/ext_proc/ext_proc.cc, processor_state.cc,
//     mutation_utils.cc; common/mutation_rules/mutation_rules.cc): runs also
//     without a route; one stream per request carrying request_headers (raw_value,
//     end_of_stream), metadata_context with the forwarding namespaces and
//     protocol_config; message_timeout; HeaderMutation with remove_headers before
//     set_headers, only the legacy append read (default false: overwrite; true:
//     a new line) and append_action ignored, as in Envoy 1.40, raw_value as the
//     value, Checker::check on every change, and the header-count/size check of
//     the result; immediate_response (status default 200, its headers through the
//     same rules, a refused one dropped); errors answered with status_on_error,
//     message timeouts with 504; a processor that closes its stream with OK
//     before answering lets the request continue, as Envoy does.
//   - credential_injector with the generic credential (credential_injector_
//     filter.cc, injected_credentials/generic): the secret over a real SDS
//     StreamSecrets (or ADS) stream with ACK/NACK; the listener warms until the
//     first secret, the first rejected update (SdsApi::onConfigUpdateFailed) or
//     initial_fetch_timeout; overwrite sets one header line;
//     without a secret a 401 "Failed to inject credential.".
//   - Router (common/router/router.cc, config_impl.cc, http1/codec_impl.cc): prefix
//     match and prefix_rewrite with x-envoy-original-path; the router's 404 for no
//     route; HTTP/1.1 upstream over TLS verified against trusted_ca and
//     match_typed_subject_alt_names with the cluster's SNI; request line and
//     headers written as Envoy's encoder writes them (host first, lower case,
//     content-length or chunked framing); circuit breakers (503 overflow with
//     x-envoy-overloaded); 503 "upstream connect error ..." local replies;
//     streamed responses flushed chunk by chunk; 101 upgrades passed through
//     byte for byte; stream_idle_timeout; a cluster's upstream
//     common_http_protocol_options.idle_timeout (pooled connections with no
//     request closed after it, default 1h, 0 never; codec_client.cc); a route
//     timeout from the end of the request to the end of the response (504
//     "upstream request timeout" before the response headers, a reset after,
//     x-envoy-expected-rq-timeout-ms sent upstream; router.cc); a route's
//     request_headers_to_remove and response_headers_to_remove
//     (finalizeRequestHeaders / finalizeResponseHeaders, upstream responses).
//   - The browser half (browser.go): a route's typed_per_filter_config
//     ExtAuthzPerRoute{disabled: true} (ext_authz.cc getPerRouteFlags: the check
//     is skipped) and ExtProcPerRoute{disabled: true} (ext_proc.cc
//     mergePerRouteConfig: every callback skipped, no stream); redirect routes
//     with path_redirect, strip_query and response_code (Location from
//     Http::Utility::newUri with the request's scheme and Host); a plain HTTP/1.1
//     cluster (no transport_socket) for the browser listener. Other per-route
//     configs, per-filter configs on a virtual host or route configuration,
//     host/port/scheme redirects and 201/3xx direct responses are refused.
//
// Known differences from Envoy, none of which kubegate's filters can observe
// except as noted: Go's server does not keep the order of distinct request header
// names, so regular headers reach the filters sorted by name (each name's lines in
// order); upstream response headers are likewise re-ordered; canonicalPath does
// not re-escape characters invalid in a path; for a loopback peer
// x-forwarded-for gets the listener's IP rather than the host's primary address;
// clusters have exactly one endpoint and active health checks are not run (with
// one endpoint Envoy's panic threshold sends traffic to it anyway); the route's
// response_headers_to_remove is not applied to the router's own local replies;
// request_headers_timeout runs
// from the start of a connection's first request rather than its first byte, and
// on expiry the connection is closed without Envoy's 408, and it does not apply
// to HTTP/2 streams; a stream over max_concurrent_streams is reset with Go's
// error code (PROTOCOL_ERROR once the settings are acknowledged).
package dataplane
