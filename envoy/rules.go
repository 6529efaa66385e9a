package envoy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"kubegate.dev/kubegate/contract"
)

// kubegate's rules, each an ID a finding carries. RuleDocs says what each checks.
const (
	RuleListenerHCM           = "listener-hcm"
	RuleDownstreamTLS         = "downstream-tls"
	RuleStaticConfig          = "static-config"
	RuleFilterOrder           = "filter-order"
	RuleFilterEnabled         = "filter-enabled"
	RulePerRouteOverride      = "per-route-override"
	RuleRouteHeaders          = "route-headers"
	RuleExtAuthzFailClosed    = "ext-authz-fail-closed"
	RuleExtAuthzStatusOnError = "ext-authz-status-on-error"
	RuleExtAuthzGRPC          = "ext-authz-grpc"
	RuleExtAuthzNoBody        = "ext-authz-no-body"
	RuleExtAuthzRawHeaders    = "ext-authz-raw-headers"
	RuleExtAuthzMetadata      = "ext-authz-metadata"
	RuleExtAuthzAllHeaders    = "ext-authz-all-headers"
	RuleExtAuthzRemoval       = "ext-authz-credential-removal"
	RuleExtProcFailClosed     = "ext-proc-fail-closed"
	RuleExtProcProcessingMode = "ext-proc-processing-mode"
	RuleExtProcBodyMode       = "ext-proc-body-mode"
	RuleExtProcMetadata       = "ext-proc-metadata-forwarding"
	RuleExtProcAllHeaders     = "ext-proc-all-headers"
	RuleExtProcMutationRules  = "ext-proc-mutation-rules"
	RuleExtProcMessageTimeout = "ext-proc-message-timeout"
	RuleExtProcGRPC           = "ext-proc-grpc"
	RuleCredentialOverwrite   = "credential-overwrite"
	RuleCredentialRotation    = "credential-rotation"
	RuleUpgradeTypes          = "upgrade-types"
	RuleRoutePrefix           = "route-prefix"
	RuleRouteTimeout          = "route-timeout"
	RuleExplainRoute          = "explain-route"
	RuleStreamTimeouts        = "stream-timeouts"
	RuleHeaderLimits          = "header-limits"
	RuleUnderscoreHeaders     = "underscore-headers"
	RulePathNormalization     = "path-normalization"
	RuleUpstreamHTTP11        = "upstream-http11"
	RuleUpstreamTLS           = "upstream-tls"
	RuleUpstreamNoClientCert  = "upstream-no-client-cert"
	RuleUpstreamIdleTimeout   = "upstream-idle-timeout"
	RuleGRPCClusterHTTP2      = "grpc-cluster-http2"
	RuleClusterRefs           = "cluster-refs"
	RuleAdminLoopback         = "admin-loopback"
	// Routing to the agent's cluster (rules_routing.go).
	RuleUpstreamHeaderStrip = "upstream-header-strip"
	RuleRouteClusterHeader  = "route-cluster-header"
	RuleClusterNotFound     = "cluster-not-found-503"
	RuleExtAuthzRouting     = "ext-authz-routing"
	RuleExtProcNoRouting    = "ext-proc-no-routing"
	RuleUpstreamCredential  = "upstream-credential"
	RuleAgentsRoute         = "agents-route"
)

// RuleDoc describes one rule for `kubegate envoy validate --list-rules` and the README.
type RuleDoc struct{ ID, Checks string }

// RuleDocs lists every rule Validate applies, in the order of envoy.md.
var RuleDocs = []RuleDoc{
	{RuleSyntax, "the file is YAML or JSON (duplicate keys refused)"},
	{RuleSchema, "every field exists (with a did-you-mean), has the right type, and every typed_config type is known"},
	{RuleProtoValidate, "Envoy's protoc-gen-validate constraints, inside every typed_config too"},
	{RuleListenerHCM, "every listener filter chain is exactly one http_connection_manager (a tcp_proxy would bypass every check)"},
	{RuleDownstreamTLS, "every listener filter chain terminates TLS with a certificate"},
	{RuleStaticConfig, "listeners, clusters, routes and the security filters are static (no LDS/CDS/RDS/ECDS the validator cannot see)"},
	{RuleFilterOrder, "HTTP filters are exactly ext_authz, ext_proc, router (after the header_mutation of upstream-header-strip and the local_ratelimit of client-rate-limit; the agent token is injected per cluster, upstream-credential); no upgrade-specific filter chain"},
	{RuleFilterEnabled, "no HTTP filter is disabled or optional"},
	{RulePerRouteOverride, "no typed_per_filter_config for header_mutation, local_ratelimit, ext_authz, ext_proc or credential_injector (could disable them per route)"},
	{RuleRouteHeaders, "routes do not add or remove Authorization or Impersonate-* headers"},
	{RuleExtAuthzFailClosed, "ext_authz: failure_mode_allow false, shadow_mode false, no filter_enabled fraction or metadata"},
	{RuleExtAuthzStatusOnError, "ext_authz: status_on_error 503"},
	{RuleExtAuthzGRPC, "ext_authz: gRPC through an Envoy cluster, transport_api_version V3"},
	{RuleExtAuthzNoBody, "ext_authz: with_request_body unset (buffering hangs spdy/3.1 exec)"},
	{RuleExtAuthzRawHeaders, "ext_authz: encode_raw_headers true (duplicate headers reach the service as separate lines)"},
	{RuleExtAuthzMetadata, "ext_authz: dynamic metadata ingestion not disabled (the decision travels to ext_proc in it)"},
	{RuleExtAuthzAllHeaders, "ext_authz: allowed_headers and disallowed_headers unset, so kubegate authz sees every request header (Impersonate-*, X-Remote-*, the credentials) and can refuse them"},
	{RuleExtAuthzRemoval, "ext_authz: decoder_header_mutation_rules, when set, allow removing authorization, cookie, gitlab-agent-id and x-csrf-token, and setting impersonate-user"},
	{RuleExtProcFailClosed, "ext_proc: failure_mode_allow, observability_mode and disable_immediate_response all false"},
	{RuleExtProcProcessingMode, "ext_proc: request headers SEND, response headers SKIP, trailers SKIP, allow_mode_override false"},
	{RuleExtProcBodyMode, "ext_proc: request and response body modes NONE (body modes break upgrades)"},
	{RuleExtProcMetadata, "ext_proc: metadata_options.forwarding_namespaces.untyped has envoy.filters.http.ext_authz"},
	{RuleExtProcAllHeaders, "ext_proc: forward_rules unset, so kubegate extproc sees (and strips) every client Impersonate-* header"},
	{RuleExtProcMutationRules, "ext_proc: mutation rules allow impersonate-* and refuse Authorization, routing and other headers, with disallow_is_error"},
	{RuleExtProcMessageTimeout, "ext_proc: message_timeout set explicitly"},
	{RuleExtProcGRPC, "ext_proc: gRPC through an Envoy cluster"},
	{RuleCredentialOverwrite, "credential_injector: overwrite true, allow_request_without_credential false, generic credential into Authorization with prefix \"Bearer \""},
	{RuleCredentialRotation, "credential_injector: the token comes from SDS (gRPC, or a file source with watched_directory), so it rotates without a restart"},
	{RuleUpgradeTypes, "upgrade_configs enable websocket and spdy/3.1, and no route disables them"},
	{RuleRoutePrefix, "every forwarding route but the browser route (to " + contract.BrowserCluster + ", rule browser-route) matches prefix /k8s-proxy/ and rewrites it to /, or is path_separated_prefix of one of the Kubernetes API's top-level paths (" + strings.Join(contract.APIRootPaths, ", ") + ") without a rewrite"},
	{RuleRouteTimeout, "every forwarding route but the browser route has timeout 0s"},
	{RuleExplainRoute, "no redirect or other non-forwarding route takes the explain endpoint (" + ExplainPrefix + ", answered by kubegate authz) before a direct_response does"},
	{RuleAgentsRoute, "no redirect or other non-forwarding route takes the agent list endpoint (" + contract.AgentsPath + ", answered by kubegate authz) before a direct_response does"},
	{RuleStreamTimeouts, "stream_idle_timeout explicit and 0 or at least 1h; no request_timeout, max_stream_duration or max_connection_duration"},
	{RuleHeaderLimits, "max_request_headers_kb and max_headers_count set explicitly"},
	{RuleUnderscoreHeaders, "headers_with_underscores_action REJECT_REQUEST"},
	{RulePathNormalization, "normalize_path and merge_slashes true; escaped slashes rejected or redirected"},
	{RuleUpstreamHTTP11, "the API server cluster speaks HTTP/1.1 (HTTP/2 breaks exec, attach, port-forward)"},
	{RuleUpstreamTLS, "the API server cluster uses TLS verified against a CA and the server's name"},
	{RuleUpstreamNoClientCert, "the API server cluster presents no client certificate (a front-proxy one would make the API server trust X-Remote-User/X-Remote-Group from the client)"},
	{RuleUpstreamIdleTimeout, fmt.Sprintf("the API server cluster closes idle upstream connections (common_http_protocol_options.idle_timeout set, not 0, below kube-apiserver's %v; kubegate renders %v), so Envoy never reuses one the server has just closed", APIServerServerIdleTimeout, UpstreamIdleTimeout)},
	{RuleGRPCClusterHTTP2, "clusters of ext_authz, ext_proc and SDS speak HTTP/2"},
	{RuleClusterRefs, "every referenced cluster exists, once"},
	{RuleAdminLoopback, "the admin interface listens on loopback or a unix socket"},
	{RuleUpstreamHeaderStrip, "early_header_mutation_extensions remove the client's " + contract.HeaderUpstream + " before the route is picked, and the first HTTP filter is a header_mutation that removes it too (both set nothing), so only kubegate authz's copy can choose a cluster"},
	{RuleRouteClusterHeader, "every forwarding route but the browser route takes its cluster from " + contract.HeaderUpstream + " (cluster_header) and nothing else (no static, weighted or plugin cluster); there is at least one API server cluster"},
	{RuleClusterNotFound, "every forwarding route answers a missing or unknown " + contract.HeaderUpstream + " with cluster_not_found_response_code SERVICE_UNAVAILABLE (503)"},
	{RuleExtAuthzRouting, "ext_authz: clear_route_cache true and decoder_header_mutation_rules, when set, allow setting " + contract.HeaderUpstream + ", so the route reads the cluster kubegate authz chose"},
	{RuleExtProcNoRouting, "ext_proc: mutation_rules refuse " + contract.HeaderUpstream + " and route_cache_action RETAIN, so kubegate extproc can neither choose nor re-run the route"},
	{RuleUpstreamCredential, "every API server cluster (each cluster no gRPC service uses) has upstream http_filters credential_injector then upstream_codec (last), its injector reading a secret no other cluster reads"},
	{RuleMeshPatches, "an Istio EnvoyFilter (the chart's mesh.mode=istio) only ADDs one listener and clusters in the GATEWAY context, which are then checked like static resources"},
}

