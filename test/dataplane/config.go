package dataplane

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	downstreamconnsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Envoy's defaults for fields the bootstrap may leave unset. Each names where it
// is documented.
const (
	// cluster.proto connect_timeout: "The default is 5s."
	defaultConnectTimeout = 5 * time.Second
	// circuit_breaker.proto Thresholds: max_connections, max_pending_requests and
	// max_requests all default to 1024.
	defaultCircuitBreaker = 1024
	// ext_authz: FilterConfig reads grpc_service.timeout with a 200 ms default
	// (ext_authz.cc, PROTOBUF_GET_MS_OR_DEFAULT(..., timeout, 200)).
	defaultExtAuthzTimeout = 200 * time.Millisecond
	// ext_proc.proto message_timeout: "If not configured, default is 200 milliseconds."
	defaultMessageTimeout = 200 * time.Millisecond
	// route_components.proto RouteAction.timeout: "If not specified, the default is 15s."
	defaultRouteTimeout = 15 * time.Second
	// http_connection_manager.proto stream_idle_timeout: "If not specified, this
	// defaults to 5 minutes."
	defaultStreamIdleTimeout = 5 * time.Minute
	// protocol.proto HttpProtocolOptions.idle_timeout: "If not specified, this
	// defaults to 1 hour. To disable idle timeouts explicitly set this to 0."
	defaultUpstreamIdleTimeout = time.Hour
	// http_connection_manager.proto max_request_headers_kb: default 60 KiB;
	// protocol.proto HttpProtocolOptions.max_headers_count: default 100.
	defaultMaxRequestHeadersKB = 60
	defaultMaxHeadersCount     = 100
	// config_source.proto initial_fetch_timeout: "If not set, defaults to 15s."
	defaultInitialFetchTimeout = 15 * time.Second
)

// netAddr is a dialable or listenable address: tcp host:port or a unix socket.
type netAddr struct {
	network string // "tcp" or "unix"
	address string
}

func (a netAddr) String() string {
	if a.network == "unix" {
		return "unix://" + a.address
	}
	return a.address
}

// config is everything the stand-in takes from the bootstrap.
type config struct {
	node     *corev3.Node
	listener listenerConfig
	hcm      hcmConfig
	clusters map[string]*clusterConfig
	admin    *netAddr
	// maxDownstreamConns is the overload manager's
	// global_downstream_max_connections; 0 means no limit.
	maxDownstreamConns int64
	// ads is dynamic_resources.ads_config's cluster, "" when ADS is not configured.
	adsCluster string
}

type listenerConfig struct {
	name  string
	addr  netAddr
	certs []tls.Certificate
	alpn  []string
	minV  uint16
	maxV  uint16
	// handshakeTimeout is transport_socket_connect_timeout (0: none).
	handshakeTimeout time.Duration
}

type hcmConfig struct {
	codec             hcmv3.HttpConnectionManager_CodecType
	routes            []virtualHost
	filters           []filterConfig
	upgrades          map[string]bool // lower-case upgrade type → enabled
	streamIdleTimeout time.Duration   // 0: disabled
	maxHeadersKB      int
	maxHeadersCount   int
	underscores       corev3.HttpProtocolOptions_HeadersWithUnderscoresAction
	normalizePath     bool
	mergeSlashes      bool
	escapedSlashes    hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
	accessLog         bool
	// accessLogFormat is the parsed format of the stdout logger (hardening.go).
	accessLogFormat []logToken
	// Slow and greedy clients (hardening.go).
	requestHeadersTimeout time.Duration // 0: disabled
	h2                    http2Limits
	localReply            []responseMapper // local_reply_config mappers
	// earlyRemoves are the headers early_header_mutation_extensions remove.
	earlyRemoves []string
}

type virtualHost struct {
	name    string
	domains []string
	routes  []route
}

type route struct {
	name string
	// match is how the route matches :path (RouteMatch path_specifier): prefix
	// compares the whole :path, path and path_separated_prefix the path without
	// query and fragment.
	match         routeMatch
	prefix        string // the prefix, path or path_separated_prefix value
	prefixRewrite string
	cluster       string
	// clusterHeader, when set, names the request header the cluster comes from
	// (RouteAction.cluster_header); notFound is cluster_not_found_response_code.
	clusterHeader string
	notFound      int
	// direct is set for a direct_response route: the router answers it itself.
	direct *localReply
	// redirect is set for a redirect route: the router answers it with a
	// Location (browser.go).
	redirect *redirectConfig
	// timeout is RouteAction.timeout (0: none; router.go).
	timeout time.Duration
	// disabled names the HTTP filters this route turns off (typed_per_filter_config
	// ExtAuthzPerRoute / ExtProcPerRoute disabled), by filter name → "ext_authz" or
	// "ext_proc" (browser.go).
	disabled map[string]string
	// requestRemoves and responseRemoves are the route's request_headers_to_remove
	// and response_headers_to_remove, lower case.
	requestRemoves, responseRemoves []string
}

type routeMatch int

const (
	matchPrefix routeMatch = iota
	matchPath
	matchPathSeparatedPrefix
)

// filterConfig is one HTTP filter: exactly one of the fields is set.
type filterConfig struct {
	name           string
	headerMutation *headerMutationConfig
	extAuthz       *extAuthzConfig
	extProc        *extProcConfig
	credential     *credentialConfig
	rateLimit      *rateLimitConfig
	router         bool
}

type extAuthzConfig struct {
	cluster           string
	timeout           time.Duration
	failureModeAllow  bool
	statusOnError     int
	encodeRawHeaders  bool
	validateMutations bool
	rules             *mutationChecker // nil: no decoder_header_mutation_rules
	ingestMetadata    bool
	clearRouteCache   bool
}

