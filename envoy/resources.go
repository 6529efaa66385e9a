package envoy

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"kubegate.dev/kubegate/contract"
)

// One builder per resource, plain parameters in, typed protos out (the shape of
// go-control-plane's internal/example/resource.go). Every anypb.New error is returned.

func typed(m proto.Message) (*anypb.Any, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("packing %s into google.protobuf.Any: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return a, nil
}

func httpFilter(name string, m proto.Message) (*hcmv3.HttpFilter, error) {
	a, err := typed(m)
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// EnvoyGRPC is a GrpcService that uses Envoy's own gRPC client to a static cluster.
// timeout is the per-call deadline (zero leaves Envoy's default).
func EnvoyGRPC(cluster string, timeout time.Duration) *corev3.GrpcService {
	g := &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
		EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster},
	}}
	if timeout > 0 {
		g.Timeout = durationpb.New(timeout)
	}
	return g
}

// ExtAuthz is the ext_authz filter config for kubegate authz.
//
// Every field below is set on purpose (see ../shared/spec/envoy.md):
//   - failure_mode_allow false: "When set to false, the filter will reject client
//     requests ... if communication with the authorization service has failed"
//     (ext_authz.proto). Written although it is the default, so the intent is visible.
//   - status_on_error 503: the identity backend or the service is unavailable, which
//     is not the client's fault (access.md §4 wants 503, never 500).
//   - with_request_body unset: Envoy skips buffering for WebSocket and HTTP/2
//     upgrades but not for spdy/3.1 (Filter::decodeHeaders), so buffering would hang
//     kubectl exec.
//   - encode_raw_headers true: "Headers with the same key will also not be combined
//     into a single, comma-separated header" (ext_authz.proto), so kubegate authz sees
//     duplicate Authorization or Impersonate-* lines as separate entries.
//   - validate_mutations true: "If you are using ext_authz with an untrusted ext_authz
//     server, you should set this to true" (ext_authz.proto); kubegate treats every
//     service as one that may be compromised.
//   - decoder_header_mutation_rules: kubegate authz only removes the credential
//     headers and, in user mode, sets Impersonate-User; any other header change is
//     an error (HTTP 500, rejectResponse).
//   - enable_dynamic_metadata_ingestion true: the decision travels to ext_proc as
//     dynamic metadata; false would make every request fail at ext_proc.
//   - clear_route_cache true: kubegate authz sets contract.HeaderUpstream on every
//     OK answer, and the API routes take their cluster from it; Envoy "clears all
//     cached routes when ... the status returned from the authorization service is
//     an HTTP 200 or gRPC 0 [and] at least one authorization response header is
//     added to the client request" (ext_authz.proto), so the router sees the
//     header ext_authz set, never a route chosen before.
func ExtAuthz(cluster string, timeout time.Duration) *extauthzv3.ExtAuthz {
	return &extauthzv3.ExtAuthz{
		Services:                       &extauthzv3.ExtAuthz_GrpcService{GrpcService: EnvoyGRPC(cluster, timeout)},
		TransportApiVersion:            corev3.ApiVersion_V3,
		FailureModeAllow:               false,
		StatusOnError:                  &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		EncodeRawHeaders:               true,
		ValidateMutations:              true,
		DecoderHeaderMutationRules:     onlyHeaders(ExtAuthzMutationExpression()),
		EnableDynamicMetadataIngestion: wrapperspb.Bool(true),
		ClearRouteCache:                true,
	}
}

// onlyHeaders is a HeaderMutationRules that allows mutations of header names
// matching expr and fails the request on any other mutation. In Envoy's
// Checker::isAllowed the order is: disallow_expression, then allow_expression
// (allowed), then disallow_all (refused); disallow_is_error turns a refusal into a
// request failure instead of a silently ignored mutation (mutation_rules.proto).
func onlyHeaders(expr string) *mutationrulesv3.HeaderMutationRules {
	return &mutationrulesv3.HeaderMutationRules{
		AllowExpression: &matcherv3.RegexMatcher{Regex: expr},
		DisallowAll:     wrapperspb.Bool(true),
		DisallowIsError: wrapperspb.Bool(true),
		// Belt and braces: these are already refused by disallow_all, but a later
		// edit of allow_expression must not make them reachable.
		AllowAllRouting: wrapperspb.Bool(false),
		AllowEnvoy:      wrapperspb.Bool(false),
		DisallowSystem:  wrapperspb.Bool(true),
	}
}