// Validate reads a bootstrap (YAML or JSON) and applies every check: decoding,
// protoc-gen-validate through every Any, and kubegate's rules. No findings means
// the configuration is fit for kubegate.
func Validate(data []byte) []Finding {
	b, fs := Decode(data)
	if len(fs) > 0 {
		return sortFindings(fs)
	}
	return CheckBootstrap(b)
}

// CheckBootstrap applies protoc-gen-validate and kubegate's rules to a decoded
// bootstrap.
func CheckBootstrap(b *bootstrapv3.Bootstrap) []Finding {
	fs := protoValidate(b, "$")
	c := newChecker(b)
	c.run()
	return sortFindings(append(fs, c.fs...))
}

type checker struct {
	b        *bootstrapv3.Bootstrap
	fs       findings
	clusters map[string]*clusterv3.Cluster
	cpath    map[string]string
	// References of the gRPC services: cluster name → path of the first reference.
	grpcRefs map[string]string
	refOrder []clusterRef
}

type clusterRef struct{ name, path string }

func newChecker(b *bootstrapv3.Bootstrap) *checker {
	c := &checker{b: b, clusters: map[string]*clusterv3.Cluster{}, cpath: map[string]string{},
		grpcRefs: map[string]string{}}
	for i, cl := range b.GetStaticResources().GetClusters() {
		p := fmt.Sprintf("$.static_resources.clusters[%d]", i)
		if _, dup := c.clusters[cl.GetName()]; dup {
			c.fs.add(p+".name", RuleClusterRefs, "cluster %q is defined twice; Envoy refuses to start", cl.GetName())
			continue
		}
		c.clusters[cl.GetName()] = cl
		c.cpath[cl.GetName()] = p
	}
	return c
}

func (c *checker) run() {
	c.dynamicResources()
	c.admin()
	hcms := 0
	for i, l := range c.b.GetStaticResources().GetListeners() {
		hcms += c.listener(l, fmt.Sprintf("$.static_resources.listeners[%d]", i))
	}
	if hcms == 0 {
		c.fs.add("$.static_resources.listeners", RuleListenerHCM, "no listener with an http_connection_manager: kubectl has nothing to talk to")
	}
	c.clusterRefs()
	c.connectTimeouts()
	c.everywhere()
}

func (c *checker) dynamicResources() {
	d := c.b.GetDynamicResources()
	const p = "$.dynamic_resources"
	if d.GetLdsConfig() != nil || d.GetLdsResourcesLocator() != "" {
		c.fs.add(p+".lds_config", RuleStaticConfig, "listeners from LDS cannot be checked; render them statically with `kubegate envoy render`")
	}
	if d.GetCdsConfig() != nil || d.GetCdsResourcesLocator() != "" {
		c.fs.add(p+".cds_config", RuleStaticConfig, "clusters from CDS cannot be checked; render them statically with `kubegate envoy render`")
	}
}

func (c *checker) admin() {
	a := c.b.GetAdmin().GetAddress()
	if a == nil {
		return
	}
	if a.GetPipe() != nil {
		return
	}
	host := a.GetSocketAddress().GetAddress()
	if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || host == "localhost" {
		return
	}
	c.fs.add("$.admin.address", RuleAdminLoopback, "the admin interface at %q can reconfigure and stop Envoy and dumps its config; bind it to 127.0.0.1 or a unix socket", host)
}

// unpack returns the message in a typed_config, or nil after recording why not.
func (c *checker) unpack(a *anypb.Any, path string) proto.Message {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		c.fs.add(path, RuleSchema, "cannot unpack %s: %v", a.GetTypeUrl(), err)
		return nil
	}
	return m
}

func typeName(a *anypb.Any) protoreflect.FullName {
	if a == nil {
		return ""
	}
	return a.MessageName()
}

var (
	hcmType       = (&hcmv3.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName()
	extAuthzType  = (&extauthzv3.ExtAuthz{}).ProtoReflect().Descriptor().FullName()
	extProcType   = (&extprocv3.ExternalProcessor{}).ProtoReflect().Descriptor().FullName()
	injectorType  = (&credinjectorv3.CredentialInjector{}).ProtoReflect().Descriptor().FullName()
	routerType    = (&routerv3.Router{}).ProtoReflect().Descriptor().FullName()
	requiredChain = []protoreflect.FullName{extAuthzType, extProcType, routerType}
)

// listener checks every filter chain and returns how many HCMs it found.
func (c *checker) listener(l *listenerv3.Listener, lp string) int {
	type chain struct {
		fc   *listenerv3.FilterChain
		path string
	}
	var chains []chain
	for j, fc := range l.GetFilterChains() {
		chains = append(chains, chain{fc, fmt.Sprintf("%s.filter_chains[%d]", lp, j)})
	}
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, chain{l.GetDefaultFilterChain(), lp + ".default_filter_chain"})
	}
	c.listenerHardening(l, lp)
	n := 0
	for _, ch := range chains {
		c.downstreamTLS(ch.fc, ch.path)
		c.handshakeTimeout(ch.fc, ch.path)
		filters := ch.fc.GetFilters()
		if len(filters) != 1 || typeName(filters[0].GetTypedConfig()) != hcmType {
			var got []string
			for _, f := range filters {
				got = append(got, filterLabel(f.GetName(), f.GetTypedConfig()))
			}
			c.fs.add(ch.path+".filters", RuleListenerHCM, "must be exactly one envoy.filters.network.http_connection_manager, found [%s]: any other network filter carries bytes past ext_authz", strings.Join(got, ", "))
		}
		for k, f := range filters {
			fp := fmt.Sprintf("%s.filters[%d]", ch.path, k)
			if f.GetConfigDiscovery() != nil {
				c.fs.add(fp+".config_discovery", RuleStaticConfig, "a network filter from ECDS cannot be checked")
				continue
			}
			if typeName(f.GetTypedConfig()) != hcmType {
				continue
			}
			if h, ok := c.unpack(f.GetTypedConfig(), fp+".typed_config").(*hcmv3.HttpConnectionManager); ok {
				n++
				c.hcm(h, fp+".typed_config")
			}
		}
	}
	return n
}