type extProcConfig struct {
	cluster          string
	messageTimeout   time.Duration
	failureModeAllow bool
	statusOnError    int
	sendReqHeaders   bool
	rules            *mutationChecker // never nil: unset rules have defaults
	forwardUntyped   []string
	forwardTyped     []string
	routeCacheAction extprocv3.ExternalProcessor_RouteCacheAction
}

type credentialConfig struct {
	overwrite    bool
	allowWithout bool
	header       string
	prefix       string
	secretName   string
	sdsCluster   string // the SDS server's cluster (ADS: the ADS cluster)
	// sdsPath and sdsWatchedDir: file-based SDS (path_config_source) instead of
	// a cluster.
	sdsPath, sdsWatchedDir string
	ads                    bool
	initialFetchTimeout    time.Duration // 0: wait forever
}

type clusterConfig struct {
	name           string
	endpoint       netAddr
	connectTimeout time.Duration
	http2          bool
	tls            *upstreamTLS
	maxRequests    int
	maxConnections int
	// idleTimeout closes a pooled upstream connection that has carried no request
	// for that long (common_http_protocol_options.idle_timeout); 0: never.
	idleTimeout time.Duration
	// upstreamCredential is the credential_injector of the cluster's upstream HTTP
	// filters (HttpProtocolOptions.http_filters, ended by upstream_codec); nil
	// when the cluster has none.
	upstreamCredential *credentialConfig
}

type upstreamTLS struct {
	sni   string
	roots *x509.CertPool // nil: the peer is not verified (no validation_context)
	sans  []sanMatcher
	alpn  []string
	minV  uint16
	maxV  uint16
}

type sanMatcher struct {
	ip    bool
	exact string
}

// parseBootstrap reads every emulated setting and refuses what is not emulated.
func parseBootstrap(b *bootstrapv3.Bootstrap) (*config, error) {
	if u := unsupported(b); len(u) > 0 {
		return nil, fmt.Errorf("the bootstrap uses Envoy features the test data plane does not emulate (it refuses rather than ignores them):\n%s", joinLines(u))
	}
	p := &parser{}
	c := p.bootstrap(b)
	if len(p.errs) > 0 {
		return nil, fmt.Errorf("the bootstrap cannot be emulated:\n%s", joinLines(p.errs))
	}
	return c, nil
}

type parser struct{ errs []string }

func (p *parser) fail(path, format string, args ...any) {
	p.errs = append(p.errs, path+": "+fmt.Sprintf(format, args...))
}

func (p *parser) bootstrap(b *bootstrapv3.Bootstrap) *config {
	// The node identifies this data plane to the SDS server (Envoy sends it on the
	// first DiscoveryRequest); Node.cluster only matters to Envoy's stats.
	c := &config{node: b.GetNode(), clusters: map[string]*clusterConfig{}}
	if a := b.GetAdmin().GetAddress(); a != nil {
		addr := p.address(a, "$.admin.address")
		c.admin = &addr
	}
	for i, rm := range b.GetOverloadManager().GetResourceMonitors() {
		path := fmt.Sprintf("$.overload_manager.resource_monitors[%d]", i)
		m, ok := p.unpack(rm.GetTypedConfig(), path+".typed_config").(*downstreamconnsv3.DownstreamConnectionsConfig)
		if !ok {
			continue
		}
		c.maxDownstreamConns = m.GetMaxActiveDownstreamConnections()
	}
	if ads := b.GetDynamicResources().GetAdsConfig(); ads != nil {
		c.adsCluster = p.apiConfigSource(ads, "$.dynamic_resources.ads_config")
	}
	for i, cl := range b.GetStaticResources().GetClusters() {
		path := fmt.Sprintf("$.static_resources.clusters[%d]", i)
		cc := p.cluster(cl, path)
		if _, dup := c.clusters[cc.name]; dup {
			p.fail(path+".name", "cluster %q is defined twice", cc.name)
		}
		c.clusters[cc.name] = cc
	}
	listeners := b.GetStaticResources().GetListeners()
	if len(listeners) != 1 {
		p.fail("$.static_resources.listeners", "the test data plane emulates exactly one listener, found %d", len(listeners))
		return c
	}
	c.listener, c.hcm = p.listener(listeners[0], "$.static_resources.listeners[0]")
	p.references(c)
	return c
}

// references checks that every cluster a filter or route names exists, as Envoy
// does at start (it refuses a bootstrap naming an unknown cluster).
func (p *parser) references(c *config) {
	ref := func(name, what string) {
		if _, ok := c.clusters[name]; !ok && name != "" {
			p.fail(what, "cluster %q is not defined in static_resources.clusters", name)
		}
	}
	for _, vh := range c.hcm.routes {
		for _, r := range vh.routes {
			ref(r.cluster, "route "+r.name)
		}
	}
	for _, f := range c.hcm.filters {
		switch {
		case f.extAuthz != nil:
			ref(f.extAuthz.cluster, f.name)
		case f.extProc != nil:
			ref(f.extProc.cluster, f.name)
		case f.credential != nil:
			ref(f.credential.sdsCluster, f.name)
		}
	}
	ref(c.adsCluster, "dynamic_resources.ads_config")
}

func (p *parser) unpack(a *anypb.Any, path string) proto.Message {
	if a == nil {
		p.fail(path, "missing typed_config")
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		p.fail(path, "cannot unpack %s: %v", a.GetTypeUrl(), err)
		return nil
	}
	return m
}