// ExtProcProcessingMode is the only processing mode kubegate accepts: request
// headers are sent; everything else is skipped. A body mode other than NONE breaks
// protocol upgrades (envoy#47081, #47048) and response processing is not needed.
func ExtProcProcessingMode() *extprocv3.ProcessingMode {
	return &extprocv3.ProcessingMode{
		RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
		RequestBodyMode:     extprocv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
	}
}

// ExtProc is the ext_proc filter config for kubegate extproc.
//   - failure_mode_allow false: otherwise a failed stream lets the request through
//     without impersonation headers, i.e. as the agent's own service account.
//   - observability_mode false and disable_immediate_response false: either would
//     make Envoy ignore the processor's answer (ext_proc.proto), the same fail-open.
//   - allow_mode_override false: the processor cannot switch on body modes.
//   - message_timeout explicit (the default is 200 ms, ext_proc.proto).
//   - metadata_options.forwarding_namespaces.untyped carries the ext_authz decision
//     into ProcessingRequest.metadata_context.
//   - mutation_rules: only impersonate-* header names; anything else fails the
//     request (disallow_is_error), so even a compromised processor cannot touch
//     Authorization, :path or Host. (Group lines are added with the legacy
//     HeaderValueOption.append=true by kubegate extproc: Envoy 1.40's ext_proc
//     reads only `append` and ignores append_action — MutationUtils::
//     applyHeaderMutations in ext_proc/mutation_utils.cc.)
//   - status_on_error 503 instead of the default 500.
//   - route_cache_action RETAIN: "Do not clear the route cache irrespective of the
//     clear_route_cache bit in the external processor response" (ext_proc.proto,
//     RouteCacheAction). DEFAULT would let a processor's clear_route_cache re-run
//     route matching after ext_authz chose the agent's cluster; CLEAR would do it
//     on every header mutation. ext_proc cannot set contract.HeaderUpstream either
//     (mutation_rules allow impersonate-* only), so it can never re-route.
//
// Envoy 1.40 checks ImmediateResponse headers against these mutation_rules too
// (ext_proc.cc Filter::sendImmediateResponse, runtime guard
// immediate_response_use_filter_mutation_rule, on by default), so kubegate
// extproc's denials carry no headers and a plain-text message, which Envoy labels
// text/plain and kubectl prints as the error (extproc.denial).
func ExtProc(cluster string, messageTimeout time.Duration) *extprocv3.ExternalProcessor {
	return &extprocv3.ExternalProcessor{
		GrpcService:              EnvoyGRPC(cluster, 0),
		FailureModeAllow:         false,
		ProcessingMode:           ExtProcProcessingMode(),
		MessageTimeout:           durationpb.New(messageTimeout),
		MutationRules:            onlyHeaders(ImpersonationHeaderExpression),
		AllowModeOverride:        false,
		ObservabilityMode:        false,
		DisableImmediateResponse: false,
		MetadataOptions: &extprocv3.MetadataOptions{
			ForwardingNamespaces: &extprocv3.MetadataOptions_MetadataNamespaces{
				Untyped: []string{ExtAuthzMetadataNamespace},
			},
		},
		StatusOnError:    &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		RouteCacheAction: extprocv3.ExternalProcessor_RETAIN,
	}
}

// UpstreamHeaderRemoval is the first HTTP filter: header_mutation removing a
// client's contract.HeaderUpstream before any other filter sees the request
// ("request_mutations: Mutations to be applied to the request headers",
// header_mutation.proto; HeaderMutation::decodeHeaders applies them in order,
// source/extensions/filters/http/header_mutation/header_mutation.cc). Only
// kubegate authz's copy is then left for the route to read; a request it did not
// route has none and gets the route's cluster_not_found_response_code.
func UpstreamHeaderRemoval() *headermutationv3.HeaderMutation {
	return &headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{
		RequestMutations: []*mutationrulesv3.HeaderMutation{{
			Action: &mutationrulesv3.HeaderMutation_Remove{Remove: contract.HeaderUpstream},
		}},
	}}
}

