package envoy

import (
	"fmt"
	"strings"
	"time"

	"kubegate.dev/kubegate/contract"
)

// Names of the resources kubegate renders. The test data plane and the SDS server
// find things by these names, so they are part of kubegate's contract.
const (
	// ListenerName is the one downstream listener (TLS, kubectl's endpoint).
	ListenerName = "kubegate"
	// RouteConfigName is the inline route configuration of that listener.
	RouteConfigName = "kubegate"
	// VirtualHostName is the single virtual host; it matches every domain.
	VirtualHostName = "kubegate"
	// RouteName is the route that strips PathPrefix and forwards to the API server
	// of the agent kubegate authz chose (contract.HeaderUpstream).
	RouteName = "k8s-proxy"
	// APIRootRoutePrefix starts the name of each route of a contract.APIRootPaths
	// path (APIRootRoutePrefix + the path), forwarded as it is, like RouteName.
	APIRootRoutePrefix = "api-root:"
	// AgentsRouteName is the route of the agent list endpoint (contract.AgentsPath):
	// a direct_response, since kubegate authz answers those requests itself.
	AgentsRouteName = "kubegate-agents"
	// ExplainRouteName is the route of the explain endpoint (ExplainPrefix): a
	// direct_response, since kubegate authz answers those requests itself.
	ExplainRouteName = "kubegate-explain"
	// NotFoundRouteName is the catch-all route for every other path (404).
	NotFoundRouteName = "not-k8s-proxy"

	// AuthzCluster is kubegate authz, the ext_authz gRPC service.
	AuthzCluster = "kubegate_authz"
	// ExtProcCluster is kubegate extproc, the ext_proc gRPC service.
	ExtProcCluster = "kubegate_extproc"
	// XDSCluster is kubegate xds, the SDS server for the agent token.
	XDSCluster = "kubegate_xds"

	// TokenSecretPrefix starts the name of each agent's SDS generic secret
	// (TokenSecretFor).
	TokenSecretPrefix = "kubegate-agent-token-"

	// PathPrefix is the prefix kubectl talks to; it is rewritten to "/".
	PathPrefix = contract.PathPrefix
	// ExplainPrefix is the explain endpoint's prefix, answered by kubegate authz.
	ExplainPrefix = contract.ExplainPrefix

	// DefaultNodeID and DefaultNodeCluster identify Envoy to the SDS server.
	DefaultNodeID      = "kubegate-envoy"
	DefaultNodeCluster = "kubegate"
)

// APIServerCluster is the Envoy cluster of an agent's Kubernetes API server (TLS,
// HTTP/1.1): the name kubegate authz sets contract.HeaderUpstream to.
func APIServerCluster(agentID int64) string { return contract.UpstreamCluster(agentID) }

// TokenSecretFor is the SDS generic secret holding an agent's service-account
// token (without the "Bearer " prefix): what that agent's cluster's
// credential_injector reads and kubegate xds serves from the agent's token file.
func TokenSecretFor(agentID int64) string { return fmt.Sprintf("%s%d", TokenSecretPrefix, agentID) }

// Extension names (the HttpFilter/TypedExtensionConfig names Envoy documents).
// Envoy identifies a filter by the type URL of its typed_config, not by this name,
// and so does Validate; the names still key typed_per_filter_config.
const (
	FilterExtAuthz           = "envoy.filters.http.ext_authz"
	FilterExtProc            = "envoy.filters.http.ext_proc"
	FilterCredentialInjector = "envoy.filters.http.credential_injector"
	FilterRouter             = "envoy.filters.http.router"
	FilterHeaderMutation     = "envoy.filters.http.header_mutation"
	FilterUpstreamCodec      = "envoy.filters.http.upstream_codec"

	NetworkFilterHCM        = "envoy.filters.network.http_connection_manager"
	TransportSocketTLS      = "envoy.transport_sockets.tls"
	GenericCredential       = "envoy.http.injected_credentials.generic"
	UpstreamHTTPOptionsKey  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	StdoutAccessLog         = "envoy.access_loggers.stdout"
	EarlyHeaderMutation     = "envoy.http.early_header_mutation.header_mutation"
	DownstreamConnectionsRM = "envoy.resource_monitors.global_downstream_max_connections"
)

// ExtAuthzMetadataNamespace is the dynamic-metadata namespace under which Envoy
// stores CheckResponse.dynamic_metadata ("the filter's name", see the ext_authz
// filter docs and Filter::onComplete, which calls setDynamicMetadata with
// "envoy.filters.http.ext_authz"). ext_proc must forward it to kubegate extproc.
const ExtAuthzMetadataNamespace = contract.MetadataNamespace

// Upgrade types kubectl uses: SPDY/3.1 for exec/attach/port-forward/cp with older
// clients and servers, WebSocket for the newer streaming protocol.
var UpgradeTypes = []string{"websocket", "spdy/3.1"}

// Header names ext_authz removes before the request goes upstream (access.md §4).
// They are the only request headers ext_authz's mutation rules allow it to touch.
var CredentialHeaders = contract.CredentialHeaders

// ExtAuthzSetHeaders are the request headers kubegate authz sets itself: in user
// mode, Impersonate-User (one line), so that a request ext_proc never acts on still
// reaches the API server as the user and never as the agent.
// It also sets contract.HeaderUpstream on every allowed request: the agent's
// cluster, which the API routes read (cluster_header) once ext_authz has cleared
// the route cache.
var ExtAuthzSetHeaders = []string{contract.HeaderImpersonateUser, contract.HeaderUpstream}

// ExtAuthzMutationExpression is ext_authz's decoder_header_mutation_rules
// allow_expression: the credential headers it removes and the headers it sets.
func ExtAuthzMutationExpression() string {
	return "^(" + strings.Join(append(append([]string(nil), CredentialHeaders...), ExtAuthzSetHeaders...), "|") + ")$"
}

