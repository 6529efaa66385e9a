package dataplane

import (
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// emulated lists, per message type, the fields the test data plane implements.
// Any other field that is set in the bootstrap is refused with its path, so a
// configuration the stand-in would silently treat differently from Envoy cannot
// pass a test. Values inside the listed fields are checked again where they are
// read (config.go): a listed field is not a promise that every value works.
//
// A few listed fields have no observable effect in kubegate's topology and are read
// but not acted on (stat_prefix, health_checks, Node); config.go says why for each.
var emulated = map[protoreflect.FullName][]string{
	"envoy.config.bootstrap.v3.Bootstrap":                                                      {"node", "static_resources", "admin", "overload_manager", "dynamic_resources"},
	"envoy.config.bootstrap.v3.Bootstrap.StaticResources":                                      {"listeners", "clusters"},
	"envoy.config.bootstrap.v3.Bootstrap.DynamicResources":                                     {"ads_config"},
	"envoy.config.bootstrap.v3.Admin":                                                          {"address"},
	"envoy.config.core.v3.Node":                                                                {"id", "cluster"},
	"envoy.config.core.v3.Address":                                                             {"socket_address", "pipe"},
	"envoy.config.core.v3.SocketAddress":                                                       {"protocol", "address", "port_value"},
	"envoy.config.core.v3.Pipe":                                                                {"path"},
	"envoy.config.overload.v3.OverloadManager":                                                 {"resource_monitors"},
	"envoy.config.overload.v3.ResourceMonitor":                                                 {"name", "typed_config"},
	"envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": {"max_active_downstream_connections"},

	// Listener and HTTP connection manager.
	"envoy.config.listener.v3.Listener":                                      {"name", "address", "filter_chains", "per_connection_buffer_limit_bytes"},
	"envoy.config.listener.v3.FilterChain":                                   {"filters", "transport_socket", "transport_socket_connect_timeout"},
	"envoy.config.listener.v3.Filter":                                        {"name", "typed_config"},
	"envoy.config.core.v3.TransportSocket":                                   {"name", "typed_config"},
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":         {"common_tls_context"},
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":           {"sni", "common_tls_context"},
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext":             {"tls_params", "tls_certificates", "alpn_protocols", "validation_context"},
	"envoy.extensions.transport_sockets.tls.v3.TlsParameters":                {"tls_minimum_protocol_version", "tls_maximum_protocol_version"},
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate":               {"certificate_chain", "private_key"},
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": {"trusted_ca", "match_typed_subject_alt_names"},
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher":        {"san_type", "matcher"},
	"envoy.type.matcher.v3.StringMatcher":                                    {"exact"},
	"envoy.config.core.v3.DataSource":                                        {"filename", "inline_string", "inline_bytes"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
		"codec_type", "stat_prefix", "route_config", "http_filters", "upgrade_configs",
		"stream_idle_timeout", "request_timeout", "max_request_headers_kb",
		"common_http_protocol_options", "normalize_path", "merge_slashes",
		"path_with_escaped_slashes_action", "use_remote_address", "access_log",
		"request_headers_timeout", "http2_protocol_options",
		"local_reply_config", "early_header_mutation_extensions",
	},
	// local_reply_config (localreply.go); body_format and body_format_override are not.
	"envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig":                    {"mappers"},
	"envoy.extensions.filters.network.http_connection_manager.v3.ResponseMapper":                      {"filter", "status_code", "body", "headers_to_add"},
	"envoy.config.accesslog.v3.AccessLogFilter":                                                       {"and_filter", "status_code_filter", "metadata_filter"},
	"envoy.config.accesslog.v3.AndFilter":                                                             {"filters"},
	"envoy.config.accesslog.v3.StatusCodeFilter":                                                      {"comparison"},
	"envoy.config.accesslog.v3.ComparisonFilter":                                                      {"op", "value"},
	"envoy.config.core.v3.RuntimeUInt32":                                                              {"default_value", "runtime_key"},
	"envoy.config.accesslog.v3.MetadataFilter":                                                        {"matcher", "match_if_key_not_found"},
	"envoy.type.matcher.v3.MetadataMatcher":                                                           {"filter", "path", "value"},
	"envoy.type.matcher.v3.MetadataMatcher.PathSegment":                                               {"key"},
	"envoy.type.matcher.v3.ValueMatcher":                                                              {"present_match"},
	"envoy.config.core.v3.HeaderValueOption":                                                          {"header", "append_action"},
	"envoy.config.core.v3.HeaderValue":                                                                {"key", "value"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": {"upgrade_type", "enabled"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter":                          {"name", "typed_config"},
	// Shared by the HCM (downstream) and a cluster's protocol options (upstream):
	// config.go refuses idle_timeout in the HCM and the header fields in a cluster.
	"envoy.config.core.v3.HttpProtocolOptions":                  {"max_headers_count", "headers_with_underscores_action", "idle_timeout"},
	"envoy.config.accesslog.v3.AccessLog":                       {"name", "typed_config"},
	"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": {"log_format"},
	"envoy.config.core.v3.SubstitutionFormatString":             {"text_format_source"},

	// Routes.
	"envoy.config.route.v3.RouteConfiguration": {"name", "virtual_hosts"},
	"envoy.config.route.v3.VirtualHost":        {"name", "domains", "routes"},
	"envoy.config.route.v3.Route":              {"name", "match", "route", "direct_response", "redirect", "typed_per_filter_config", "request_headers_to_remove", "response_headers_to_remove"},
	"envoy.config.route.v3.RedirectAction":     {"path_redirect", "strip_query", "response_code"},
	// Per-route configs of the browser route (browser.go): disabled only.
	"envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute": {"disabled"},
	"envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute":   {"disabled"},
	"envoy.config.route.v3.DirectResponseAction":                  {"status", "body"},
	"envoy.config.route.v3.RouteMatch":                            {"prefix", "path", "path_separated_prefix", "case_sensitive"},
	"envoy.config.route.v3.RouteAction":                           {"cluster", "cluster_header", "cluster_not_found_response_code", "prefix_rewrite", "timeout"},

	// HTTP filters.
	"envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": {
		"grpc_service", "transport_api_version", "failure_mode_allow", "status_on_error",
		"encode_raw_headers", "validate_mutations", "decoder_header_mutation_rules",
		"enable_dynamic_metadata_ingestion", "clear_route_cache",
	},
	"envoy.config.core.v3.GrpcService":                                              {"envoy_grpc", "timeout"},
	"envoy.config.core.v3.GrpcService.EnvoyGrpc":                                    {"cluster_name"},
	"envoy.config.common.mutation_rules.v3.HeaderMutationRules":                     {"allow_all_routing", "allow_envoy", "disallow_system", "disallow_all", "allow_expression", "disallow_expression", "disallow_is_error"},
	"envoy.type.matcher.v3.RegexMatcher":                                            {"regex"},
	"envoy.type.v3.HttpStatus":                                                      {"code"},
	"envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor":                   {"grpc_service", "failure_mode_allow", "processing_mode", "message_timeout", "mutation_rules", "metadata_options", "status_on_error", "route_cache_action", "disable_clear_route_cache"},
	"envoy.extensions.filters.http.ext_proc.v3.ProcessingMode":                      {"request_header_mode", "response_header_mode", "request_body_mode", "response_body_mode", "request_trailer_mode", "response_trailer_mode"},
	"envoy.extensions.filters.http.ext_proc.v3.MetadataOptions":                     {"forwarding_namespaces"},
	"envoy.extensions.filters.http.ext_proc.v3.MetadataOptions.MetadataNamespaces":  {"untyped", "typed"},
	"envoy.extensions.filters.http.credential_injector.v3.CredentialInjector":       {"overwrite", "allow_request_without_credential", "credential"},
	"envoy.config.core.v3.TypedExtensionConfig":                                     {"name", "typed_config"},
	"envoy.extensions.http.injected_credentials.generic.v3.Generic":                 {"credential", "header", "header_value_prefix"},
	"envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":                     {"name", "sds_config"},
	"envoy.config.core.v3.ConfigSource":                                             {"resource_api_version", "api_config_source", "ads", "initial_fetch_timeout", "path_config_source"},
	"envoy.config.core.v3.PathConfigSource":                                         {"path", "watched_directory"},
	"envoy.config.core.v3.WatchedDirectory":                                         {"path"},
	"envoy.config.core.v3.AggregatedConfigSource":                                   {},
	"envoy.config.core.v3.ApiConfigSource":                                          {"api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"},
	"envoy.extensions.filters.http.router.v3.Router":                                {},
	"envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec":                 {},
	"envoy.extensions.filters.http.header_mutation.v3.HeaderMutation":               {"mutations"},
	"envoy.extensions.filters.http.header_mutation.v3.Mutations":                    {"request_mutations"},
	"envoy.config.common.mutation_rules.v3.HeaderMutation":                          {"remove"},
	"envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation": {"mutations"},

	// The per-client rate limit (ratelimit.go).
	"envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": {
		"stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
		"local_rate_limit_per_downstream_connection", "always_consume_default_token_bucket",
		"rate_limits", "descriptors", "max_dynamic_descriptors",
	},
	"envoy.type.v3.TokenBucket":                                      {"max_tokens", "tokens_per_fill", "fill_interval"},
	"envoy.config.core.v3.RuntimeFractionalPercent":                  {"default_value"},
	"envoy.type.v3.FractionalPercent":                                {"numerator", "denominator"},
	"envoy.config.route.v3.RateLimit":                                {"actions"},
	"envoy.config.route.v3.RateLimit.Action":                         {"remote_address"},
	"envoy.config.route.v3.RateLimit.Action.RemoteAddress":           {},
	"envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor":  {"entries", "token_bucket"},
	"envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry": {"key", "value"},

	// Clusters.
	"envoy.config.cluster.v3.Cluster":                                           {"name", "type", "connect_timeout", "load_assignment", "typed_extension_protocol_options", "circuit_breakers", "health_checks", "transport_socket"},
	"envoy.config.endpoint.v3.ClusterLoadAssignment":                            {"cluster_name", "endpoints"},
	"envoy.config.endpoint.v3.LocalityLbEndpoints":                              {"lb_endpoints"},
	"envoy.config.endpoint.v3.LbEndpoint":                                       {"endpoint"},
	"envoy.config.endpoint.v3.Endpoint":                                         {"address"},
	"envoy.config.cluster.v3.CircuitBreakers":                                   {"thresholds"},
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds":                        {"priority", "max_connections", "max_pending_requests", "max_requests"},
	"envoy.config.core.v3.HealthCheck":                                          {"timeout", "interval", "unhealthy_threshold", "healthy_threshold", "grpc_health_check"},
	"envoy.config.core.v3.HealthCheck.GrpcHealthCheck":                          {},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":                    {"explicit_http_config", "common_http_protocol_options", "http_filters"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": {"http_protocol_options", "http2_protocol_options"},
	"envoy.config.core.v3.Http1ProtocolOptions":                                 {},
	// Read for the listener (HCM http2_protocol_options); a cluster that sets any
	// of them is refused in config.go.
	"envoy.config.core.v3.Http2ProtocolOptions": {"max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"},
}

// leafTypes are messages whose content is a value, not configuration to walk.
var leafTypes = map[protoreflect.FullName]bool{
	"google.protobuf.Duration": true, "google.protobuf.BoolValue": true,
	"google.protobuf.UInt32Value": true, "google.protobuf.UInt64Value": true,
	"google.protobuf.Int64Value": true, "google.protobuf.StringValue": true,
	"google.protobuf.DoubleValue": true,
}

// unsupported walks m and reports every set field the stand-in does not emulate,
// unpacking google.protobuf.Any on the way (the same depth Validate checks).
func unsupported(m proto.Message) []string {
	var out []string
	walkSupported(m.ProtoReflect(), "$", &out)
	sort.Strings(out)
	return out
}

func walkSupported(m protoreflect.Message, path string, out *[]string) {
	md := m.Descriptor()
	if leafTypes[md.FullName()] {
		return
	}
	if md.FullName() == "google.protobuf.Any" {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			*out = append(*out, fmt.Sprintf("%s: cannot unpack %s: %v", path, a.GetTypeUrl(), err))
			return
		}
		walkSupported(inner.ProtoReflect(), path, out)
		return
	}
	allowed, known := emulated[md.FullName()]
	if !known {
		*out = append(*out, fmt.Sprintf("%s: %s is not emulated by the test data plane", path, md.FullName()))
		return
	}
	ok := make(map[string]bool, len(allowed))
	for _, f := range allowed {
		ok[f] = true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fp := path + "." + string(fd.Name())
		if !ok[string(fd.Name())] {
			*out = append(*out, fmt.Sprintf("%s: field %s.%s is not emulated by the test data plane", fp, md.FullName(), fd.Name()))
			return true
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walkSupported(mv.Message(), fmt.Sprintf("%s[%q]", fp, k.String()), out)
					return true
				})
			}
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walkSupported(l.Get(i).Message(), fmt.Sprintf("%s[%d]", fp, i), out)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			walkSupported(v.Message(), fp, out)
		}
		return true
	})
}

func joinLines(lines []string) string {
	return "  " + strings.Join(lines, "\n  ")
}