// EarlyUpstreamHeaderRemoval is the HCM's early header mutation removing a
// client's contract.HeaderUpstream: "the extensions will be called before any
// routing, tracing, or any filter processing" (http_connection_manager.proto,
// early_header_mutation_extensions). The HTTP filter above comes too late for the
// route: the HCM matches the route, and with cluster_header picks the cluster from
// the header, before the first filter runs (ActiveStream::decodeHeaders calls
// refreshCachedRoute() before filter_manager_.decodeHeaders;
// RouteEntryImplBase::clusterEntry reads cluster_header then,
// source/common/http/conn_manager_impl.cc, source/common/router/config_impl.cc).
// ext_authz clears that cached route only when its OK answer mutates a header, so
// without this an OK answer with no mutation at all would keep the cluster the
// client named.
func EarlyUpstreamHeaderRemoval() (*corev3.TypedExtensionConfig, error) {
	a, err := typed(&earlymutationv3.HeaderMutation{Mutations: []*mutationrulesv3.HeaderMutation{{
		Action: &mutationrulesv3.HeaderMutation_Remove{Remove: contract.HeaderUpstream},
	}}})
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: EarlyHeaderMutation, TypedConfig: a}, nil
}

// SDSConfigSource fetches secrets over gRPC SDS from the given static cluster,
// with an explicit initial_fetch_timeout (SDSInitialFetchTimeout says why).
func SDSConfigSource(cluster string) *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:  corev3.ApiVersion_V3,
		InitialFetchTimeout: durationpb.New(SDSInitialFetchTimeout),
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:                   corev3.ApiConfigSource_GRPC,
			TransportApiVersion:       corev3.ApiVersion_V3,
			GrpcServices:              []*corev3.GrpcService{EnvoyGRPC(cluster, 0)},
			SetNodeOnFirstMessageOnly: true,
		}},
	}
}

// CredentialInjector injects "Authorization: Bearer <token>" from the SDS generic
// secret secretName (TokenSecretFor the agent of the cluster it runs in).
//   - overwrite true: "Whether to overwrite the value or not if the injected headers
//     already exist. Value defaults to false" (credential_injector.proto); false
//     would keep a client's header.
//   - allow_request_without_credential false: "By default, a request will fail with
//     401 Unauthorized if the credential is not present" — so before the first SDS
//     push, nothing reaches the API server.
//   - header_value_prefix "Bearer ": the secret holds the bare token, exactly the
//     bytes of the projected token file (generic.proto, header_value_prefix).
func CredentialInjector(secretName string, sds *corev3.ConfigSource) (*credinjectorv3.CredentialInjector, error) {
	generic, err := typed(&genericv3.Generic{
		Credential:        &tlsv3.SdsSecretConfig{Name: secretName, SdsConfig: sds},
		Header:            "Authorization",
		HeaderValuePrefix: "Bearer ",
	})
	if err != nil {
		return nil, err
	}
	return &credinjectorv3.CredentialInjector{
		Overwrite:                     true,
		AllowRequestWithoutCredential: false,
		Credential:                    &corev3.TypedExtensionConfig{Name: GenericCredential, TypedConfig: generic},
	}, nil
}

// HTTPFilters is the filter chain in the order envoy.md requires: header_mutation
// removes a client's contract.HeaderUpstream, the per-client rate limit refuses
// floods before they cost anything, ext_authz decides (and names the agent's
// cluster), ext_proc adds the impersonation headers, the router forwards. The
// agent token is injected by the chosen cluster's own upstream filters
// (UpstreamFilters), so one agent's token can never go to another's API server.
func HTTPFilters(o Options) ([]*hcmv3.HttpFilter, error) {
	var filters []*hcmv3.HttpFilter
	for _, f := range []struct {
		name string
		cfg  proto.Message
	}{
		{FilterHeaderMutation, UpstreamHeaderRemoval()},
		{FilterLocalRateLimit, ClientRateLimit(o)},
		{FilterExtAuthz, ExtAuthz(AuthzCluster, o.AuthzTimeout)},
		{FilterExtProc, ExtProc(ExtProcCluster, o.ExtProcTimeout)},
		{FilterRouter, &routerv3.Router{}},
	} {
		hf, err := httpFilter(f.name, f.cfg)
		if err != nil {
			return nil, err
		}
		filters = append(filters, hf)
	}
	return filters, nil
}

// UpstreamFilters are an API server cluster's upstream HTTP filters
// (HttpProtocolOptions.http_filters): credential_injector with the agent's own
// secret, then upstream_codec, the terminal filter that encodes the request to
// the connection: Envoy refuses a chain ending otherwise ("non-terminal filter
// named ... is the last filter in a router upstream http filter chain",
// envoyproxy/envoy#26138), and a filter after it would never run.
func UpstreamFilters(secretName string, sds *corev3.ConfigSource) ([]*hcmv3.HttpFilter, error) {
	injector, err := CredentialInjector(secretName, sds)
	if err != nil {
		return nil, err
	}
	ci, err := httpFilter(FilterCredentialInjector, injector)
	if err != nil {
		return nil, err
	}
	codec, err := httpFilter(FilterUpstreamCodec, &upstreamcodecv3.UpstreamCodec{})
	if err != nil {
		return nil, err
	}
	return []*hcmv3.HttpFilter{ci, codec}, nil
}