func filterLabel(name string, a *anypb.Any) string {
	if t := typeName(a); t != "" {
		return string(t)
	}
	return name + " (no typed_config)"
}

func (c *checker) downstreamTLS(fc *listenerv3.FilterChain, p string) {
	ts := fc.GetTransportSocket()
	if typeName(ts.GetTypedConfig()) != "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" {
		c.fs.add(p+".transport_socket", RuleDownstreamTLS, "the listener must terminate TLS (DownstreamTlsContext): kubectl sends its credentials in Authorization")
		return
	}
	t, ok := c.unpack(ts.GetTypedConfig(), p+".transport_socket.typed_config").(*tlsv3.DownstreamTlsContext)
	if !ok {
		return
	}
	ctx := t.GetCommonTlsContext()
	if len(ctx.GetTlsCertificates()) == 0 && len(ctx.GetTlsCertificateSdsSecretConfigs()) == 0 &&
		//lint:ignore SA1019 a deprecated field still names a server certificate source (tls.proto): this rule is about a missing certificate, not the field used
		ctx.GetTlsCertificateProviderInstance() == nil && ctx.GetTlsCertificateCertificateProviderInstance() == nil {
		c.fs.add(p+".transport_socket.typed_config.common_tls_context", RuleDownstreamTLS, "no server certificate (tls_certificates or tls_certificate_sds_secret_configs)")
	}
}

// hcm checks one HTTP connection manager.
func (c *checker) hcm(h *hcmv3.HttpConnectionManager, p string) {
	// Filter chain.
	var got []string
	var types []protoreflect.FullName
	securityNames := map[string]string{FilterExtAuthz: "ext_authz", FilterExtProc: "ext_proc", FilterCredentialInjector: "credential_injector", FilterLocalRateLimit: "local_ratelimit", FilterHeaderMutation: "header_mutation"}
	firstOf := map[protoreflect.FullName]int{}
	for j, f := range h.GetHttpFilters() {
		fp := fmt.Sprintf("%s.http_filters[%d]", p, j)
		if f.GetConfigDiscovery() != nil {
			c.fs.add(fp+".config_discovery", RuleStaticConfig, "filter %q comes from ECDS and cannot be checked; configure it inline", f.GetName())
		}
		if f.GetDisabled() {
			c.fs.add(fp+".disabled", RuleFilterEnabled, "filter %q is disabled: it only runs where a route enables it, so every other route skips it", f.GetName())
		}
		if f.GetIsOptional() {
			c.fs.add(fp+".is_optional", RuleFilterEnabled, "filter %q is optional: an Envoy build without it would start and skip it", f.GetName())
		}
		t := typeName(f.GetTypedConfig())
		types = append(types, t)
		got = append(got, filterLabel(f.GetName(), f.GetTypedConfig()))
		if _, seen := firstOf[t]; !seen && t != "" {
			firstOf[t] = j
		}
		switch t {
		case extAuthzType:
			securityNames[f.GetName()] = "ext_authz"
		case extProcType:
			securityNames[f.GetName()] = "ext_proc"
		case injectorType:
			securityNames[f.GetName()] = "credential_injector"
		case localRateLimitType:
			securityNames[f.GetName()] = "local_ratelimit"
		case headerMutationType:
			securityNames[f.GetName()] = "header_mutation"
		}
	}
	// The header_mutation in front is upstream-header-strip's business, the
	// per-client rate limit after it client-rate-limit's.
	c.upstreamHeaderStrip(h, p)
	chainTypes := types
	if len(chainTypes) > 0 && chainTypes[0] == headerMutationType {
		chainTypes = chainTypes[1:]
	}
	for len(chainTypes) > 0 && chainTypes[0] == localRateLimitType {
		chainTypes = chainTypes[1:]
	}
	if !slices.Equal(chainTypes, requiredChain) {
		why := ""
		if slices.Contains(chainTypes, injectorType) {
			why = ": credential_injector belongs to each API server cluster's upstream http_filters (its own agent's token), not to the listener, where one token would go to every agent's API server"
		}
		c.fs.add(p+".http_filters", RuleFilterOrder, "must be exactly ext_authz, ext_proc, router in this order (after the header_mutation and local_ratelimit in front); found [%s]%s", strings.Join(got, ", "), why)
	}
	for _, t := range requiredChain {
		j, ok := firstOf[t]
		if !ok {
			continue
		}
		fp := fmt.Sprintf("%s.http_filters[%d].typed_config", p, j)
		switch m := c.unpack(h.GetHttpFilters()[j].GetTypedConfig(), fp).(type) {
		case *extauthzv3.ExtAuthz:
			c.extAuthz(m, fp)
		case *extprocv3.ExternalProcessor:
			c.extProc(m, fp)
		}
	}

	// Upgrades.
	enabled := map[string]bool{}
	for j, u := range h.GetUpgradeConfigs() {
		up := fmt.Sprintf("%s.upgrade_configs[%d]", p, j)
		if len(u.GetFilters()) > 0 {
			c.fs.add(up+".filters", RuleFilterOrder, "an upgrade-specific filter chain replaces the HTTP filters for %q requests, so exec and port-forward would skip ext_authz and ext_proc", u.GetUpgradeType())
		}
		if u.GetEnabled() == nil || u.GetEnabled().GetValue() {
			enabled[strings.ToLower(u.GetUpgradeType())] = true
		}
	}
	for _, want := range UpgradeTypes {
		if !enabled[want] {
			c.fs.add(p+".upgrade_configs", RuleUpgradeTypes, "upgrade type %q is not enabled: kubectl exec, attach, cp and port-forward need websocket and spdy/3.1", want)
		}
	}

	// Timeouts.
	switch d := h.GetStreamIdleTimeout(); {
	case d == nil:
		c.fs.add(p+".stream_idle_timeout", RuleStreamTimeouts, "unset: Envoy's default of 5 minutes cuts quiet watches and `kubectl logs -f`; set it to at least %v", MinStreamIdleTimeout)
	case d.AsDuration() != 0 && d.AsDuration() < MinStreamIdleTimeout:
		c.fs.add(p+".stream_idle_timeout", RuleStreamTimeouts, "%v is shorter than %v: quiet watches and `kubectl logs -f` would be cut", d.AsDuration(), MinStreamIdleTimeout)
	}
	if d := h.GetRequestTimeout(); d != nil && d.AsDuration() != 0 {
		c.fs.add(p+".request_timeout", RuleStreamTimeouts, "request_timeout %v would cut exec sessions and streamed uploads; leave it 0", d.AsDuration())
	}
	if d := h.GetCommonHttpProtocolOptions().GetMaxStreamDuration(); d != nil && d.AsDuration() != 0 {
		c.fs.add(p+".common_http_protocol_options.max_stream_duration", RuleStreamTimeouts, "max_stream_duration %v would end watches, logs -f and exec sessions; leave it unset", d.AsDuration())
	}
	// max_connection_duration drains the connection, then closes it with its
	// streams after drain_timeout (http_connection_manager.proto, protocol.proto).
	if d := h.GetCommonHttpProtocolOptions().GetMaxConnectionDuration(); d != nil && d.AsDuration() != 0 {
		c.fs.add(p+".common_http_protocol_options.max_connection_duration", RuleStreamTimeouts, "max_connection_duration %v closes every connection on a schedule, with its watches and exec sessions; leave it unset", d.AsDuration())
	}

	// Headers.
	if h.GetMaxRequestHeadersKb() == nil {
		c.fs.add(p+".max_request_headers_kb", RuleHeaderLimits, "unset: bound the request header size explicitly (kubegate renders %d KiB, room for the Impersonate-Group lines)", DefaultMaxRequestHeadersKB)
	}
	if h.GetCommonHttpProtocolOptions().GetMaxHeadersCount() == nil {
		c.fs.add(p+".common_http_protocol_options.max_headers_count", RuleHeaderLimits, "unset: Envoy's default of 100 is less than the Impersonate-Group lines of a user in a few dozen projects, and ext_proc's mutation then fails; set it explicitly (kubegate renders %d)", DefaultMaxHeadersCount)
	}
	if h.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		c.fs.add(p+".common_http_protocol_options.headers_with_underscores_action", RuleUnderscoreHeaders, "must be REJECT_REQUEST: a header like impersonate_user may be read as impersonate-user by some backends")
	}
	if !h.GetNormalizePath().GetValue() {
		c.fs.add(p+".normalize_path", RulePathNormalization, "must be true: otherwise /k8s-proxy/../x is authorized as one path and served as another")
	}
	if !h.GetMergeSlashes() {
		c.fs.add(p+".merge_slashes", RulePathNormalization, "must be true: the API server treats //api like /api but routing and authorization would not")
	}
	if a := h.GetPathWithEscapedSlashesAction(); a != hcmv3.HttpConnectionManager_REJECT_REQUEST && a != hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT {
		c.fs.add(p+".path_with_escaped_slashes_action", RulePathNormalization, "%v lets %%2F through, which the API server decodes into a path separator after authorization; use REJECT_REQUEST", a)
	}

	c.hardening(h, p)

	// Routes.
	switch {
	case h.GetRds() != nil:
		c.fs.add(p+".rds", RuleStaticConfig, "routes from RDS cannot be checked; put route_config inline")
	case h.GetScopedRoutes() != nil:
		c.fs.add(p+".scoped_routes", RuleStaticConfig, "scoped routes cannot be checked; put route_config inline")
	default:
		c.routes(h.GetRouteConfig(), p+".route_config", securityNames)
	}
}