func (p *parser) address(a *corev3.Address, path string) netAddr {
	if pipe := a.GetPipe(); pipe != nil {
		return netAddr{network: "unix", address: pipe.GetPath()}
	}
	sa := a.GetSocketAddress()
	if sa == nil {
		p.fail(path, "only socket_address and pipe addresses are emulated")
		return netAddr{}
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		p.fail(path+".protocol", "only TCP is emulated")
	}
	return netAddr{network: "tcp", address: net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))}
}

func duration(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}

// httpStatus is toErrorCode in ext_authz.cc and ext_proc.cc: an unset or unknown
// code becomes def.
func httpStatus(s *typev3.HttpStatus, def int) int {
	code := int(s.GetCode())
	if code == 0 || typev3.StatusCode_name[int32(code)] == "" {
		return def
	}
	return code
}

func (p *parser) listener(l *listenerv3.Listener, path string) (listenerConfig, hcmConfig) {
	lc := listenerConfig{name: l.GetName(), addr: p.address(l.GetAddress(), path+".address")}
	if lc.addr.network != "tcp" {
		p.fail(path+".address", "kubectl reaches the listener over TCP; a unix-socket listener is not emulated")
	}
	if len(l.GetFilterChains()) != 1 {
		p.fail(path+".filter_chains", "the test data plane emulates exactly one filter chain, found %d", len(l.GetFilterChains()))
		return lc, hcmConfig{}
	}
	fc := l.GetFilterChains()[0]
	fcPath := path + ".filter_chains[0]"
	p.listenerLimits(l, fc, &lc, path)
	ts := fc.GetTransportSocket()
	if ts == nil {
		p.fail(fcPath+".transport_socket", "a plain-text listener is not emulated (kubegate's listener terminates TLS)")
	} else if d, ok := p.unpack(ts.GetTypedConfig(), fcPath+".transport_socket.typed_config").(*tlsv3.DownstreamTlsContext); ok {
		p.downstreamTLS(d, &lc, fcPath+".transport_socket.typed_config")
	} else if ts.GetTypedConfig() != nil {
		p.fail(fcPath+".transport_socket", "only DownstreamTlsContext is emulated")
	}
	if len(fc.GetFilters()) != 1 {
		p.fail(fcPath+".filters", "the test data plane emulates exactly one network filter, an http_connection_manager; found %d", len(fc.GetFilters()))
		return lc, hcmConfig{}
	}
	hcm, ok := p.unpack(fc.GetFilters()[0].GetTypedConfig(), fcPath+".filters[0].typed_config").(*hcmv3.HttpConnectionManager)
	if !ok {
		p.fail(fcPath+".filters[0]", "only envoy.filters.network.http_connection_manager is emulated")
		return lc, hcmConfig{}
	}
	return lc, p.hcm(hcm, fcPath+".filters[0].typed_config")
}

func (p *parser) downstreamTLS(d *tlsv3.DownstreamTlsContext, lc *listenerConfig, path string) {
	ctx := d.GetCommonTlsContext()
	if ctx.GetValidationContext() != nil {
		p.fail(path+".common_tls_context.validation_context", "client certificate validation is not emulated")
	}
	for i, tc := range ctx.GetTlsCertificates() {
		cp := fmt.Sprintf("%s.common_tls_context.tls_certificates[%d]", path, i)
		chain, err1 := readDataSource(tc.GetCertificateChain())
		key, err2 := readDataSource(tc.GetPrivateKey())
		if err := errors.Join(err1, err2); err != nil {
			p.fail(cp, "%v", err)
			continue
		}
		cert, err := tls.X509KeyPair(chain, key)
		if err != nil {
			p.fail(cp, "the certificate and key do not load: %v", err)
			continue
		}
		lc.certs = append(lc.certs, cert)
	}
	if len(lc.certs) == 0 {
		p.fail(path, "no server certificate in tls_certificates")
	}
	lc.alpn = ctx.GetAlpnProtocols()
	// tls.proto TlsParameters: a server defaults to TLS 1.2 .. TLS 1.3.
	lc.minV, lc.maxV = p.tlsVersions(ctx.GetTlsParams(), path+".common_tls_context.tls_params")
}

func (p *parser) tlsVersions(tp *tlsv3.TlsParameters, path string) (uint16, uint16) {
	versions := map[tlsv3.TlsParameters_TlsProtocol]uint16{
		tlsv3.TlsParameters_TLSv1_0: tls.VersionTLS10, tlsv3.TlsParameters_TLSv1_1: tls.VersionTLS11,
		tlsv3.TlsParameters_TLSv1_2: tls.VersionTLS12, tlsv3.TlsParameters_TLSv1_3: tls.VersionTLS13,
	}
	minV, maxV := uint16(tls.VersionTLS12), uint16(tls.VersionTLS13)
	if v := tp.GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		minV = versions[v]
	}
	if v := tp.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		maxV = versions[v]
	}
	if minV > maxV {
		p.fail(path, "the minimum TLS version is above the maximum")
	}
	return minV, maxV
}

// readDataSource reads a DataSource the way Envoy does at configuration time.
func readDataSource(d *corev3.DataSource) ([]byte, error) {
	switch s := d.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", s.Filename, err)
		}
		return b, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	}
	return nil, errors.New("the data source is empty or of a kind the test data plane does not read (filename, inline_string and inline_bytes are emulated)")
}

