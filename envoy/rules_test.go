package envoy

import (
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// edit unpacks the message in a, lets fn change it and packs it back.
func edit[T proto.Message](t *testing.T, a *anypb.Any, fn func(T)) {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	typedM, ok := m.(T)
	if !ok {
		t.Fatalf("typed_config is %T", m)
	}
	fn(typedM)
	if err := a.MarshalFrom(typedM); err != nil {
		t.Fatal(err)
	}
}

func chain(b *bootstrapv3.Bootstrap) *listenerv3.FilterChain {
	return b.StaticResources.Listeners[0].FilterChains[0]
}

func withHCM(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*hcmv3.HttpConnectionManager)) {
	t.Helper()
	edit(t, chain(b).Filters[0].GetTypedConfig(), fn)
}

// withFilter edits the typed_config of HTTP filter i of the security chain (0
// ext_authz, 1 ext_proc, 2 credential_injector, 3 router in a rendered config),
// counted after the local_ratelimit filter in front of it.
func withFilter[T proto.Message](t *testing.T, b *bootstrapv3.Bootstrap, i int, fn func(T)) {
	t.Helper()
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
		edit(t, h.HttpFilters[securityChainStart(h)+i].GetTypedConfig(), fn)
	})
}

// securityChainStart is the index of the first filter after the rate limit.
func securityChainStart(h *hcmv3.HttpConnectionManager) int {
	i := 0
	if i < len(h.HttpFilters) && typeName(h.HttpFilters[i].GetTypedConfig()) == headerMutationType {
		i++
	}
	for i < len(h.HttpFilters) && typeName(h.HttpFilters[i].GetTypedConfig()) == localRateLimitType {
		i++
	}
	return i
}

func withRoute(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*routev3.Route)) {
	t.Helper()
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { fn(h.GetRouteConfig().VirtualHosts[0].Routes[0]) })
}

func cluster(t *testing.T, b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range b.StaticResources.Clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// withAPIServerTLS edits the UpstreamTlsContext of the API server cluster.
func withAPIServerTLS(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*tlsv3.UpstreamTlsContext)) {
	t.Helper()
	edit(t, cluster(t, b, testAPICluster).TransportSocket.GetTypedConfig(), fn)
}

// withAPIServerOptions edits the API server cluster's upstream HTTP protocol options.
func withAPIServerOptions(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*upstreamhttpv3.HttpProtocolOptions)) {
	t.Helper()
	edit(t, cluster(t, b, testAPICluster).TypedExtensionProtocolOptions[UpstreamHTTPOptionsKey], fn)
}

// withInjector edits the credential_injector of the API server cluster's upstream
// filters.
func withInjector(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*credinjectorv3.CredentialInjector)) {
	t.Helper()
	withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { edit(t, o.HttpFilters[0].GetTypedConfig(), fn) })
}

func removeCluster(t *testing.T, b *bootstrapv3.Bootstrap, name string) {
	t.Helper()
	cs := b.StaticResources.Clusters
	for i, c := range cs {
		if c.Name == name {
			b.StaticResources.Clusters = append(cs[:i:i], cs[i+1:]...)
			return
		}
	}
	t.Fatalf("no cluster %q", name)
}