func (c *checker) extAuthz(a *extauthzv3.ExtAuthz, p string) {
	if a.GetFailureModeAllow() {
		c.fs.add(p+".failure_mode_allow", RuleExtAuthzFailClosed, "true lets every request through when kubegate authz is down or errors; it must be false")
	}
	if a.GetShadowMode() {
		c.fs.add(p+".shadow_mode", RuleExtAuthzFailClosed, "shadow mode never denies a request; it must be false")
	}
	if a.GetFilterEnabled() != nil {
		c.fs.add(p+".filter_enabled", RuleExtAuthzFailClosed, "a fraction or runtime key lets some requests skip authorization; leave it unset")
	}
	if a.GetFilterEnabledMetadata() != nil {
		c.fs.add(p+".filter_enabled_metadata", RuleExtAuthzFailClosed, "requests whose metadata does not match would skip authorization; leave it unset")
	}
	if s := a.GetStatusOnError(); s == nil || s.GetCode() != typev3.StatusCode_ServiceUnavailable {
		c.fs.add(p+".status_on_error", RuleExtAuthzStatusOnError, "must be {code: ServiceUnavailable} (503): an unreachable authorization service is not the client's fault (the default is 403)")
	}
	if a.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		c.fs.add(p+".transport_api_version", RuleExtAuthzGRPC, "must be V3 (kubegate authz serves envoy.service.auth.v3)")
	}
	c.grpcService(a.GetGrpcService(), a.GetHttpService() != nil, p, RuleExtAuthzGRPC, "kubegate authz")
	if a.GetWithRequestBody() != nil {
		c.fs.add(p+".with_request_body", RuleExtAuthzNoBody, "must be unset: Envoy buffers the body of spdy/3.1 upgrades too, which hangs kubectl exec; kubegate authz does not read bodies")
	}
	if !a.GetEncodeRawHeaders() {
		c.fs.add(p+".encode_raw_headers", RuleExtAuthzRawHeaders, "must be true: otherwise duplicate Authorization or Impersonate-* lines reach kubegate authz as one comma-joined value and cannot be refused")
	}
	if m := a.GetEnableDynamicMetadataIngestion(); m != nil && !m.GetValue() {
		c.fs.add(p+".enable_dynamic_metadata_ingestion", RuleExtAuthzMetadata, "false drops kubegate authz's decision, so ext_proc refuses every request")
	}
	// "Check request to authorization server will include the client request
	// headers that have a correspondent match in the list. If this option isn't
	// specified, then all client request headers are included in the check request
	// to a gRPC authorization server" (ext_authz.proto, allowed_headers); a header
	// matching disallowed_headers "will NOT be sent". kubegate authz can only refuse
	// what it is shown. (http_service.authorization_request.allowed_headers, the
	// deprecated form, needs http_service, which ext-authz-grpc refuses; per-route
	// check_settings are refused by per-route-override.)
	const hidden = "kubegate authz must see every request header: one it is not sent (Impersonate-*, X-Remote-*, Authorization, Cookie, Gitlab-Agent-Id, X-Csrf-Token) cannot be refused as client impersonation or checked for duplicate lines; leave it unset"
	if a.GetAllowedHeaders() != nil {
		c.fs.add(p+".allowed_headers", RuleExtAuthzAllHeaders, "%s", hidden)
	}
	if a.GetDisallowedHeaders() != nil {
		c.fs.add(p+".disallowed_headers", RuleExtAuthzAllHeaders, "%s", hidden)
	}
	c.credentialRemoval(a.GetDecoderHeaderMutationRules(), p+".decoder_header_mutation_rules")
	c.extAuthzRouting(a, p)
}

// credentialRemoval checks that ext_authz's decoder_header_mutation_rules let
// kubegate authz remove the credential headers (headers_to_remove). Unset rules
// are fine: "If unset, header mutation rule checking is completely disabled"
// (ext_authz.proto). When set, Envoy's ext_authz filter (Filter::onComplete) checks
// every removal with Checker::check(REMOVE, ...): "Every attempt to add, change,
// append, or remove a header will be tested against the rules here. Disallowed
// header mutations will be ignored unless disallow_is_error is set to true"
// (mutation_rules.proto). Ignored, the client's Cookie or CSRF token goes upstream;
// with disallow_is_error, every request fails. Either way the rules must allow
// the removal; mutationAllowed follows Checker::isAllowed.
func (c *checker) credentialRemoval(r *mutationrulesv3.HeaderMutationRules, p string) {
	if r == nil {
		return
	}
	prefix := c.b.GetHeaderPrefix()
	if prefix == "" {
		prefix = "x-envoy"
	}
	var refused []string
	for _, h := range CredentialHeaders {
		ok, err := mutationAllowed(r, h, prefix)
		if err != nil {
			c.fs.add(p, RuleExtAuthzRemoval, "%v", err)
			return
		}
		if !ok {
			refused = append(refused, h)
		}
	}
	var notSet []string
	for _, h := range ExtAuthzSetHeaders {
		if h == contract.HeaderUpstream {
			continue // ext-authz-routing's
		}
		if ok, _ := mutationAllowed(r, h, prefix); !ok {
			notSet = append(notSet, h)
		}
	}
	if len(notSet) > 0 {
		// Refused, kubegate extproc denies every user-mode request (it checks the
		// header against the decision); with disallow_is_error Envoy fails them
		// first. Closed either way, but nothing works.
		c.fs.add(p, RuleExtAuthzRemoval, "refuses setting %s, which kubegate authz sets on every user-mode request so that one ext_proc skips never runs as the agent: every user-mode request would fail; allow it (kubegate renders allow_expression %q with disallow_all)",
			strings.Join(notSet, ", "), ExtAuthzMutationExpression())
	}
	if len(refused) == 0 {
		return
	}
	outcome := "Envoy silently keeps them, so the user's own credential (a Cookie, the CSRF token) reaches the API server"
	if r.GetDisallowIsError().GetValue() {
		outcome = "with disallow_is_error, Envoy fails every request (kubegate authz asks for their removal on every request it allows)"
	}
	c.fs.add(p, RuleExtAuthzRemoval, "refuses removing %s, which kubegate authz strips through headers_to_remove: %s; allow them (kubegate renders allow_expression %q with disallow_all)",
		strings.Join(refused, ", "), outcome, ExtAuthzMutationExpression())
}