func (p *parser) hcm(h *hcmv3.HttpConnectionManager, path string) hcmConfig {
	hc := hcmConfig{
		codec:             h.GetCodecType(),
		upgrades:          map[string]bool{},
		streamIdleTimeout: duration(h.GetStreamIdleTimeout(), defaultStreamIdleTimeout),
		maxHeadersKB:      defaultMaxRequestHeadersKB,
		maxHeadersCount:   defaultMaxHeadersCount,
		underscores:       h.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction(),
		normalizePath:     h.GetNormalizePath().GetValue(),
		mergeSlashes:      h.GetMergeSlashes(),
		escapedSlashes:    h.GetPathWithEscapedSlashesAction(),
		accessLog:         len(h.GetAccessLog()) > 0,
	}
	// stat_prefix only names Envoy's statistics, which the stand-in does not keep.
	if hc.codec == hcmv3.HttpConnectionManager_HTTP3 {
		p.fail(path+".codec_type", "HTTP/3 is not emulated")
	}
	if v := h.GetMaxRequestHeadersKb(); v != nil {
		hc.maxHeadersKB = int(v.GetValue())
	}
	if v := h.GetCommonHttpProtocolOptions().GetMaxHeadersCount(); v != nil {
		hc.maxHeadersCount = int(v.GetValue())
	}
	if h.GetCommonHttpProtocolOptions().GetIdleTimeout() != nil {
		// Emulated for upstream clusters only (router.go); downstream connections are
		// Go's http.Server's.
		p.fail(path+".common_http_protocol_options.idle_timeout", "the downstream connection idle timeout is not emulated")
	}
	if d := h.GetRequestTimeout(); d != nil && d.AsDuration() != 0 {
		p.fail(path+".request_timeout", "a non-zero request_timeout is not emulated")
	}
	if !h.GetUseRemoteAddress().GetValue() {
		// Without it Envoy takes the client address from X-Forwarded-For; the stand-in
		// only emulates an edge proxy that trusts the connection's peer.
		p.fail(path+".use_remote_address", "only use_remote_address: true is emulated")
	}
	if hc.escapedSlashes == hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT {
		p.fail(path+".path_with_escaped_slashes_action", "UNESCAPE_AND_REDIRECT is not emulated")
	}
	for i, al := range h.GetAccessLog() {
		l, ok := p.unpack(al.GetTypedConfig(), fmt.Sprintf("%s.access_log[%d].typed_config", path, i)).(*streamv3.StdoutAccessLog)
		if !ok {
			p.fail(fmt.Sprintf("%s.access_log[%d]", path, i), "only the stdout access logger is emulated")
			continue
		}
		if i > 0 {
			p.fail(fmt.Sprintf("%s.access_log[%d]", path, i), "one access log is emulated")
		}
		hc.accessLogFormat = p.accessLogFormat(l, fmt.Sprintf("%s.access_log[%d].typed_config", path, i))
	}
	for i, e := range h.GetEarlyHeaderMutationExtensions() {
		ep := fmt.Sprintf("%s.early_header_mutation_extensions[%d]", path, i)
		m, ok := p.unpack(e.GetTypedConfig(), ep+".typed_config").(*earlymutationv3.HeaderMutation)
		if !ok {
			p.fail(ep, "only the header_mutation early header mutation is emulated")
			continue
		}
		for j, mu := range m.GetMutations() {
			if mu.GetRemove() == "" {
				p.fail(fmt.Sprintf("%s.typed_config.mutations[%d]", ep, j), "only remove is emulated")
				continue
			}
			hc.earlyRemoves = append(hc.earlyRemoves, strings.ToLower(mu.GetRemove()))
		}
	}
	p.hcmLimits(h, &hc, path)
	hc.localReply = p.localReplyMappers(h.GetLocalReplyConfig(), path+".local_reply_config")
	for i, u := range h.GetUpgradeConfigs() {
		if len(u.GetFilters()) > 0 {
			p.fail(fmt.Sprintf("%s.upgrade_configs[%d].filters", path, i), "upgrade-specific filter chains are not emulated")
		}
		// http_connection_manager.proto UpgradeConfig.enabled: "Determines if upgrades
		// are enabled or disabled by default. Defaults to true." Types compare
		// case-insensitively (ConnectionManagerImpl upgrade map).
		hc.upgrades[strings.ToLower(u.GetUpgradeType())] = u.GetEnabled() == nil || u.GetEnabled().GetValue()
	}
	rc := h.GetRouteConfig()
	if rc == nil {
		p.fail(path+".route_config", "an inline route_config is required (RDS and scoped routes are not emulated)")
	}
	for i, vh := range rc.GetVirtualHosts() {
		hc.routes = append(hc.routes, p.virtualHost(vh, fmt.Sprintf("%s.route_config.virtual_hosts[%d]", path, i)))
	}
	for i, f := range h.GetHttpFilters() {
		hc.filters = append(hc.filters, p.httpFilter(f, fmt.Sprintf("%s.http_filters[%d]", path, i)))
	}
	if n := len(hc.filters); n == 0 || !hc.filters[n-1].router {
		p.fail(path+".http_filters", "the last HTTP filter must be the router (Envoy refuses a chain without a terminal filter)")
	}
	p.perFilterNames(&hc, path)
	return hc
}