// tokenSDS is where the credential injectors read the agent tokens from.
func tokenSDS(o Options) *corev3.ConfigSource {
	if o.TokenSDSDir != "" {
		return FileSDSConfigSource(o.TokenSDSDir)
	}
	return SDSConfigSource(XDSCluster)
}

// apiRoute forwards to the cluster kubegate authz named in contract.HeaderUpstream
// (RouteAction.cluster_header: "Envoy will determine the cluster to route to by
// reading the value of the HTTP header named by cluster_header from the request
// headers. If the header is not found or the referenced cluster does not exist,
// Envoy will return a 404 response", unless cluster_not_found_response_code says
// otherwise, route_components.proto). 503 is written explicitly: a request no
// agent was chosen for is the gateway's failure, not a missing path. timeout 0
// disables the route timeout (default 15 s), which would cut watches, `logs -f`
// and exec sessions.
func apiRoute(name string, match *routev3.RouteMatch, prefixRewrite string) *routev3.Route {
	return &routev3.Route{
		Name:  name,
		Match: match,
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier:            &routev3.RouteAction_ClusterHeader{ClusterHeader: contract.HeaderUpstream},
			ClusterNotFoundResponseCode: routev3.RouteAction_SERVICE_UNAVAILABLE,
			PrefixRewrite:               prefixRewrite,
			Timeout:                     durationpb.New(0),
		}},
	}
}

func directRoute(name string, match *routev3.RouteMatch, status uint32, body string) *routev3.Route {
	return &routev3.Route{
		Name:  name,
		Match: match,
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: status,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}},
		}},
	}
}

// RouteConfig: PathPrefix, rewritten to "/", and each of contract.APIRootPaths as
// it is (path_separated_prefix: the path equals it or continues it after a "/",
// contract.IsAPIRootPath), both to the cluster kubegate authz chose; the explain
// and agent list endpoints as direct responses; every other path a 404.
func RouteConfig() *routev3.RouteConfiguration {
	routes := []*routev3.Route{
		apiRoute(RouteName, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: PathPrefix}}, "/"),
	}
	for _, root := range contract.APIRootPaths {
		routes = append(routes, apiRoute(APIRootRoutePrefix+root,
			&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: root}}, ""))
	}
	routes = append(routes,
		// The explain endpoint (contract.ExplainPrefix). kubegate authz answers
		// it from Check with a local reply and never lets it continue; this
		// direct response is what remains if it ever did, so the endpoint can
		// never reach the API server (rule explain-route).
		directRoute(ExplainRouteName, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ExplainPrefix}}, 403,
			"kubegate: the explain endpoint is answered by kubegate authz, which did not answer this request\n"),
		// The agent list endpoint (contract.AgentsPath), answered the same way
		// (rule agents-route).
		directRoute(AgentsRouteName, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: contract.AgentsPath}}, 403,
			"kubegate: the agent list endpoint is answered by kubegate authz, which did not answer this request\n"),
		// Every other path gets a route too. Without one, ext_authz skips the
		// request (no route: nothing to check) while ext_proc still runs and
		// refuses it for lack of a decision; with it, kubegate authz answers
		// its own 400 that names the /k8s-proxy/ prefix. The 404 below is what
		// remains if ext_authz ever let such a request through.
		directRoute(NotFoundRouteName, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, 404,
			"kubegate serves the Kubernetes API under "+PathPrefix+"\n"),
	)
	return &routev3.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    VirtualHostName,
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

// routeConfigFor is RouteConfig, and with --browser the browser routes before the
// catch-all and the CORS response headers removed on every API route
// (browser.go).
func routeConfigFor(o Options) (*routev3.RouteConfiguration, error) {
	rc := RouteConfig()
	if o.Browser == (Addr{}) {
		return rc, nil
	}
	extra, err := browserRoutes()
	if err != nil {
		return nil, err
	}
	vh := rc.VirtualHosts[0]
	last := len(vh.Routes) - 1 // the catch-all stays last
	for _, r := range vh.Routes[:last] {
		if r.GetRoute() != nil {
			stripCORS(r)
		}
	}
	vh.Routes = append(append(vh.Routes[:last:last], extra...), vh.Routes[last])
	return rc, nil
}