func (c *checker) grpcService(g *corev3.GrpcService, isHTTP bool, p, rule, what string) {
	switch {
	case isHTTP:
		c.fs.add(p+".http_service", rule, "%s is a gRPC service: use grpc_service with envoy_grpc", what)
	case g == nil:
		c.fs.add(p+".grpc_service", rule, "unset: point grpc_service.envoy_grpc.cluster_name at %s", what)
	case g.GetEnvoyGrpc() == nil:
		c.fs.add(p+".grpc_service", rule, "use envoy_grpc with a static cluster, so the cluster's health checks and limits apply and the reference can be checked")
	default:
		c.refGRPC(g.GetEnvoyGrpc().GetClusterName(), p+".grpc_service.envoy_grpc.cluster_name")
	}
}

func (c *checker) extProc(e *extprocv3.ExternalProcessor, p string) {
	if e.GetFailureModeAllow() {
		c.fs.add(p+".failure_mode_allow", RuleExtProcFailClosed, "true sends the request on without impersonation headers when kubegate extproc fails, i.e. as the agent's service account")
	}
	if e.GetObservabilityMode() {
		c.fs.add(p+".observability_mode", RuleExtProcFailClosed, "observability mode ignores the processor's answers: no impersonation headers, requests run as the agent")
	}
	if e.GetDisableImmediateResponse() {
		c.fs.add(p+".disable_immediate_response", RuleExtProcFailClosed, "kubegate extproc denies with an immediate response when the decision is missing; ignoring it lets the request through as the agent")
	}
	pm := e.GetProcessingMode()
	const pmPath = ".processing_mode"
	if m := pm.GetRequestHeaderMode(); m != extprocv3.ProcessingMode_SEND && m != extprocv3.ProcessingMode_DEFAULT {
		c.fs.add(p+pmPath+".request_header_mode", RuleExtProcProcessingMode, "%v: kubegate extproc never sees the request and adds no impersonation headers; use SEND", m)
	}
	if m := pm.GetResponseHeaderMode(); m != extprocv3.ProcessingMode_SKIP {
		c.fs.add(p+pmPath+".response_header_mode", RuleExtProcProcessingMode, "%v: must be SKIP (the default sends response headers, an extra round trip kubegate extproc does not answer)", m)
	}
	for name, m := range map[string]extprocv3.ProcessingMode_HeaderSendMode{
		"request_trailer_mode": pm.GetRequestTrailerMode(), "response_trailer_mode": pm.GetResponseTrailerMode(),
	} {
		if m == extprocv3.ProcessingMode_SEND {
			c.fs.add(p+pmPath+"."+name, RuleExtProcProcessingMode, "SEND: must be SKIP")
		}
	}
	if e.GetAllowModeOverride() {
		c.fs.add(p+".allow_mode_override", RuleExtProcProcessingMode, "must be false: the processor could switch on body modes, which break upgrades")
	}
	for name, m := range map[string]extprocv3.ProcessingMode_BodySendMode{
		"request_body_mode": pm.GetRequestBodyMode(), "response_body_mode": pm.GetResponseBodyMode(),
	} {
		if m != extprocv3.ProcessingMode_NONE {
			c.fs.add(p+pmPath+"."+name, RuleExtProcBodyMode, "%v: must be NONE; body modes break kubectl exec, attach and port-forward (envoy#47081, envoy#47048)", m)
		}
	}
	if !slices.Contains(e.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(), ExtAuthzMetadataNamespace) {
		c.fs.add(p+".metadata_options.forwarding_namespaces.untyped", RuleExtProcMetadata, "must contain %q: kubegate extproc reads the ext_authz decision from metadata_context and refuses requests without it", ExtAuthzMetadataNamespace)
	}
	// "If not set, all headers are forwarded to the external processing server"
	// (ext_proc.proto, forward_rules); with allowed_headers or disallowed_headers
	// some are not (HeaderForwardingRules). kubegate extproc strips the client's
	// Impersonate-* lines it is sent and adds its own, so a hidden
	// "Impersonate-Group: system:masters" would reach the API server.
	if fr := e.GetForwardRules(); fr != nil {
		c.fs.add(p+".forward_rules", RuleExtProcAllHeaders, "kubegate extproc removes only the client Impersonate-* headers it is sent: one that forward_rules hides (Impersonate-Group: system:masters, say) reaches the API server beside the gateway's own; leave forward_rules unset")
	}
	c.mutationRules(e.GetMutationRules(), p+".mutation_rules")
	if d := e.GetMessageTimeout(); d == nil || d.AsDuration() <= 0 {
		c.fs.add(p+".message_timeout", RuleExtProcMessageTimeout, "set it explicitly (kubegate renders %v); zero fails every request, unset silently means 200ms", DefaultExtProcTimeout)
	}
	c.grpcService(e.GetGrpcService(), e.GetHttpService() != nil, p, RuleExtProcGRPC, "kubegate extproc")
	c.extProcNoRouting(e, p)
}

// Header names the ext_proc mutation rules must allow, and must refuse.
var (
	mutationMustAllow = []string{"impersonate-user", "impersonate-uid", "impersonate-group",
		"impersonate-extra-agent.gitlab.com%2fid", "impersonate-extra-agent.gitlab.com%2faccess_type"}
	mutationMustRefuse = append(slices.Clone(contract.CredentialHeaders),
		"host", ":authority", ":path", ":method", ":scheme", "content-length", "transfer-encoding",
		"connection", "upgrade", "te", "x-forwarded-for", "x-envoy-original-path", "proxy-authorization")
)

func (c *checker) mutationRules(r *mutationrulesv3.HeaderMutationRules, p string) {
	if r == nil {
		c.fs.add(p, RuleExtProcMutationRules, "unset: the processor may then change any header except a few routing ones, including Authorization; allow only impersonate-* (allow_expression) with disallow_all and disallow_is_error")
		return
	}
	if !r.GetDisallowIsError().GetValue() {
		c.fs.add(p+".disallow_is_error", RuleExtProcMutationRules, "must be true: a refused mutation is otherwise silently ignored and the request goes on")
	}
	prefix := c.b.GetHeaderPrefix()
	if prefix == "" {
		prefix = "x-envoy"
	}
	var refused, allowed []string
	for _, h := range mutationMustAllow {
		ok, err := mutationAllowed(r, h, prefix)
		if err != nil {
			c.fs.add(p, RuleExtProcMutationRules, "%v", err)
			return
		}
		if !ok {
			refused = append(refused, h)
		}
	}
	for _, h := range mutationMustRefuse {
		if ok, _ := mutationAllowed(r, h, prefix); ok {
			allowed = append(allowed, h)
		}
	}
	if len(refused) > 0 {
		c.fs.add(p, RuleExtProcMutationRules, "refuses %s: kubegate extproc must be able to set every impersonate-* header", strings.Join(refused, ", "))
	}
	if len(allowed) > 0 {
		c.fs.add(p, RuleExtProcMutationRules, "allows %s: a compromised processor could change them; allow only impersonate-* and set disallow_all", strings.Join(allowed, ", "))
	}
}