func (p *parser) virtualHost(vh *routev3.VirtualHost, path string) virtualHost {
	v := virtualHost{name: vh.GetName(), domains: vh.GetDomains()}
	for i, r := range vh.GetRoutes() {
		rp := fmt.Sprintf("%s.routes[%d]", path, i)
		var match routeMatch
		var value string
		switch ps := r.GetMatch().GetPathSpecifier().(type) {
		case *routev3.RouteMatch_Prefix:
			match, value = matchPrefix, ps.Prefix
		case *routev3.RouteMatch_Path:
			match, value = matchPath, ps.Path
		case *routev3.RouteMatch_PathSeparatedPrefix:
			match, value = matchPathSeparatedPrefix, ps.PathSeparatedPrefix
		default:
			p.fail(rp+".match", "only prefix, path and path_separated_prefix matches are emulated")
			continue
		}
		if cs := r.GetMatch().GetCaseSensitive(); cs != nil && !cs.GetValue() {
			p.fail(rp+".match.case_sensitive", "case-insensitive matching is not emulated")
		}
		rt := route{name: r.GetName(), match: match, prefix: value,
			disabled:        p.perFilterDisabled(r.GetTypedPerFilterConfig(), rp+".typed_per_filter_config"),
			requestRemoves:  lowerAll(r.GetRequestHeadersToRemove()),
			responseRemoves: lowerAll(r.GetResponseHeadersToRemove()),
		}
		if d := r.GetDirectResponse(); d != nil {
			// route_components.proto DirectResponseAction: the router answers with
			// status and body (router.cc sendLocalReply via the route's direct
			// response entry); only an inline body is emulated.
			body := ""
			if b := d.GetBody(); b != nil {
				inline, ok := b.GetSpecifier().(*corev3.DataSource_InlineString)
				if !ok {
					p.fail(rp+".direct_response.body", "only inline_string bodies are emulated")
					continue
				}
				body = inline.InlineString
			}
			if s := d.GetStatus(); s == http.StatusCreated || s/100 == 3 {
				// The router adds a Location of newUri to a 201 or 3xx direct
				// response, which without a redirect action is the request's own URL.
				p.fail(rp+".direct_response.status", "a 201 or 3xx direct response (Envoy adds a Location) is not emulated; use redirect")
			}
			rt.direct = &localReply{status: int(d.GetStatus()), body: body, details: "direct_response"}
			v.routes = append(v.routes, rt)
			continue
		}
		if rd := r.GetRedirect(); rd != nil {
			rt.redirect = p.redirect(rd, rp+".redirect")
			v.routes = append(v.routes, rt)
			continue
		}
		a := r.GetRoute()
		if a == nil {
			p.fail(rp, "only forwarding (route:), redirect and direct_response routes are emulated")
			continue
		}
		if a.GetCluster() == "" && a.GetClusterHeader() == "" {
			p.fail(rp+".route", "only a named cluster or cluster_header is emulated")
		}
		if match == matchPath && a.GetPrefixRewrite() != "" {
			p.fail(rp+".route.prefix_rewrite", "prefix_rewrite on a path match is not emulated")
		}
		// route_components.proto RouteAction.timeout: "This spans between the point
		// at which the entire downstream request (i.e. end-of-stream) has been
		// processed and when the upstream response has been completely processed. A
		// value of 0 will disable the route's timeout"; unset means 15s (router.go).
		rt.timeout = duration(a.GetTimeout(), defaultRouteTimeout)
		// cluster_not_found_response_code: "The default response code is 503
		// Service Unavailable" (route_components.proto); the enum's values are
		// SERVICE_UNAVAILABLE, NOT_FOUND and INTERNAL_SERVER_ERROR.
		rt.notFound = map[routev3.RouteAction_ClusterNotFoundResponseCode]int{
			routev3.RouteAction_SERVICE_UNAVAILABLE:   http.StatusServiceUnavailable,
			routev3.RouteAction_NOT_FOUND:             http.StatusNotFound,
			routev3.RouteAction_INTERNAL_SERVER_ERROR: http.StatusInternalServerError,
		}[a.GetClusterNotFoundResponseCode()]
		rt.prefixRewrite = a.GetPrefixRewrite()
		rt.cluster = a.GetCluster()
		rt.clusterHeader = strings.ToLower(a.GetClusterHeader())
		v.routes = append(v.routes, rt)
	}
	return v
}

func (p *parser) httpFilter(f *hcmv3.HttpFilter, path string) filterConfig {
	fc := filterConfig{name: f.GetName()}
	switch m := p.unpack(f.GetTypedConfig(), path+".typed_config").(type) {
	case *extauthzv3.ExtAuthz:
		fc.extAuthz = p.extAuthz(m, path+".typed_config")
	case *extprocv3.ExternalProcessor:
		fc.extProc = p.extProc(m, path+".typed_config")
	case *credinjectorv3.CredentialInjector:
		fc.credential = p.credential(m, path+".typed_config")
	case *localratelimitv3.LocalRateLimit:
		fc.rateLimit = p.rateLimit(m, path+".typed_config")
	case *routerv3.Router:
		fc.router = true
	case *headermutationv3.HeaderMutation:
		fc.headerMutation = p.headerMutation(m, path+".typed_config")
	case nil:
	default:
		p.fail(path, "HTTP filter %s is not emulated", m.ProtoReflect().Descriptor().FullName())
	}
	return fc
}

func (p *parser) grpcCluster(g *corev3.GrpcService, path string) string {
	if g.GetEnvoyGrpc() == nil {
		p.fail(path, "only grpc_service.envoy_grpc (a static cluster) is emulated")
		return ""
	}
	return g.GetEnvoyGrpc().GetClusterName()
}

func (p *parser) extAuthz(a *extauthzv3.ExtAuthz, path string) *extAuthzConfig {
	if a.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		p.fail(path+".transport_api_version", "only V3 is emulated")
	}
	c := &extAuthzConfig{
		cluster:          p.grpcCluster(a.GetGrpcService(), path+".grpc_service"),
		timeout:          duration(a.GetGrpcService().GetTimeout(), defaultExtAuthzTimeout),
		failureModeAllow: a.GetFailureModeAllow(),
		// ext_authz.proto status_on_error: "Defaults to 403 Forbidden."
		statusOnError:     httpStatus(a.GetStatusOnError(), 403),
		encodeRawHeaders:  a.GetEncodeRawHeaders(),
		validateMutations: a.GetValidateMutations(),
		// ext_authz.proto enable_dynamic_metadata_ingestion: defaults to true.
		ingestMetadata: a.GetEnableDynamicMetadataIngestion() == nil || a.GetEnableDynamicMetadataIngestion().GetValue(),
		// ext_authz.proto clear_route_cache, "Defaults to false".
		clearRouteCache: a.GetClearRouteCache(),
	}
	if r := a.GetDecoderHeaderMutationRules(); r != nil {
		rules, err := newMutationChecker(r)
		if err != nil {
			p.fail(path+".decoder_header_mutation_rules", "%v", err)
		}
		c.rules = rules
	}
	return c
}