// headerList is a ListStringMatcher of one pattern.
func headerList(m *matcherv3.StringMatcher) *matcherv3.ListStringMatcher {
	return &matcherv3.ListStringMatcher{Patterns: []*matcherv3.StringMatcher{m}}
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func prefix(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// ruleCases break exactly one rule each, starting from a rendered configuration.
func ruleCases(t *testing.T) []struct {
	name   string
	rule   string
	mutate func(*bootstrapv3.Bootstrap)
} {
	return append([]struct {
		name   string
		rule   string
		mutate func(*bootstrapv3.Bootstrap)
	}{
		{"tcp_proxy next to the connection manager", RuleListenerHCM, func(b *bootstrapv3.Bootstrap) {
			chain(b).Filters = append(chain(b).Filters, &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "raw",
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: testAPICluster}})}})
		}},
		{"plain-text listener", RuleDownstreamTLS, func(b *bootstrapv3.Bootstrap) { chain(b).TransportSocket = nil }},
		{"clusters from CDS", RuleStaticConfig, func(b *bootstrapv3.Bootstrap) {
			b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{CdsConfig: SDSConfigSource(XDSCluster)}
		}},
		{"routes from RDS", RuleStaticConfig, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: RouteConfigName, ConfigSource: SDSConfigSource(XDSCluster)}}
			})
		}},
		{"ext_proc before ext_authz", RuleFilterOrder, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				i := securityChainStart(h)
				h.HttpFilters[i], h.HttpFilters[i+1] = h.HttpFilters[i+1], h.HttpFilters[i]
			})
		}},
		{"upgrade-specific filter chain", RuleFilterOrder, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.UpgradeConfigs[1].Filters = []*hcmv3.HttpFilter{h.HttpFilters[len(h.HttpFilters)-1]}
			})
		}},
		{"optional ext_authz", RuleFilterEnabled, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters[securityChainStart(h)].IsOptional = true })
		}},
		{"disabled ext_proc", RuleFilterEnabled, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters[securityChainStart(h)+1].Disabled = true })
		}},
		{"ext_authz disabled on the route", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.TypedPerFilterConfig = map[string]*anypb.Any{FilterExtAuthz: mustAny(t, &extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})}
			})
		}},
		{"route adds impersonate-user", RuleRouteHeaders, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "Impersonate-User", Value: "system:admin"}}}
			})
		}},
		{"ext_authz failure_mode_allow", RuleExtAuthzFailClosed, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.FailureModeAllow = true })
		}},
		{"ext_authz shadow mode", RuleExtAuthzFailClosed, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.ShadowMode = true })
		}},
		{"ext_authz status_on_error unset", RuleExtAuthzStatusOnError, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.StatusOnError = nil })
		}},
		{"ext_authz transport AUTO", RuleExtAuthzGRPC, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.TransportApiVersion = corev3.ApiVersion_AUTO })
		}},
		{"ext_authz buffers the body", RuleExtAuthzNoBody, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.WithRequestBody = &extauthzv3.BufferSettings{MaxRequestBytes: 8192} })
		}},
		{"ext_authz joins duplicate headers", RuleExtAuthzRawHeaders, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.EncodeRawHeaders = false })
		}},
		{"ext_authz drops metadata", RuleExtAuthzMetadata, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.EnableDynamicMetadataIngestion = wrapperspb.Bool(false) })
		}},
		{"ext_authz sends only authorization", RuleExtAuthzAllHeaders, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.AllowedHeaders = headerList(exact("authorization")) })
		}},
		{"ext_authz hides impersonate-*", RuleExtAuthzAllHeaders, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.DisallowedHeaders = headerList(prefix("impersonate-")) })
		}},
		{"ext_authz may not remove cookie", RuleExtAuthzRemoval, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) {
				a.DecoderHeaderMutationRules.DisallowExpression = &matcherv3.RegexMatcher{Regex: "cookie"}
			})
		}},
		{"ext_authz allow_expression misses x-csrf-token", RuleExtAuthzRemoval, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) {
				a.DecoderHeaderMutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "^(authorization|cookie|gitlab-agent-id|x-kubegate-upstream)$"}
			})
		}},
		{"ext_authz may not set impersonate-user", RuleExtAuthzRemoval, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) {
				a.DecoderHeaderMutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "^(authorization|cookie|gitlab-agent-id|x-csrf-token|x-kubegate-upstream)$"}
			})
		}},
		{"ext_authz silently keeps every credential", RuleExtAuthzRemoval, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) {
				a.DecoderHeaderMutationRules = &mutationrulesv3.HeaderMutationRules{DisallowAll: wrapperspb.Bool(true), AllowExpression: &matcherv3.RegexMatcher{Regex: "impersonate-user|x-kubegate-upstream"}}
			})
		}},
		{"ext_proc failure_mode_allow", RuleExtProcFailClosed, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.FailureModeAllow = true })
		}},
		{"ext_proc observability mode", RuleExtProcFailClosed, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.ObservabilityMode = true })
		}},
		{"ext_proc sends response headers", RuleExtProcProcessingMode, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ProcessingMode.ResponseHeaderMode = extprocv3.ProcessingMode_SEND
			})
		}},
		{"ext_proc skips request headers", RuleExtProcProcessingMode, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ProcessingMode.RequestHeaderMode = extprocv3.ProcessingMode_SKIP
			})
		}},
		{"ext_proc buffers the request body", RuleExtProcBodyMode, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_BUFFERED
			})
		}},
		{"ext_proc streams the response body", RuleExtProcBodyMode, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ProcessingMode.ResponseBodyMode = extprocv3.ProcessingMode_STREAMED
			})
		}},
		{"ext_proc without the ext_authz namespace", RuleExtProcMetadata, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.MetadataOptions = nil })
		}},
		{"ext_proc forward_rules hide impersonate-*", RuleExtProcAllHeaders, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ForwardRules = &extprocv3.HeaderForwardingRules{DisallowedHeaders: headerList(prefix("impersonate-"))}
			})
		}},
		{"ext_proc forwards only impersonate-user", RuleExtProcAllHeaders, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.ForwardRules = &extprocv3.HeaderForwardingRules{AllowedHeaders: headerList(exact("impersonate-user"))}
			})
		}},
		{"ext_proc may change any header", RuleExtProcMutationRules, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.MutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "impersonate-.+|authorization|host"}
			})
		}},
		{"ext_proc without mutation rules", RuleExtProcMutationRules, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.MutationRules = nil })
		}},
		{"ext_proc ignores refused mutations", RuleExtProcMutationRules, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.MutationRules.DisallowIsError = nil })
		}},
		{"ext_proc cannot set impersonate-group", RuleExtProcMutationRules, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.MutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "impersonate-user"}
			})
		}},
		{"ext_proc message_timeout unset", RuleExtProcMessageTimeout, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.MessageTimeout = nil })
		}},
		{"ext_proc through google_grpc", RuleExtProcGRPC, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.GrpcService = &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{GoogleGrpc: &corev3.GrpcService_GoogleGrpc{TargetUri: "extproc:9002", StatPrefix: "extproc"}}}
			})
			// Unused, the cluster would be one contract.HeaderUpstream can name.
			removeCluster(t, b, ExtProcCluster)
		}},
		{"injector keeps the client's Authorization", RuleCredentialOverwrite, func(b *bootstrapv3.Bootstrap) {
			withInjector(t, b, func(c *credinjectorv3.CredentialInjector) { c.Overwrite = false })
		}},
		{"injector lets requests through without a token", RuleCredentialOverwrite, func(b *bootstrapv3.Bootstrap) {
			withInjector(t, b, func(c *credinjectorv3.CredentialInjector) { c.AllowRequestWithoutCredential = true })
		}},
		{"injector without Bearer prefix", RuleCredentialOverwrite, func(b *bootstrapv3.Bootstrap) {
			withInjector(t, b, func(c *credinjectorv3.CredentialInjector) {
				edit(t, c.Credential.GetTypedConfig(), func(g *genericv3.Generic) { g.HeaderValuePrefix = "" })
			})
		}},
		{"token from a static secret", RuleCredentialRotation, func(b *bootstrapv3.Bootstrap) {
			withInjector(t, b, func(c *credinjectorv3.CredentialInjector) {
				edit(t, c.Credential.GetTypedConfig(), func(g *genericv3.Generic) { g.Credential.SdsConfig = nil })
			})
			removeCluster(t, b, XDSCluster) // unused, the header could name it
		}},
		{"token file without watched_directory", RuleCredentialRotation, func(b *bootstrapv3.Bootstrap) {
			withInjector(t, b, func(c *credinjectorv3.CredentialInjector) {
				edit(t, c.Credential.GetTypedConfig(), func(g *genericv3.Generic) {
					g.Credential.SdsConfig = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{
						PathConfigSource: &corev3.PathConfigSource{Path: "/etc/envoy/token-sds.yaml"}}}
				})
			})
			removeCluster(t, b, XDSCluster) // unused, the header could name it
		}},
		{"spdy/3.1 not enabled", RuleUpgradeTypes, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.UpgradeConfigs = h.UpgradeConfigs[:1] })
		}},
		{"route disables websocket", RuleUpgradeTypes, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.GetRoute().UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(false)}}
			})
		}},
		{"prefix not rewritten", RuleRoutePrefix, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) { r.GetRoute().PrefixRewrite = "" })
		}},
		{"catch-all route", RuleRoutePrefix, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) { r.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"} })
		}},
		{"the explain endpoint redirected", RuleExplainRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				vh := h.GetRouteConfig().VirtualHosts[0]
				vh.Routes = append([]*routev3.Route{{Name: "elsewhere", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/kubegate/ex"}},
					Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "attacker.example"}}}}, vh.Routes...)
			})
		}},
		{"the explain endpoint taken by a regex route", RuleExplainRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				vh := h.GetRouteConfig().VirtualHosts[0]
				vh.Routes = append([]*routev3.Route{{Name: "elsewhere", Match: &routev3.RouteMatch{
					PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/kube[a-z]+/e.*"}}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}}}}, vh.Routes...)
			})
		}},
		{"no header_mutation in front", RuleUpstreamHeaderStrip, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = h.HttpFilters[1:] })
		}},
		{"no early header mutation", RuleUpstreamHeaderStrip, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.EarlyHeaderMutationExtensions = nil })
		}},
		{"early header mutation sets the header", RuleUpstreamHeaderStrip, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				edit(t, h.EarlyHeaderMutationExtensions[0].GetTypedConfig(), func(m *earlymutationv3.HeaderMutation) {
					m.Mutations = append(m.Mutations, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Append{
						Append: &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-kubegate-upstream", Value: testAPICluster}}}})
				})
			})
		}},
		{"header_mutation removes another header", RuleUpstreamHeaderStrip, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				edit(t, h.HttpFilters[0].GetTypedConfig(), func(m *headermutationv3.HeaderMutation) {
					m.Mutations.RequestMutations[0].Action = &mutationrulesv3.HeaderMutation_Remove{Remove: "x-kubegate-upstreams"}
				})
			})
		}},
		{"header_mutation sets the header", RuleUpstreamHeaderStrip, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				edit(t, h.HttpFilters[0].GetTypedConfig(), func(m *headermutationv3.HeaderMutation) {
					m.Mutations.RequestMutations = append(m.Mutations.RequestMutations, &mutationrulesv3.HeaderMutation{Action: &mutationrulesv3.HeaderMutation_Append{
						Append: &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-kubegate-upstream", Value: testAPICluster}}}})
				})
			})
		}},
		{"API route to a static cluster", RuleRouteClusterHeader, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: testAPICluster}
			})
		}},
		{"API route reads a client header", RuleRouteClusterHeader, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.GetRoute().ClusterSpecifier = &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-cluster"}
			})
		}},
		{"top-level API route to a static cluster", RuleRouteClusterHeader, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].Routes[1].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: testAPICluster}
			})
		}},
		{"unknown cluster answered 404", RuleClusterNotFound, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) { r.GetRoute().ClusterNotFoundResponseCode = routev3.RouteAction_NOT_FOUND })
		}},
		{"ext_authz keeps the route cache", RuleExtAuthzRouting, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) { a.ClearRouteCache = false })
		}},
		{"ext_authz may not set the upstream header", RuleExtAuthzRouting, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 0, func(a *extauthzv3.ExtAuthz) {
				a.DecoderHeaderMutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "^(authorization|cookie|gitlab-agent-id|x-csrf-token|impersonate-user)$"}
			})
		}},
		{"ext_proc may set the upstream header", RuleExtProcNoRouting, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) {
				e.MutationRules.AllowExpression = &matcherv3.RegexMatcher{Regex: "impersonate-.+|x-kubegate-upstream"}
			})
		}},
		{"ext_proc may clear the route cache", RuleExtProcNoRouting, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 1, func(e *extprocv3.ExternalProcessor) { e.RouteCacheAction = extprocv3.ExternalProcessor_DEFAULT })
		}},
		{"API server cluster without upstream filters", RuleUpstreamCredential, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { o.HttpFilters = nil })
			removeCluster(t, b, XDSCluster) // unused, the header could name it
		}},
		{"upstream_codec not last", RuleUpstreamCredential, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.HttpFilters[0], o.HttpFilters[1] = o.HttpFilters[1], o.HttpFilters[0]
			})
		}},
		{"two agents share a secret", RuleUpstreamCredential, func(b *bootstrapv3.Bootstrap) {
			other := proto.Clone(cluster(t, b, testAPICluster)).(*clusterv3.Cluster)
			other.Name = APIServerCluster(testAgentID + 1)
			other.LoadAssignment.ClusterName = other.Name
			b.StaticResources.Clusters = append(b.StaticResources.Clusters, other)
		}},
		{"the agent list endpoint redirected", RuleAgentsRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				vh := h.GetRouteConfig().VirtualHosts[0]
				vh.Routes = append([]*routev3.Route{{Name: "elsewhere", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/kubegate/agents"}},
					Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "attacker.example"}}}}, vh.Routes...)
			})
		}},
		{"a top-level path that is not the API's", RuleRoutePrefix, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].Routes[1].Match.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/metrics"}
			})
		}},
		{"a top-level API path rewritten", RuleRoutePrefix, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].Routes[1].GetRoute().PrefixRewrite = "/apis"
			})
		}},
		{"header_mutation disabled on a top-level route", RulePerRouteOverride, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].Routes[2].TypedPerFilterConfig = map[string]*anypb.Any{
					FilterHeaderMutation: mustAny(t, &routev3.FilterConfig{Disabled: true})}
			})
		}},
		{"ext_authz disabled on a top-level API route", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				for _, r := range h.GetRouteConfig().VirtualHosts[0].Routes {
					if r.Name == APIRootRoutePrefix+"/version" {
						r.TypedPerFilterConfig = map[string]*anypb.Any{FilterExtAuthz: mustAny(t, &extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})}
					}
				}
			})
		}},
		{"ext_proc disabled on the agent list route", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				for _, r := range h.GetRouteConfig().VirtualHosts[0].Routes {
					if r.Name == AgentsRouteName {
						r.TypedPerFilterConfig = map[string]*anypb.Any{FilterExtProc: mustAny(t, &routev3.FilterConfig{Disabled: true})}
					}
				}
			})
		}},
		{"credential_injector back at the listener", RuleFilterOrder, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				ci, err := CredentialInjector(TokenSecretFor(testAgentID), SDSConfigSource(XDSCluster))
				if err != nil {
					t.Fatal(err)
				}
				f, err := httpFilter(FilterCredentialInjector, ci)
				if err != nil {
					t.Fatal(err)
				}
				n := len(h.HttpFilters)
				h.HttpFilters = append(h.HttpFilters[:n-1:n-1], f, h.HttpFilters[n-1])
			})
		}},
		{"default route timeout", RuleRouteTimeout, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) { r.GetRoute().Timeout = nil })
		}},
		{"five-minute idle timeout", RuleStreamTimeouts, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.StreamIdleTimeout = durationpb.New(MinStreamIdleTimeout / 12) })
		}},
		{"request timeout", RuleStreamTimeouts, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.RequestTimeout = durationpb.New(MinStreamIdleTimeout) })
		}},
		{"header count unbounded", RuleHeaderLimits, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.CommonHttpProtocolOptions.MaxHeadersCount = nil })
		}},
		{"header size unbounded", RuleHeaderLimits, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.MaxRequestHeadersKb = nil })
		}},
		{"underscores allowed", RuleUnderscoreHeaders, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.CommonHttpProtocolOptions.HeadersWithUnderscoresAction = corev3.HttpProtocolOptions_ALLOW
			})
		}},
		{"path not normalised", RulePathNormalization, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.NormalizePath = nil })
		}},
		{"escaped slashes kept", RulePathNormalization, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
			})
		}},
		{"HTTP/2 to the API server", RuleUpstreamHTTP11, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.GetExplicitHttpConfig().ProtocolConfig = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				}
			})
		}},
		{"API server idle timeout unset", RuleUpstreamIdleTimeout, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { o.CommonHttpProtocolOptions = nil })
		}},
		{"API server idle timeout disabled", RuleUpstreamIdleTimeout, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.CommonHttpProtocolOptions.IdleTimeout = durationpb.New(0)
			})
		}},
		{"API server idle timeout equal to the server's", RuleUpstreamIdleTimeout, func(b *bootstrapv3.Bootstrap) {
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.CommonHttpProtocolOptions.IdleTimeout = durationpb.New(APIServerServerIdleTimeout)
			})
		}},
		{"API server idle timeout of Envoy's default in the deprecated field", RuleUpstreamIdleTimeout, func(b *bootstrapv3.Bootstrap) {
			c := cluster(t, b, testAPICluster)
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { o.CommonHttpProtocolOptions = nil })
			//lint:ignore SA1019 the deprecated field is what this case tests
			c.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Hour)}
		}},
		{"plain-text API server", RuleUpstreamTLS, func(b *bootstrapv3.Bootstrap) {
			cluster(t, b, testAPICluster).TransportSocket = nil
		}},
		{"API server name not checked", RuleUpstreamTLS, func(b *bootstrapv3.Bootstrap) {
			c := cluster(t, b, testAPICluster)
			c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, func() proto.Message {
				u := UpstreamTLS(mustAddr(t, "kubernetes.default.svc:443"), "/ca.crt")
				u.CommonTlsContext.GetValidationContext().MatchTypedSubjectAltNames = nil
				return u
			}())}
		}},
		{"client certificate files to the API server", RuleUpstreamNoClientCert, func(b *bootstrapv3.Bootstrap) {
			withAPIServerTLS(t, b, func(u *tlsv3.UpstreamTlsContext) {
				u.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{
					CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/kubernetes/pki/front-proxy-client.crt"}},
					PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/kubernetes/pki/front-proxy-client.key"}},
				}}
			})
		}},
		{"client certificate from SDS to the API server", RuleUpstreamNoClientCert, func(b *bootstrapv3.Bootstrap) {
			withAPIServerTLS(t, b, func(u *tlsv3.UpstreamTlsContext) {
				u.CommonTlsContext.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: "front-proxy-client", SdsConfig: SDSConfigSource(XDSCluster)}}
			})
		}},
		{"client certificate provider to the API server", RuleUpstreamNoClientCert, func(b *bootstrapv3.Bootstrap) {
			withAPIServerTLS(t, b, func(u *tlsv3.UpstreamTlsContext) {
				u.CommonTlsContext.TlsCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: "front-proxy"}
			})
		}},
		{"HTTP/1.1 to kubegate authz", RuleGRPCClusterHTTP2, func(b *bootstrapv3.Bootstrap) {
			cluster(t, b, AuthzCluster).TypedExtensionProtocolOptions = nil
		}},
		{"missing authz cluster", RuleClusterRefs, func(b *bootstrapv3.Bootstrap) {
			var kept []*clusterv3.Cluster
			for _, c := range b.StaticResources.Clusters {
				if c.Name != AuthzCluster {
					kept = append(kept, c)
				}
			}
			b.StaticResources.Clusters = kept
		}},
		{"cluster defined twice", RuleClusterRefs, func(b *bootstrapv3.Bootstrap) {
			b.StaticResources.Clusters = append(b.StaticResources.Clusters, proto.Clone(cluster(t, b, XDSCluster)).(*clusterv3.Cluster))
		}},
		{"admin on every interface", RuleAdminLoopback, func(b *bootstrapv3.Bootstrap) {
			b.Admin.Address = mustAddr(t, "0.0.0.0:9901").Envoy()
		}},
	}, hardeningCases(t)...)
}