// mutationAllowed follows Envoy's Checker::isAllowed
// (source/extensions/filters/common/mutation_rules/mutation_rules.cc): disallow
// expression, allow expression, disallow_all, routing headers unless
// allow_all_routing, ":" headers if disallow_system, the Envoy prefix unless
// allow_envoy. Expressions are RE2 matched against the whole lower-case name.
func mutationAllowed(r *mutationrulesv3.HeaderMutationRules, name, envoyPrefix string) (bool, error) {
	full := func(m interface{ GetRegex() string }, field string) (bool, error) {
		re, err := regexp.Compile("^(?:" + m.GetRegex() + ")$")
		if err != nil {
			return false, fmt.Errorf("%s %q is not a valid RE2 expression: %v", field, m.GetRegex(), err)
		}
		return re.MatchString(name), nil
	}
	if r.GetDisallowExpression() != nil {
		if m, err := full(r.GetDisallowExpression(), "disallow_expression"); err != nil || m {
			return false, err
		}
	}
	if r.GetAllowExpression() != nil {
		m, err := full(r.GetAllowExpression(), "allow_expression")
		if err != nil {
			return false, err
		}
		if m {
			return true, nil
		}
	}
	if r.GetDisallowAll().GetValue() {
		return false, nil
	}
	if !r.GetAllowAllRouting().GetValue() && slices.Contains([]string{"host", ":authority", ":method", ":scheme"}, name) {
		return false, nil
	}
	if r.GetDisallowSystem().GetValue() && strings.HasPrefix(name, ":") {
		return false, nil
	}
	if !r.GetAllowEnvoy().GetValue() && strings.HasPrefix(name, envoyPrefix) {
		return false, nil
	}
	return true, nil
}

func (c *checker) credentialInjector(ci *credinjectorv3.CredentialInjector, p string) {
	if !ci.GetOverwrite() {
		c.fs.add(p+".overwrite", RuleCredentialOverwrite, "must be true: the default (false) keeps an Authorization header that is already there instead of the agent token")
	}
	if ci.GetAllowRequestWithoutCredential() {
		c.fs.add(p+".allow_request_without_credential", RuleCredentialOverwrite, "must be false: requests would reach the API server without the agent token while the secret is missing")
	}
	cp := p + ".credential"
	if typeName(ci.GetCredential().GetTypedConfig()) != (&genericv3.Generic{}).ProtoReflect().Descriptor().FullName() {
		c.fs.add(cp+".typed_config", RuleCredentialRotation, "the credential must be envoy.http.injected_credentials.generic with the agent token from SDS")
		return
	}
	g, ok := c.unpack(ci.GetCredential().GetTypedConfig(), cp+".typed_config").(*genericv3.Generic)
	if !ok {
		return
	}
	gp := cp + ".typed_config"
	if h := g.GetHeader(); h != "" && !strings.EqualFold(h, "authorization") {
		c.fs.add(gp+".header", RuleCredentialOverwrite, "%q: the API server reads the token from Authorization", h)
	}
	if g.GetHeaderValuePrefix() != "Bearer " {
		c.fs.add(gp+".header_value_prefix", RuleCredentialOverwrite, "must be \"Bearer \": kubegate xds serves the bare token, as in the projected token file")
	}
	sds := g.GetCredential()
	switch src := sds.GetSdsConfig(); {
	case sds == nil:
		c.fs.add(gp+".credential", RuleCredentialRotation, "unset: name the agent's SDS secret (%s<agent id>)", TokenSecretPrefix)
	case src == nil:
		c.fs.add(gp+".credential.sds_config", RuleCredentialRotation, "unset: a secret from static_resources.secrets only changes when Envoy restarts, and projected tokens expire; serve it with `kubegate xds`")
	case src.GetPathConfigSource() != nil:
		if src.GetPathConfigSource().GetWatchedDirectory() == nil {
			c.fs.add(gp+".credential.sds_config.path_config_source.watched_directory", RuleCredentialRotation, "a Kubernetes projected token is replaced by a symlink swap, which Envoy only notices through watched_directory")
		}
	case src.GetApiConfigSource() != nil:
		api := src.GetApiConfigSource()
		if api.GetApiType() != corev3.ApiConfigSource_GRPC && api.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC {
			c.fs.add(gp+".credential.sds_config.api_config_source.api_type", RuleCredentialRotation, "%v: SDS needs GRPC or DELTA_GRPC", api.GetApiType())
		}
		c.grpcServices(api.GetGrpcServices(), gp+".credential.sds_config.api_config_source.grpc_services", RuleCredentialRotation)
	case src.GetAds() != nil:
		c.grpcServices(c.b.GetDynamicResources().GetAdsConfig().GetGrpcServices(), "$.dynamic_resources.ads_config.grpc_services", RuleCredentialRotation)
	default:
		c.fs.add(gp+".credential.sds_config", RuleCredentialRotation, "use api_config_source (gRPC SDS from `kubegate xds`) or path_config_source with watched_directory")
	}
}

func (c *checker) grpcServices(gs []*corev3.GrpcService, p, rule string) {
	if len(gs) == 0 {
		c.fs.add(p, rule, "no gRPC service: point envoy_grpc.cluster_name at the cluster of `kubegate xds`")
	}
	for i, g := range gs {
		gp := fmt.Sprintf("%s[%d]", p, i)
		if g.GetEnvoyGrpc() == nil {
			c.fs.add(gp, rule, "use envoy_grpc with a static cluster")
			continue
		}
		c.refGRPC(g.GetEnvoyGrpc().GetClusterName(), gp+".envoy_grpc.cluster_name")
	}
}

func (c *checker) routes(rc *routev3.RouteConfiguration, p string, security map[string]string) {
	c.perFilter(rc.GetTypedPerFilterConfig(), p, security, false)
	c.routeHeaders(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), p)
	forwarding := 0
	type apiRoute struct {
		vh *routev3.VirtualHost
		rt *routev3.Route
		rp string
	}
	var api []apiRoute
	_, browser := c.clusters[contract.BrowserCluster]
	for v, vh := range rc.GetVirtualHosts() {
		vp := fmt.Sprintf("%s.virtual_hosts[%d]", p, v)
		c.perFilter(vh.GetTypedPerFilterConfig(), vp, security, false)
		c.routeHeaders(vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vp)
		for r, rt := range vh.GetRoutes() {
			rp := fmt.Sprintf("%s.routes[%d]", vp, r)
			off := c.perFilter(rt.GetTypedPerFilterConfig(), rp, security, true)
			c.routeHeaders(rt.GetRequestHeadersToAdd(), rt.GetRequestHeadersToRemove(), rp)
			c.browserRoute(rt, off, rp)
			a := rt.GetRoute()
			switch {
			case a == nil:
			case a.GetCluster() == contract.BrowserCluster:
				// The browser route: browser-route's and browser-cluster's, not
				// an API route.
				c.refOrder = append(c.refOrder, clusterRef{a.GetCluster(), rp + ".route.cluster"})
				browser = true
			default:
				forwarding++
				api = append(api, apiRoute{vh, rt, rp})
				c.routeAction(rt, a, rp, security)
			}
		}
		c.explainRoute(vh, vp)
		c.agentsRoute(vh, vp)
	}
	if browser {
		for _, r := range api {
			c.apiCORSStrip(rc, r.vh, r.rt, r.rp)
		}
	}
	if forwarding == 0 {
		c.fs.add(p+".virtual_hosts", RuleRoutePrefix, "no route forwards %s to the API server", PathPrefix)
	}
}

// explainSample is a request to the explain endpoint, matched against each route.
const explainSample = ExplainPrefix + "GET/api/v1/namespaces/default/pods"

// explainRoute checks that the first route other than a forwarding one (those are
// rule route-prefix's: they must match PathPrefix exactly, so none takes the
// explain endpoint) that can match an explain request is a direct_response. A
// redirect there would send the user's credential elsewhere; a filter action or
// non-forwarding action has no defined answer.
func (c *checker) explainRoute(vh *routev3.VirtualHost, vp string) {
	for r, rt := range vh.GetRoutes() {
		if rt.GetRoute() != nil || !routeMayMatch(rt.GetMatch(), explainSample, ExplainPrefix) {
			continue
		}
		if rt.GetDirectResponse() == nil {
			c.fs.add(fmt.Sprintf("%s.routes[%d]", vp, r), RuleExplainRoute, "takes requests for the explain endpoint %s, which kubegate authz answers; make it a direct_response (kubegate envoy render writes one)", ExplainPrefix)
		}
		return
	}
}