func (p *parser) extProc(e *extprocv3.ExternalProcessor, path string) *extProcConfig {
	c := &extProcConfig{
		cluster:          p.grpcCluster(e.GetGrpcService(), path+".grpc_service"),
		messageTimeout:   duration(e.GetMessageTimeout(), defaultMessageTimeout),
		failureModeAllow: e.GetFailureModeAllow(),
		// ext_proc.proto status_on_error: "The default status is HTTP 500 Internal Server Error."
		statusOnError:    httpStatus(e.GetStatusOnError(), 500),
		forwardUntyped:   e.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(),
		forwardTyped:     e.GetMetadataOptions().GetForwardingNamespaces().GetTyped(),
		routeCacheAction: e.GetRouteCacheAction(),
	}
	if e.GetDisableClearRouteCache() {
		p.fail(path+".disable_clear_route_cache", "disable_clear_route_cache is not emulated; use route_cache_action RETAIN (equivalent, ext_proc.proto)")
	}
	if e.GetGrpcService().GetTimeout() != nil {
		p.fail(path+".grpc_service.timeout", "ext_proc bounds each message with message_timeout; a stream timeout is not emulated")
	}
	rules, err := newMutationChecker(e.GetMutationRules())
	if err != nil {
		p.fail(path+".mutation_rules", "%v", err)
	}
	c.rules = rules
	pm := e.GetProcessingMode()
	// processing_mode.proto: request headers DEFAULT means SEND; response headers
	// DEFAULT means SEND; trailers DEFAULT means SKIP; body NONE is the zero value.
	switch pm.GetRequestHeaderMode() {
	case extprocv3.ProcessingMode_DEFAULT, extprocv3.ProcessingMode_SEND:
		c.sendReqHeaders = true
	case extprocv3.ProcessingMode_SKIP:
	}
	if pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SKIP {
		p.fail(path+".processing_mode.response_header_mode", "%v (DEFAULT means SEND): response processing is not emulated; use SKIP", pm.GetResponseHeaderMode())
	}
	for name, m := range map[string]extprocv3.ProcessingMode_BodySendMode{"request_body_mode": pm.GetRequestBodyMode(), "response_body_mode": pm.GetResponseBodyMode()} {
		if m != extprocv3.ProcessingMode_NONE {
			p.fail(path+".processing_mode."+name, "%v: body processing is not emulated; use NONE", m)
		}
	}
	for name, m := range map[string]extprocv3.ProcessingMode_HeaderSendMode{"request_trailer_mode": pm.GetRequestTrailerMode(), "response_trailer_mode": pm.GetResponseTrailerMode()} {
		if m == extprocv3.ProcessingMode_SEND {
			p.fail(path+".processing_mode."+name, "SEND: trailer processing is not emulated; use SKIP")
		}
	}
	return c
}

func (p *parser) credential(ci *credinjectorv3.CredentialInjector, path string) *credentialConfig {
	c := &credentialConfig{overwrite: ci.GetOverwrite(), allowWithout: ci.GetAllowRequestWithoutCredential()}
	g, ok := p.unpack(ci.GetCredential().GetTypedConfig(), path+".credential.typed_config").(*genericv3.Generic)
	if !ok {
		p.fail(path+".credential", "only the generic credential (envoy.http.injected_credentials.generic) is emulated")
		return c
	}
	gp := path + ".credential.typed_config"
	// generic.proto header: "If not set, filter will default to: Authorization".
	c.header = strings.ToLower(g.GetHeader())
	if c.header == "" {
		c.header = "authorization"
	}
	c.prefix = g.GetHeaderValuePrefix()
	c.secretName = g.GetCredential().GetName()
	src := g.GetCredential().GetSdsConfig()
	if src == nil {
		p.fail(gp+".credential.sds_config", "a static generic secret is not emulated; serve it over SDS")
		return c
	}
	c.initialFetchTimeout = duration(src.GetInitialFetchTimeout(), defaultInitialFetchTimeout)
	switch {
	case src.GetAds() != nil:
		c.ads = true
		c.sdsCluster = "" // resolved against dynamic_resources.ads_config by Start
	case src.GetApiConfigSource() != nil:
		c.sdsCluster = p.apiConfigSource(src.GetApiConfigSource(), gp+".credential.sds_config.api_config_source")
	case src.GetPathConfigSource() != nil:
		pcs := src.GetPathConfigSource()
		c.sdsPath, c.sdsWatchedDir = pcs.GetPath(), pcs.GetWatchedDirectory().GetPath()
		if c.sdsWatchedDir == "" {
			p.fail(gp+".credential.sds_config.path_config_source.watched_directory", "a path_config_source without watched_directory is not emulated (Envoy then watches the file itself)")
		}
	default:
		p.fail(gp+".credential.sds_config", "only api_config_source (gRPC SDS), ads and path_config_source with watched_directory are emulated")
	}
	if src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
		p.fail(gp+".credential.sds_config.resource_api_version", "only V3 is emulated")
	}
	return c
}