// ImpersonationHeaderExpression is the only header-name pattern ext_proc may
// mutate (RE2, matched against the lower-cased name as a whole, like Envoy's
// HeaderMutationRules allow_expression).
const ImpersonationHeaderExpression = contract.ImpersonatePrefix + ".+"

// SDSInitialFetchTimeout bounds how long Envoy's listener waits for the agent
// token before it serves at all. The wait ends on the first secret, on this
// timeout, or on the first rejected update (SdsApi::onConfigUpdate /
// onConfigUpdateFailed, source/common/secret/sds_api.cc; the subscription's
// init-fetch timer reports FetchTimedout the same way); Envoy's default is 15 s
// (config_source.proto). kubegate xds serves a local file and answers in
// milliseconds, so 10 s covers a sidecar started a few seconds late. After it, a
// gateway without a token serves, and every request it allowed gets the
// credential injector's 401, which LocalReplyConfig turns into a 503 Status
// naming the missing agent token, rather than refusing connections with no
// explanation (0, waiting forever, would also keep Envoy's /ready failing).
const SDSInitialFetchTimeout = 10 * time.Second

// MinEnvoyVersion is the oldest Envoy whose API has every field the rendered
// bootstrap sets. Checked by resolving each set field of the rendered bootstrap
// against the descriptors of go-control-plane's envoy module, which is generated
// from Envoy's API protos per release: v1.35.0 lacks ext_proc status_on_error,
// v1.36.0 lacks the generic credential's header_value_prefix, v1.37.0 has all.
//
// The agent token is injected by credential_injector as an upstream HTTP filter
// of each API server cluster (HttpProtocolOptions.http_filters). Envoy registers
// the filter's factory as an UpstreamHttpFilterConfigFactory too
// (source/extensions/filters/http/credential_injector/config.cc,
// REGISTER_FACTORY(UpstreamCredentialInjectorFilterFactory, ...)), and
// extensions_metadata.yaml lists it under envoy.filters.http.upstream. That holds
// since v1.34.0: envoyproxy/envoy#38398 (merged after v1.33.0) made the filter a
// dual one, and #38798 (March 2025, before v1.34.0) fixed its SDS init manager for
// the upstream case ("the Credential Injector can be used for both HCM filter and
// upstream filter"); Envoy Gateway relies on it for its per-backend credential
// injection (envoyproxy/gateway#5607). Upstream HTTP filters are "currently in
// alpha" (http_protocol_options.proto). v1.37.0 is above both, so it stays the
// minimum. An upstream filter's local reply (no secret yet: 401) goes "via the
// downstream HTTP filter manager" (UpstreamFilterManager::sendLocalReply,
// source/common/router/upstream_request.cc), so LocalReplyConfig still applies.
// An older Envoy refuses the bootstrap as an unknown field (or worse, a build
// without the check would ignore it: status_on_error would fall back to 500,
// and without header_value_prefix the token would go upstream without "Bearer ").
const MinEnvoyVersion = "1.37.0"

// ReferenceEnvoyVersion is the Envoy release whose source the test data plane
// emulates and the image docker-compose.yaml pins (envoyproxy/envoy:v1.40.0).
const ReferenceEnvoyVersion = "1.40.0"

// Defaults for Options; each is a flag of `kubegate envoy render`.
const (
	DefaultListen            = "0.0.0.0:8443"
	DefaultAdmin             = "127.0.0.1:9901"
	DefaultAuthzTimeout      = 5 * time.Second
	DefaultExtProcTimeout    = 1 * time.Second
	DefaultConnectTimeout    = 1 * time.Second
	DefaultStreamIdleTimeout = 1 * time.Hour
	// DefaultMaxHeadersCount leaves room for the Impersonate-Group lines ext_proc
	// adds: up to six role groups per qualifying project or group. Envoy rejects an
	// ext_proc mutation that ends above this count (mutation_utils.cc,
	// headerMutationResultCheck), so it bounds how many entries a user may qualify for.
	DefaultMaxHeadersCount     = 4096
	DefaultMaxRequestHeadersKB = 512
	DefaultMaxConnections      = 10000
	// MinStreamIdleTimeout is the shortest stream_idle_timeout Validate accepts
	// (other than 0, which disables it): watches and `logs -f` sit idle for long.
	MinStreamIdleTimeout = 1 * time.Hour
)

// APIServerServerIdleTimeout is how long kube-apiserver keeps an idle HTTP/1.1
// connection open: its http.Server sets IdleTimeout 90 s (k8s.io/apiserver
// pkg/server/secure_serving.go, "matches http.DefaultTransport keep-alive
// timeout"). The server closes the connection then, with no warning on the wire.
const APIServerServerIdleTimeout = 90 * time.Second

// UpstreamIdleTimeout is the idle_timeout of the API server cluster's upstream
// connections (HttpProtocolOptions.common_http_protocol_options). Without it Envoy
// keeps a pooled connection idle for its default of 1 hour (protocol.proto,
// HttpProtocolOptions.idle_timeout: "If not specified, this defaults to 1 hour"),
// so kube-apiserver closes it first, at APIServerServerIdleTimeout, and a request
// Envoy sends on it at that moment is reset: a 503 with no fault anywhere. Closing
// it from Envoy's side well before the server does removes the race. The timeout
// is "the period in which there are no active requests or streams" and "only
// fires when there are no active streams" (Envoy's FAQ, "How do I configure
// timeouts?", Connection timeouts), so a quiet watch, `logs -f` or exec session
// holds its connection open however long it lasts.
const UpstreamIdleTimeout = 60 * time.Second