// routeMayMatch reports whether a route's path specifier can match path (a path
// without query). What cannot be decided statically counts as a match. Envoy's
// regex engine is RE2, which Go's regexp implements; a safe_regex route must match
// the whole path, and case_sensitive does not apply to it (route_components.proto
// RouteMatch.safe_regex, case_sensitive).
// family is the prefix of the endpoint the sample belongs to: an exact path route
// under it counts as a match.
func routeMayMatch(m *routev3.RouteMatch, path, family string) bool {
	sensitive := m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	hasPrefix := func(p string) bool {
		if sensitive {
			return strings.HasPrefix(path, p)
		}
		return len(path) >= len(p) && strings.EqualFold(path[:len(p)], p)
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		return hasPrefix(ps.Prefix)
	case *routev3.RouteMatch_Path:
		return hasPrefix(family) && strings.HasPrefix(strings.ToLower(ps.Path), strings.ToLower(family))
	case *routev3.RouteMatch_PathSeparatedPrefix:
		p := ps.PathSeparatedPrefix
		return hasPrefix(p) && (len(path) == len(p) || path[len(p)] == '/')
	case *routev3.RouteMatch_SafeRegex:
		re, err := regexp.Compile("^(?:" + ps.SafeRegex.GetRegex() + ")$")
		return err != nil || re.MatchString(path)
	case *routev3.RouteMatch_ConnectMatcher_:
		return false
	}
	return true
}

func (c *checker) routeAction(rt *routev3.Route, a *routev3.RouteAction, rp string, security map[string]string) {
	ap := rp + ".route"
	switch root := rt.GetMatch().GetPathSeparatedPrefix(); {
	case root != "":
		// kubectl get --raw /readyz: a top-level API path, served as it is.
		if !slices.Contains(contract.APIRootPaths, root) {
			c.fs.add(rp+".match.path_separated_prefix", RuleRoutePrefix, "%q is not one of the Kubernetes API's top-level paths kubegate authz serves without %s (%s)", root, PathPrefix, strings.Join(contract.APIRootPaths, ", "))
		}
		if a.GetPrefixRewrite() != "" || a.GetRegexRewrite() != nil || a.GetPathRewritePolicy() != nil {
			c.fs.add(ap+".prefix_rewrite", RuleRoutePrefix, "a top-level API path goes to the API server as it is: no prefix_rewrite, regex_rewrite or path_rewrite_policy (kubegate authz decided for the path it saw)")
		}
		if m := rt.GetMatch(); m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue() {
			c.fs.add(rp+".match.case_sensitive", RuleRoutePrefix, "false would forward /API/... which kubegate authz does not take for an API path")
		}
	default:
		if rt.GetMatch().GetPrefix() != PathPrefix {
			c.fs.add(rp+".match", RuleRoutePrefix, "a forwarding route must match prefix %q exactly (kubectl's server URL ends in /k8s-proxy), or path_separated_prefix one of %s", PathPrefix, strings.Join(contract.APIRootPaths, ", "))
		}
		if a.GetPrefixRewrite() != "/" || a.GetRegexRewrite() != nil || a.GetPathRewritePolicy() != nil {
			c.fs.add(ap+".prefix_rewrite", RuleRoutePrefix, "must be \"/\" with no regex_rewrite or path_rewrite_policy: /k8s-proxy/api/v1/pods goes to /api/v1/pods")
		}
	}
	switch t := a.GetTimeout(); {
	case t == nil:
		c.fs.add(ap+".timeout", RuleRouteTimeout, "unset means Envoy's 15s default, which ends every watch, `logs -f` and exec session; set 0s")
	case t.AsDuration() != 0:
		c.fs.add(ap+".timeout", RuleRouteTimeout, "%v ends every watch, `logs -f` and exec session after that long; set 0s", t.AsDuration())
	}
	if d := a.GetIdleTimeout(); d != nil && d.AsDuration() != 0 && d.AsDuration() < MinStreamIdleTimeout {
		c.fs.add(ap+".idle_timeout", RuleStreamTimeouts, "%v is shorter than %v: quiet watches would be cut", d.AsDuration(), MinStreamIdleTimeout)
	}
	if d := a.GetMaxStreamDuration().GetMaxStreamDuration(); d != nil && d.AsDuration() != 0 {
		c.fs.add(ap+".max_stream_duration", RuleStreamTimeouts, "%v would end long-lived streams; leave it unset", d.AsDuration())
	}
	for j, u := range a.GetUpgradeConfigs() {
		if slices.Contains(UpgradeTypes, strings.ToLower(u.GetUpgradeType())) && u.GetEnabled() != nil && !u.GetEnabled().GetValue() {
			c.fs.add(fmt.Sprintf("%s.upgrade_configs[%d]", ap, j), RuleUpgradeTypes, "disables %q on this route", u.GetUpgradeType())
		}
	}
	c.routeCluster(a, ap, security)
}

// perFilter checks one level's typed_per_filter_config. Only a route's own
// (onRoute) may turn ext_authz or ext_proc off, and only by disabling it outright
// (disables; rule browser-route then says where that is allowed): every other
// per-route config of a security filter can change its settings for these
// requests. It returns which of the two the level turns off.
func (c *checker) perFilter(m map[string]*anypb.Any, p string, security map[string]string, onRoute bool) filtersOff {
	var off filtersOff
	for _, name := range sortedAnyKeys(m) {
		what, ok := security[name]
		if !ok {
			continue
		}
		fp := fmt.Sprintf("%s.typed_per_filter_config[%q]", p, name)
		if disables(m[name], what) {
			if !onRoute {
				c.fs.add(fp, RuleBrowserRoute, "disables %s for every route below this level; only the browser route (to %s) may skip it, on the route itself", what, contract.BrowserCluster)
				continue
			}
			if what == "ext_authz" {
				off.authz = true
			} else {
				off.proc = true
			}
			continue
		}
		c.fs.add(fp, RulePerRouteOverride, "a per-route %s config can disable it or change its settings for these requests; kubegate configures it once, at the listener (only the browser route disables ext_authz and ext_proc, with disabled: true alone)", what)
	}
	return off
}