func (p *parser) apiConfigSource(a *corev3.ApiConfigSource, path string) string {
	if a.GetApiType() != corev3.ApiConfigSource_GRPC {
		p.fail(path+".api_type", "%v is not emulated; use GRPC (state of the world)", a.GetApiType())
	}
	if a.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		p.fail(path+".transport_api_version", "only V3 is emulated")
	}
	if len(a.GetGrpcServices()) != 1 {
		p.fail(path+".grpc_services", "exactly one gRPC service is emulated, found %d", len(a.GetGrpcServices()))
		return ""
	}
	return p.grpcCluster(a.GetGrpcServices()[0], path+".grpc_services[0]")
}

func (p *parser) cluster(cl *clusterv3.Cluster, path string) *clusterConfig {
	c := &clusterConfig{
		name:           cl.GetName(),
		connectTimeout: duration(cl.GetConnectTimeout(), defaultConnectTimeout),
		maxRequests:    defaultCircuitBreaker,
		maxConnections: defaultCircuitBreaker,
		idleTimeout:    defaultUpstreamIdleTimeout,
	}
	switch cl.GetType() {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS:
		// STRICT_DNS: the name is resolved at each connection, which is what Envoy's
		// periodic re-resolution amounts to for a single-address name.
	default:
		p.fail(path+".type", "%v is not emulated (STATIC and STRICT_DNS are)", cl.GetType())
	}
	var eps []netAddr
	for i, lle := range cl.GetLoadAssignment().GetEndpoints() {
		for j, lbe := range lle.GetLbEndpoints() {
			eps = append(eps, p.address(lbe.GetEndpoint().GetAddress(), fmt.Sprintf("%s.load_assignment.endpoints[%d].lb_endpoints[%d].endpoint.address", path, i, j)))
		}
	}
	if len(eps) != 1 {
		p.fail(path+".load_assignment", "exactly one endpoint is emulated (load balancing is not), found %d", len(eps))
	} else {
		c.endpoint = eps[0]
	}
	// Active health checks (health_checks) are accepted and not run: with a single
	// endpoint Envoy keeps sending to it even when it fails them, because the
	// cluster is then below the panic threshold and Envoy balances across all hosts
	// (arch_overview_load_balancing_panic_threshold).
	for i, t := range cl.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			p.fail(fmt.Sprintf("%s.circuit_breakers.thresholds[%d].priority", path, i), "only DEFAULT priority is emulated")
			continue
		}
		if v := t.GetMaxRequests(); v != nil {
			c.maxRequests = int(v.GetValue())
		}
		if v := t.GetMaxConnections(); v != nil {
			c.maxConnections = int(v.GetValue())
		}
		// max_pending_requests bounds requests waiting for a connection; the stand-in
		// opens a connection per request instead of queueing, so it has nothing to bound.
	}
	if opts, ok := cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; ok {
		if o, ok := p.unpack(opts, path+".typed_extension_protocol_options").(*upstreamhttpv3.HttpProtocolOptions); ok {
			c.http2 = o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
			if h2 := o.GetExplicitHttpConfig().GetHttp2ProtocolOptions(); h2 != nil && proto.Size(h2) > 0 {
				p.fail(path+".typed_extension_protocol_options", "upstream HTTP/2 settings are not emulated")
			}
			if o.GetExplicitHttpConfig() == nil {
				p.fail(path+".typed_extension_protocol_options", "only explicit_http_config is emulated")
			}
			p.upstreamHTTPOptions(c, o.GetCommonHttpProtocolOptions(), path+".typed_extension_protocol_options.common_http_protocol_options")
			c.upstreamCredential = p.upstreamFilters(o.GetHttpFilters(), path+".typed_extension_protocol_options.http_filters")
			if c.upstreamCredential != nil && c.http2 {
				p.fail(path+".typed_extension_protocol_options.http_filters", "upstream filters of an HTTP/2 (gRPC) cluster are not emulated")
			}
		}
	}
	for k := range cl.GetTypedExtensionProtocolOptions() {
		if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
			p.fail(path+".typed_extension_protocol_options", "%q is not emulated", k)
		}
	}
	if ts := cl.GetTransportSocket(); ts != nil {
		u, ok := p.unpack(ts.GetTypedConfig(), path+".transport_socket.typed_config").(*tlsv3.UpstreamTlsContext)
		if !ok {
			p.fail(path+".transport_socket", "only UpstreamTlsContext is emulated")
		} else {
			c.tls = p.upstreamTLS(u, path+".transport_socket.typed_config")
		}
	}
	return c
}

// upstreamFilters reads a cluster's upstream HTTP filters (HttpProtocolOptions.
// http_filters): "Optional HTTP filters for the upstream HTTP filter chain ...
// applied for all HTTP streams which flow through this cluster"
// (http_protocol_options.proto). UpstreamRequest builds the chain from the
// cluster's filters when it has any (createFilterChain(*parent_.cluster()),
// source/common/router/upstream_request.cc). Emulated: at most one
// credential_injector, then upstream_codec, which must be last.
func (p *parser) upstreamFilters(fs []*hcmv3.HttpFilter, path string) *credentialConfig {
	if len(fs) == 0 {
		return nil
	}
	var cred *credentialConfig
	for i, f := range fs {
		fp := fmt.Sprintf("%s[%d]", path, i)
		if f.GetDisabled() || f.GetIsOptional() || f.GetConfigDiscovery() != nil {
			p.fail(fp, "disabled, optional or ECDS upstream filters are not emulated")
		}
		switch m := p.unpack(f.GetTypedConfig(), fp+".typed_config").(type) {
		case *credinjectorv3.CredentialInjector:
			if cred != nil {
				p.fail(fp, "more than one upstream credential_injector is not emulated")
			}
			cred = p.credential(m, fp+".typed_config")
		case *upstreamcodecv3.UpstreamCodec:
			if i != len(fs)-1 {
				p.fail(fp, "upstream_codec must be the last upstream filter (it sends the request)")
			}
		case nil:
		default:
			p.fail(fp, "upstream HTTP filter %s is not emulated", m.ProtoReflect().Descriptor().FullName())
		}
	}
	if _, ok := p.unpack(fs[len(fs)-1].GetTypedConfig(), path).(*upstreamcodecv3.UpstreamCodec); !ok {
		// Envoy: "non-terminal filter named ... is the last filter in a router
		// upstream http filter chain" (envoyproxy/envoy#26138).
		p.fail(path, "the last upstream filter must be upstream_codec (Envoy refuses a chain without its terminal filter)")
	}
	return cred
}