// TestEachRuleAlone starts from a rendered configuration, breaks one rule, and
// expects findings of that rule only — through the YAML, as a user's file would be.
func TestEachRuleAlone(t *testing.T) { breakEachRule(t, testOptions(t), ruleCases(t)) }

// breakEachRule renders opts, applies each case's mutation, and expects findings of
// the case's rule only, each with a path and a message.
func breakEachRule(t *testing.T, opts Options, cases []struct {
	name   string
	rule   string
	mutate func(*bootstrapv3.Bootstrap)
}) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.rule+"/"+tt.name, func(t *testing.T) {
			b, err := Bootstrap(opts)
			if err != nil {
				t.Fatal(err)
			}
			tt.mutate(b)
			y, err := MarshalYAML(b)
			if err != nil {
				t.Fatal(err)
			}
			fs := Validate(y)
			if len(fs) == 0 {
				t.Fatalf("no finding; want rule %s", tt.rule)
			}
			for _, f := range fs {
				if f.Rule != tt.rule {
					t.Errorf("finding of another rule: %s", f)
				}
				if !strings.HasPrefix(f.Path, "$") || f.Message == "" {
					t.Errorf("finding without path or message: %+v", f)
				}
			}
		})
	}
}

// TestUpstreamIdleTimeoutBounds checks the edges of upstream-idle-timeout: any
// timeout below kube-apiserver's passes, and the finding names the field.
func TestUpstreamIdleTimeoutBounds(t *testing.T) {
	for _, tt := range []struct {
		name  string
		idle  *durationpb.Duration
		clean bool
	}{
		{"rendered", durationpb.New(UpstreamIdleTimeout), true},
		{"one second", durationpb.New(time.Second), true},
		{"just below the server's", durationpb.New(APIServerServerIdleTimeout - time.Millisecond), true},
		{"the server's", durationpb.New(APIServerServerIdleTimeout), false},
		{"Envoy's default", durationpb.New(time.Hour), false},
		{"disabled", durationpb.New(0), false},
		{"unset", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Bootstrap(testOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			withAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { o.CommonHttpProtocolOptions.IdleTimeout = tt.idle })
			fs := CheckBootstrap(b)
			if tt.clean {
				if len(fs) > 0 {
					t.Fatalf("want no finding, got:\n%s", FormatFindings(fs))
				}
				return
			}
			if len(fs) != 1 || fs[0].Rule != RuleUpstreamIdleTimeout || !strings.HasSuffix(fs[0].Path, ".common_http_protocol_options.idle_timeout") {
				t.Fatalf("want one %s finding at ...common_http_protocol_options.idle_timeout, got:\n%s", RuleUpstreamIdleTimeout, FormatFindings(fs))
			}
		})
	}
}

// TestEveryRuleHasACase keeps ruleCases complete as rules are added.
func TestEveryRuleHasACase(t *testing.T) {
	covered := map[string]bool{RuleSyntax: true, RuleSchema: true, RuleProtoValidate: true} // decode_test.go
	covered[RuleMeshPatches] = true                                                         // mesh_test.go, TestValidateEnvoyFilter
	for _, c := range append(ruleCases(t), browserRuleCases(t)...) {
		covered[c.rule] = true
	}
	for _, r := range RuleDocs {
		if !covered[r.ID] {
			t.Errorf("rule %s has no case in ruleCases", r.ID)
		}
	}
}