func sortedAnyKeys(m map[string]*anypb.Any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func guardedHeader(name string) bool {
	n := strings.ToLower(name)
	return n == contract.HeaderAuthorization || strings.HasPrefix(n, contract.ImpersonatePrefix)
}

func (c *checker) routeHeaders(add []*corev3.HeaderValueOption, remove []string, p string) {
	for i, h := range add {
		if guardedHeader(h.GetHeader().GetKey()) {
			c.fs.add(fmt.Sprintf("%s.request_headers_to_add[%d]", p, i), RuleRouteHeaders, "adds %q: only ext_proc (impersonation) and credential_injector (the agent token) may set it", h.GetHeader().GetKey())
		}
	}
	for i, h := range remove {
		if guardedHeader(h) {
			c.fs.add(fmt.Sprintf("%s.request_headers_to_remove[%d]", p, i), RuleRouteHeaders, "removes %q after the filters ran: that would drop the impersonation or the agent token", h)
		}
	}
}

func (c *checker) refGRPC(name, path string) {
	if _, ok := c.grpcRefs[name]; !ok {
		c.grpcRefs[name] = path
	}
	c.refOrder = append(c.refOrder, clusterRef{name, path})
}

func (c *checker) clusterRefs() {
	c.apiServerClusters() // adds the SDS references of the upstream credential injectors
	for _, r := range c.refOrder {
		if _, ok := c.clusters[r.name]; !ok {
			c.fs.add(r.path, RuleClusterRefs, "cluster %q is not defined in static_resources.clusters", r.name)
		}
	}
	for name := range c.grpcRefs {
		if cl, ok := c.clusters[name]; ok && !c.isHTTP2(cl, c.cpath[name]) {
			c.fs.add(c.cpath[name], RuleGRPCClusterHTTP2, "cluster %q serves gRPC and must speak HTTP/2: set typed_extension_protocol_options[%q].explicit_http_config.http2_protocol_options", name, UpstreamHTTPOptionsKey)
		}
	}
}

// protocolOptionsOf decodes a cluster's upstream HTTP protocol options.
func (c *checker) protocolOptionsOf(cl *clusterv3.Cluster, p string) *upstreamhttpv3.HttpProtocolOptions {
	a, ok := cl.GetTypedExtensionProtocolOptions()[UpstreamHTTPOptionsKey]
	if !ok {
		return nil
	}
	o, _ := c.unpack(a, fmt.Sprintf("%s.typed_extension_protocol_options[%q]", p, UpstreamHTTPOptionsKey)).(*upstreamhttpv3.HttpProtocolOptions)
	return o
}

func (c *checker) isHTTP2(cl *clusterv3.Cluster, p string) bool {
	//lint:ignore SA1019 the deprecated field still selects HTTP/2 (cluster.proto), so the rules must see it
	if cl.GetHttp2ProtocolOptions() != nil {
		return true
	}
	return c.protocolOptionsOf(cl, p).GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

// upstream checks a cluster that routes forward to: the API server.
func (c *checker) upstream(cl *clusterv3.Cluster, p string) {
	o := c.protocolOptionsOf(cl, p)
	op := fmt.Sprintf("%s.typed_extension_protocol_options[%q]", p, UpstreamHTTPOptionsKey)
	switch {
	//lint:ignore SA1019 the deprecated field still selects HTTP/2 (cluster.proto), so it is refused here too
	case cl.GetHttp2ProtocolOptions() != nil:
		c.fs.add(p+".http2_protocol_options", RuleUpstreamHTTP11, "HTTP/2 to the API server breaks SPDY and WebSocket upgrades (exec, attach, port-forward); use HTTP/1.1")
	case o.GetAutoConfig() != nil:
		c.fs.add(op+".auto_config", RuleUpstreamHTTP11, "ALPN would pick HTTP/2 with the API server, which breaks upgrades; use explicit_http_config.http_protocol_options")
	case o.GetUseDownstreamProtocolConfig() != nil:
		c.fs.add(op+".use_downstream_protocol_config", RuleUpstreamHTTP11, "kubectl speaks HTTP/2 to Envoy, so the upstream would too; use explicit_http_config.http_protocol_options")
	case o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil || o.GetExplicitHttpConfig().GetHttp3ProtocolOptions() != nil:
		c.fs.add(op+".explicit_http_config", RuleUpstreamHTTP11, "HTTP/2 or HTTP/3 to the API server breaks SPDY and WebSocket upgrades; use http_protocol_options (HTTP/1.1)")
	}

	c.upstreamIdle(cl, o, op)

	if len(cl.GetTransportSocketMatches()) > 0 {
		c.fs.add(p+".transport_socket_matches", RuleUpstreamTLS, "transport socket matches can pick a plain-text socket per endpoint; use one transport_socket")
	}
	ts := cl.GetTransportSocket()
	if typeName(ts.GetTypedConfig()) != "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
		c.fs.add(p+".transport_socket", RuleUpstreamTLS, "the API server must be reached over TLS (UpstreamTlsContext): the agent token travels in Authorization")
		return
	}
	tp := p + ".transport_socket.typed_config"
	t, ok := c.unpack(ts.GetTypedConfig(), tp).(*tlsv3.UpstreamTlsContext)
	if !ok {
		return
	}
	ctx := t.GetCommonTlsContext()
	vc := ctx.GetValidationContext()
	if cvc := ctx.GetCombinedValidationContext(); cvc != nil {
		vc = cvc.GetDefaultValidationContext()
	}
	hasCA := vc.GetTrustedCa() != nil || ctx.GetValidationContextSdsSecretConfig() != nil ||
		ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig() != nil
	if !hasCA {
		c.fs.add(tp+".common_tls_context.validation_context", RuleUpstreamTLS, "no trusted_ca: Envoy would not verify the API server, and would hand the agent token to whoever answers; use the cluster CA")
	}
	if vc.GetTrustChainVerification() == tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED {
		c.fs.add(tp+".common_tls_context.validation_context.trust_chain_verification", RuleUpstreamTLS, "ACCEPT_UNTRUSTED disables certificate verification")
	}
	if len(vc.GetMatchTypedSubjectAltNames()) == 0 && !o.GetUpstreamHttpProtocolOptions().GetAutoSanValidation() && hasCA {
		c.fs.add(tp+".common_tls_context.validation_context.match_typed_subject_alt_names", RuleUpstreamTLS, "the API server's name is not checked: any certificate the cluster CA signed (a kubelet's, say) would do; match its DNS or IP SAN")
	}
	if t.GetSni() == "" && (cl.GetType() == clusterv3.Cluster_STRICT_DNS || cl.GetType() == clusterv3.Cluster_LOGICAL_DNS) {
		c.fs.add(tp+".sni", RuleUpstreamTLS, "set sni to the API server's DNS name")
	}
	c.noClientCert(ctx, tp+".common_tls_context")
}

// upstreamIdle requires the API server cluster to close idle pooled connections
// before kube-apiserver does (UpstreamIdleTimeout says why). The deprecated
// Cluster.common_http_protocol_options still applies when the typed options do
// not set it (cluster.proto), so it is read too.
func (c *checker) upstreamIdle(cl *clusterv3.Cluster, o *upstreamhttpv3.HttpProtocolOptions, op string) {
	fp := op + ".common_http_protocol_options.idle_timeout"
	d := o.GetCommonHttpProtocolOptions().GetIdleTimeout()
	//lint:ignore SA1019 the deprecated field still sets the upstream idle timeout (cluster.proto), so the rule must see it
	if old := cl.GetCommonHttpProtocolOptions(); d == nil && old.GetIdleTimeout() != nil {
		d = old.GetIdleTimeout()
		fp = strings.TrimSuffix(op, fmt.Sprintf(".typed_extension_protocol_options[%q]", UpstreamHTTPOptionsKey)) + ".common_http_protocol_options.idle_timeout"
	}
	switch {
	case d == nil:
		c.fs.add(fp, RuleUpstreamIdleTimeout, "unset: Envoy keeps idle API server connections for its default of 1h, kube-apiserver closes them after %v, and a request sent on one it has just closed fails with a 503; set it to %v", APIServerServerIdleTimeout, UpstreamIdleTimeout)
	case d.AsDuration() == 0:
		c.fs.add(fp, RuleUpstreamIdleTimeout, "0 disables it: kube-apiserver closes idle connections after %v, and a request Envoy sends on one it has just closed fails with a 503; set it to %v", APIServerServerIdleTimeout, UpstreamIdleTimeout)
	case d.AsDuration() >= APIServerServerIdleTimeout:
		c.fs.add(fp, RuleUpstreamIdleTimeout, "%v is not below kube-apiserver's idle timeout of %v: Envoy would reuse connections the server is closing, and those requests fail with a 503; set it to %v", d.AsDuration(), APIServerServerIdleTimeout, UpstreamIdleTimeout)
	}
}

// noClientCert refuses a client certificate towards the API server. If it were a
// front-proxy (--requestheader-client-ca-file) certificate, the API server would
// take the user from X-Remote-User and X-Remote-Group, which the client sends;
// with any other certificate the connection authenticates as that certificate's
// user. The agent authenticates with its token alone.
func (c *checker) noClientCert(ctx *tlsv3.CommonTlsContext, p string) {
	const why = "the API server must see the agent's token alone: a front-proxy (requestheader) client certificate would make it trust the X-Remote-User and X-Remote-Group headers the client sends, so a client could choose its identity; remove it"
	for _, f := range []struct {
		field string
		set   bool
	}{
		{"tls_certificates", len(ctx.GetTlsCertificates()) > 0},
		{"tls_certificate_sds_secret_configs", len(ctx.GetTlsCertificateSdsSecretConfigs()) > 0},
		{"tls_certificate_provider_instance", ctx.GetTlsCertificateProviderInstance() != nil},
		//lint:ignore SA1019 deprecated and "not-implemented-hide" (tls.proto), but a config may still carry it: refused all the same
		{"tls_certificate_certificate_provider", ctx.GetTlsCertificateCertificateProvider() != nil},
		//lint:ignore SA1019 deprecated and "not-implemented-hide" (tls.proto), but a config may still carry it: refused all the same
		{"tls_certificate_certificate_provider_instance", ctx.GetTlsCertificateCertificateProviderInstance() != nil},
		{"custom_tls_certificate_selector", ctx.GetCustomTlsCertificateSelector() != nil},
	} {
		if f.set {
			c.fs.add(p+"."+f.field, RuleUpstreamNoClientCert, "a client certificate: %s", why)
		}
	}
}