// headerMutation reads envoy.filters.http.header_mutation: only request header
// removals are emulated (HeaderMutation::decodeHeaders applies request_mutations
// in order, source/extensions/filters/http/header_mutation/header_mutation.cc; a
// remove drops every line of the name).
func (p *parser) headerMutation(m *headermutationv3.HeaderMutation, path string) *headerMutationConfig {
	c := &headerMutationConfig{}
	for i, rm := range m.GetMutations().GetRequestMutations() {
		if rm.GetRemove() == "" {
			p.fail(fmt.Sprintf("%s.mutations.request_mutations[%d]", path, i), "only remove is emulated")
			continue
		}
		c.removes = append(c.removes, strings.ToLower(rm.GetRemove()))
	}
	if len(m.GetMutations().GetResponseMutations()) > 0 || m.GetMutations().GetQueryParameterMutations() != nil ||
		len(m.GetMutations().GetResponseTrailersMutations()) > 0 || len(m.GetMutations().GetRequestTrailersMutations()) > 0 || m.GetMostSpecificHeaderMutationsWins() {
		p.fail(path, "only request header removals are emulated")
	}
	return c
}

// upstreamHTTPOptions reads a cluster's common_http_protocol_options: of them only
// idle_timeout is emulated (router.go closes idle pooled connections after it).
func (p *parser) upstreamHTTPOptions(c *clusterConfig, o *corev3.HttpProtocolOptions, path string) {
	if o == nil {
		return
	}
	if o.GetMaxHeadersCount() != nil {
		p.fail(path+".max_headers_count", "a limit on upstream response headers is not emulated")
	}
	if o.GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_ALLOW {
		p.fail(path+".headers_with_underscores_action", "for upstream responses it is not emulated")
	}
	if d := o.GetIdleTimeout(); d != nil {
		c.idleTimeout = d.AsDuration()
		if c.http2 {
			// An HTTP/2 cluster carries gRPC (router.go refuses it as an upstream), and
			// the stand-in's gRPC channel does not time out idle connections as Envoy's
			// pool would.
			p.fail(path+".idle_timeout", "the idle timeout of an HTTP/2 (gRPC) cluster is not emulated; kubegate sets it only on the API server cluster")
		}
	}
}

func (p *parser) upstreamTLS(u *tlsv3.UpstreamTlsContext, path string) *upstreamTLS {
	ctx := u.GetCommonTlsContext()
	t := &upstreamTLS{sni: u.GetSni(), alpn: ctx.GetAlpnProtocols()}
	t.minV, t.maxV = p.tlsVersions(ctx.GetTlsParams(), path+".common_tls_context.tls_params")
	if len(ctx.GetTlsCertificates()) > 0 {
		p.fail(path+".common_tls_context.tls_certificates", "client certificates to upstreams are not emulated")
	}
	vc := ctx.GetValidationContext()
	if vc == nil {
		return t // Envoy does not verify an upstream without a validation context
	}
	if vc.GetTrustedCa() != nil {
		pem, err := readDataSource(vc.GetTrustedCa())
		if err != nil {
			p.fail(path+".common_tls_context.validation_context.trusted_ca", "%v", err)
		} else {
			t.roots = x509.NewCertPool()
			if !t.roots.AppendCertsFromPEM(pem) {
				p.fail(path+".common_tls_context.validation_context.trusted_ca", "no PEM certificate in the CA bundle")
			}
		}
	}
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		mp := fmt.Sprintf("%s.common_tls_context.validation_context.match_typed_subject_alt_names[%d]", path, i)
		exact := m.GetMatcher().GetExact()
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS:
			t.sans = append(t.sans, sanMatcher{exact: strings.ToLower(exact)})
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			if _, err := netip.ParseAddr(exact); err != nil {
				p.fail(mp, "%q is not an IP address", exact)
			}
			t.sans = append(t.sans, sanMatcher{ip: true, exact: exact})
		default:
			p.fail(mp+".san_type", "%v is not emulated (DNS and IP_ADDRESS are)", m.GetSanType())
		}
		if exact == "" {
			p.fail(mp+".matcher", "only exact matchers are emulated")
		}
	}
	return t
}

// clusterFor returns the cluster a filter names, for use after parseBootstrap
// checked the reference.
func (c *config) clusterFor(name string) *clusterConfig { return c.clusters[name] }

// upgradeAllowed reports whether an upgrade type is enabled in upgrade_configs.
func (h *hcmConfig) upgradeAllowed(t string) bool {
	return h.upgrades[strings.ToLower(t)]
}

// leaf is the listener's first certificate, parsed.
func (l *listenerConfig) leaf() *x509.Certificate {
	if len(l.certs) == 0 || len(l.certs[0].Certificate) == 0 {
		return nil
	}
	c, err := x509.ParseCertificate(l.certs[0].Certificate[0])
	if err != nil {
		return nil
	}
	return c
}

// alpnHas reports whether the listener offers an ALPN protocol.
func (l *listenerConfig) alpnHas(proto string) bool { return slices.Contains(l.alpn, proto) }