// HTTPConnectionManager is the listener's HCM.
func HTTPConnectionManager(o Options) (*hcmv3.HttpConnectionManager, error) {
	filters, err := HTTPFilters(o)
	if err != nil {
		return nil, err
	}
	accessLog, err := accessLogs()
	if err != nil {
		return nil, err
	}
	localReply, err := LocalReplyConfig()
	if err != nil {
		return nil, err
	}
	early, err := EarlyUpstreamHeaderRemoval()
	if err != nil {
		return nil, err
	}
	routes, err := routeConfigFor(o)
	if err != nil {
		return nil, err
	}
	var upgrades []*hcmv3.HttpConnectionManager_UpgradeConfig
	for _, u := range UpgradeTypes {
		upgrades = append(upgrades, &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: u, Enabled: wrapperspb.Bool(true)})
	}
	return &hcmv3.HttpConnectionManager{
		CodecType:      hcmv3.HttpConnectionManager_AUTO,
		StatPrefix:     "kubegate",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routes},
		HttpFilters:    filters,
		UpgradeConfigs: upgrades,
		// Large but finite: a watch or `logs -f` can be quiet for long; 0 would let
		// dead TCP peers hold streams forever.
		StreamIdleTimeout: durationpb.New(o.StreamIdleTimeout),
		// No whole-request deadline: exec sessions and watches are long-lived.
		RequestTimeout:      durationpb.New(0),
		MaxRequestHeadersKb: wrapperspb.UInt32(o.MaxRequestHeadersKB),
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{
			MaxHeadersCount: wrapperspb.UInt32(o.MaxHeadersCount),
			// An underscore header can alias a dash header in some backends
			// (CGI-style normalisation); refuse them outright.
			HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_REJECT_REQUEST,
		},
		// The path kubegate authz parses must be the path the API server serves:
		// normalise dot segments and repeated slashes first, and refuse %2F/%5C,
		// which the API server would decode into extra path segments.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		// kubectl connects directly; never trust a client's X-Forwarded-For.
		UseRemoteAddress: wrapperspb.Bool(true),
		// AccessLogFormat: the default format would print the query (credentials).
		AccessLog: accessLog,
		// Slow and greedy clients (hardening.go).
		RequestHeadersTimeout: durationpb.New(o.RequestHeadersTimeout),
		Http2ProtocolOptions:  HTTP2Options(o),
		// A gateway without the agent token answers a 503 Status, not a bare 401.
		LocalReplyConfig: localReply,
		// A client's x-kubegate-upstream never reaches route matching.
		EarlyHeaderMutationExtensions: []*corev3.TypedExtensionConfig{early},
	}, nil
}

// DownstreamTLS serves the listener's certificate; ALPN offers h2 and http/1.1
// (kubectl's SPDY and WebSocket upgrades negotiate http/1.1).
func DownstreamTLS(certFile, keyFile string) *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		TlsCertificates: []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: certFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: keyFile}},
		}},
		AlpnProtocols: []string{"h2", "http/1.1"},
	}}
}

// Listener is the TLS listener kubectl talks to.
func Listener(o Options) (*listenerv3.Listener, error) {
	hcm, err := HTTPConnectionManager(o)
	if err != nil {
		return nil, err
	}
	hcmAny, err := typed(hcm)
	if err != nil {
		return nil, err
	}
	tlsAny, err := typed(DownstreamTLS(o.TLSCertFile, o.TLSKeyFile))
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    ListenerName,
		Address: o.Listen.Envoy(),
		// What Envoy buffers per connection before it stops reading (flow control).
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(o.ConnectionBufferBytes),
		FilterChains: []*listenerv3.FilterChain{{
			// "the amount of time to allow incoming connections to complete any
			// transport socket negotiations. If this expires before the transport
			// reports connection establishment, the connection is summarily closed"
			// (listener_components.proto): the TLS handshake timeout.
			TransportSocketConnectTimeout: durationpb.New(o.TLSHandshakeTimeout),
			Filters: []*listenerv3.Filter{{
				Name:       NetworkFilterHCM,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcmAny},
			}},
			TransportSocket: &corev3.TransportSocket{
				Name:       TransportSocketTLS,
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsAny},
			},
		}},
	}, nil
}

func loadAssignment(cluster string, a Addr) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a.Envoy()}},
			}},
		}},
	}
}

// protocolOptions selects the cluster's upstream protocol; idle, when not 0, is the
// upstream connections' idle_timeout (common_http_protocol_options).
// filters, when set, are the cluster's upstream HTTP filters.
func protocolOptions(http2 bool, idle time.Duration, filters []*hcmv3.HttpFilter) (map[string]*anypb.Any, error) {
	explicit := &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
		ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
			HttpProtocolOptions: &corev3.Http1ProtocolOptions{},
		},
	}
	if http2 {
		explicit.ProtocolConfig = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		}
	}
	po := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit},
		HttpFilters:             filters,
	}
	if idle != 0 {
		po.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(idle)}
	}
	a, err := typed(po)
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{UpstreamHTTPOptionsKey: a}, nil
}

func thresholds(n uint32) *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     wrapperspb.UInt32(n),
		MaxPendingRequests: wrapperspb.UInt32(n),
		MaxRequests:        wrapperspb.UInt32(n),
	}}}
}

// GRPCCluster is an HTTP/2 cluster for one of kubegate's gRPC services, health
// checked through grpc.health.v1 (every kubegate service serves it).
//
// The circuit-breaker limits are raised from Envoy's default of 1024 concurrent
// requests: an ext_proc stream can stay open for the life of the downstream request
// (Envoy before envoy#41425 closes it only when the filter is destroyed), so a few
// thousand open watches would otherwise make new requests fail (closed, but failing).
//
// No upstream idle_timeout is set: kubegate's gRPC servers close no idle
// connection (grpc-go's keepalive.ServerParameters.MaxConnectionIdle defaults to
// infinity, and kubegate does not set it), so Envoy's pooled connection races no
// server-side close.
func GRPCCluster(name string, a Addr, connectTimeout time.Duration, maxRequests uint32) (*clusterv3.Cluster, error) {
	opts, err := protocolOptions(true, 0, nil)
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: a.discoveryType()},
		ConnectTimeout:                durationpb.New(connectTimeout),
		LoadAssignment:                loadAssignment(name, a),
		TypedExtensionProtocolOptions: opts,
		CircuitBreakers:               thresholds(maxRequests),
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(time.Second),
			Interval:           durationpb.New(5 * time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(2),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker:      &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{}},
		}},
	}, nil
}

// UpstreamTLS verifies the API server against caFile and its name: chain only is not
// enough when the cluster CA also signs client or kubelet certificates. An IP host
// is matched as an IP SAN and sends no SNI (RFC 6066 §3).
func UpstreamTLS(a Addr, caFile string) *tlsv3.UpstreamTlsContext {
	san := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: a.Host}},
	}
	sni := a.Host
	if a.IsIP() {
		san.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
		sni = ""
	}
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			// Offer only http/1.1: with h2 negotiated, SPDY and WebSocket upgrades fail.
			AlpnProtocols: []string{"http/1.1"},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: caFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
			}},
		},
	}
}

// APIServer is one agent's upstream cluster, named APIServerCluster(agent.ID): TLS
// verified against that agent's CA and server name, and HTTP/1.1 explicitly,
// because an HTTP/2 upstream breaks SPDY and WebSocket upgrades (kubectl exec,
// attach, port-forward, cp). Idle pooled connections are closed after
// UpstreamIdleTimeout, before kube-apiserver closes them itself. Its upstream
// filters inject the agent's own token (UpstreamFilters, secret
// TokenSecretFor(agent.ID)) from sds.
func APIServer(agent Agent, sds *corev3.ConfigSource, connectTimeout time.Duration, maxRequests uint32) (*clusterv3.Cluster, error) {
	a, err := apiServerAddr(agent.APIServer)
	if err != nil {
		return nil, err
	}
	filters, err := UpstreamFilters(TokenSecretFor(agent.ID), sds)
	if err != nil {
		return nil, err
	}
	opts, err := protocolOptions(false, UpstreamIdleTimeout, filters)
	if err != nil {
		return nil, err
	}
	tlsAny, err := typed(UpstreamTLS(a, agent.APIServerCA))
	if err != nil {
		return nil, err
	}
	name := APIServerCluster(agent.ID)
	return &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: a.discoveryType()},
		ConnectTimeout:                durationpb.New(connectTimeout),
		LoadAssignment:                loadAssignment(name, a),
		TypedExtensionProtocolOptions: opts,
		CircuitBreakers:               thresholds(maxRequests),
		TransportSocket: &corev3.TransportSocket{
			Name:       TransportSocketTLS,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsAny},
		},
	}, nil
}
