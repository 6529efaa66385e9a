package envoy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"kubegate.dev/kubegate/contract"
)

// Rules against slow and greedy clients, token leaks and trusted clients
// (issue 10 items 3, 4 and 5; issue 18 item 5).
const (
	RuleRequestHeadersTimeout = "request-headers-timeout"
	RuleTLSHandshakeTimeout   = "tls-handshake-timeout"
	RuleConnectTimeout        = "upstream-connect-timeout"
	RuleHTTP2Limits           = "http2-limits"
	RuleConnectionBuffer      = "connection-buffer-limit"
	RuleClientRateLimit       = "client-rate-limit"
	RuleRequestMirror         = "request-mirror"
	RuleAccessLogCredentials  = "access-log-credentials"
	RuleAccessLogQuery        = "access-log-query"
	RuleXFFTrust              = "xff-trust"
)

// hardeningRuleDocs are appended to RuleDocs.
var hardeningRuleDocs = []RuleDoc{
	{RuleRequestHeadersTimeout, fmt.Sprintf("request_headers_timeout set, at most %v (a client sending headers byte by byte holds a connection)", MaxSlowClientTimeout)},
	{RuleTLSHandshakeTimeout, fmt.Sprintf("every filter chain has transport_socket_connect_timeout, at most %v (a client that never finishes the TLS handshake holds a connection)", MaxSlowClientTimeout)},
	{RuleConnectTimeout, "every cluster sets connect_timeout explicitly, at most 10s"},
	{RuleHTTP2Limits, fmt.Sprintf("http2_protocol_options: max_concurrent_streams at most %d, initial_stream_window_size and initial_connection_window_size at most %d bytes", MaxConcurrentStreamsLimit, MaxWindowSize)},
	{RuleConnectionBuffer, "every listener sets per_connection_buffer_limit_bytes, at most 1 MiB"},
	{RuleClientRateLimit, "the first HTTP filter is local_ratelimit, enforced for 100% of requests, one token bucket per client address (remote_address, not per connection), status 429"},
	{RuleRequestMirror, "no request_mirror_policies: a mirror receives the request with the agent token"},
	{RuleAccessLogCredentials, "no access log prints Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Csrf-Token or Impersonate-* (%REQ/%RESP/%TRAILER, text or JSON), and every format can be checked"},
	{RuleAccessLogQuery, "every access log has a format, and it prints no query (%REQ(:PATH)%, %REQ(X-ENVOY-ORIGINAL-PATH)%, %PATH% without NQ, %QUERY_PARAM% of gitlab-agent-id or gitlab-csrf-token): the default format logs the credential query parameters"},
	{RuleXFFTrust, "use_remote_address true, xff_num_trusted_hops 0, no original_ip_detection_extensions: the client address (rate limit, X-Forwarded-For) is the connection's peer, never what the client says"},
}

func init() { RuleDocs = append(RuleDocs, hardeningRuleDocs...) }

var localRateLimitType = (&localratelimitv3.LocalRateLimit{}).ProtoReflect().Descriptor().FullName()

// hardening checks an HCM's settings against slow clients and client trust.
func (c *checker) hardening(h *hcmv3.HttpConnectionManager, p string) {
	switch d := h.GetRequestHeadersTimeout(); {
	case d == nil || d.AsDuration() == 0:
		c.fs.add(p+".request_headers_timeout", RuleRequestHeadersTimeout, "unset or 0 disables it: a client can send its headers a byte a minute and hold the connection; set it (kubegate renders %v)", DefaultRequestHeadersTimeout)
	case d.AsDuration() > MaxSlowClientTimeout:
		c.fs.add(p+".request_headers_timeout", RuleRequestHeadersTimeout, "%v is more than %v", d.AsDuration(), MaxSlowClientTimeout)
	}

	h2 := h.GetHttp2ProtocolOptions()
	hp := p + ".http2_protocol_options"
	switch v := h2.GetMaxConcurrentStreams(); {
	case v == nil:
		c.fs.add(hp+".max_concurrent_streams", RuleHTTP2Limits, "unset means 2147483647 streams per connection; set it (kubegate renders %d)", DefaultMaxConcurrentStreams)
	case v.GetValue() > MaxConcurrentStreamsLimit:
		c.fs.add(hp+".max_concurrent_streams", RuleHTTP2Limits, "%d is more than %d", v.GetValue(), MaxConcurrentStreamsLimit)
	}
	for _, w := range []struct {
		name string
		v    uint32
		set  bool
	}{
		{"initial_stream_window_size", h2.GetInitialStreamWindowSize().GetValue(), h2.GetInitialStreamWindowSize() != nil},
		{"initial_connection_window_size", h2.GetInitialConnectionWindowSize().GetValue(), h2.GetInitialConnectionWindowSize() != nil},
	} {
		if !w.set {
			c.fs.add(hp+"."+w.name, RuleHTTP2Limits, "unset means 256 MiB a client can make Envoy buffer; set it (kubegate renders %d and %d)", DefaultInitialStreamWindowSize, DefaultInitialConnectionWindowSize)
		} else if w.v > MaxWindowSize {
			c.fs.add(hp+"."+w.name, RuleHTTP2Limits, "%d is more than %d bytes", w.v, MaxWindowSize)
		}
	}

	// conn_manager_utility.cc: without use_remote_address Envoy takes the client
	// address from X-Forwarded-For, which the client writes; with trusted hops it
	// takes the address that many entries from the right, also the client's own
	// text here (nothing sits in front of Envoy); an original IP detection
	// extension reads it from a header. The per-client rate limit keys on that
	// address, so trusting it gives every request a fresh bucket.
	if !h.GetUseRemoteAddress().GetValue() {
		c.fs.add(p+".use_remote_address", RuleXFFTrust, "must be true: otherwise the client address is read from X-Forwarded-For, which the client writes (and the per-client rate limit keys on it)")
	}
	if n := h.GetXffNumTrustedHops(); n > 0 {
		c.fs.add(p+".xff_num_trusted_hops", RuleXFFTrust, "%d trusts that many X-Forwarded-For entries from the client; kubectl connects directly, set 0", n)
	}
	if len(h.GetOriginalIpDetectionExtensions()) > 0 {
		c.fs.add(p+".original_ip_detection_extensions", RuleXFFTrust, "an original IP detection extension takes the client address from what the client sends; remove it")
	}
	c.clientRateLimit(h, p)
}

// clientRateLimit requires ClientRateLimit's filter in front of ext_authz.
func (c *checker) clientRateLimit(h *hcmv3.HttpConnectionManager, p string) {
	filters := h.GetHttpFilters()
	// After the header_mutation that strips contract.HeaderUpstream (rule
	// upstream-header-strip), which costs nothing.
	first := 0
	if len(filters) > 0 && typeName(filters[0].GetTypedConfig()) == headerMutationType {
		first = 1
	}
	if len(filters) <= first || typeName(filters[first].GetTypedConfig()) != localRateLimitType {
		c.fs.add(p+".http_filters", RuleClientRateLimit, "the first HTTP filter (after the header_mutation that strips %s) must be %s with a token bucket per client address: without it one client can make every request a GitLab lookup (401 floods)", contract.HeaderUpstream, FilterLocalRateLimit)
		return
	}
	fp := fmt.Sprintf("%s.http_filters[%d].typed_config", p, first)
	l, ok := c.unpack(filters[first].GetTypedConfig(), fp).(*localratelimitv3.LocalRateLimit)
	if !ok {
		return
	}
	full := func(f *corev3.RuntimeFractionalPercent, field, dflt string) {
		d := f.GetDefaultValue()
		denom := map[typev3.FractionalPercent_DenominatorType]uint32{typev3.FractionalPercent_HUNDRED: 100, typev3.FractionalPercent_TEN_THOUSAND: 10000, typev3.FractionalPercent_MILLION: 1000000}[d.GetDenominator()]
		switch {
		case f == nil || d.GetNumerator() < denom:
			c.fs.add(fp+"."+field, RuleClientRateLimit, "must be 100%% of requests (the default is %s)", dflt)
		case f.GetRuntimeKey() != "":
			c.fs.add(fp+"."+field+".runtime_key", RuleClientRateLimit, "a runtime key lets the runtime (or /runtime_modify on the admin interface) turn the limit off; leave it empty")
		}
	}
	full(l.GetFilterEnabled(), "filter_enabled", "0%, a filter that does nothing")
	full(l.GetFilterEnforced(), "filter_enforced", "0%: limits are counted but never applied")
	if l.GetLocalRateLimitPerDownstreamConnection() {
		c.fs.add(fp+".local_rate_limit_per_downstream_connection", RuleClientRateLimit, "per connection, a client gets a fresh bucket with every new connection; must be false")
	}
	if s := l.GetStatus(); s != nil && s.GetCode() != typev3.StatusCode_TooManyRequests {
		c.fs.add(fp+".status", RuleClientRateLimit, "%v: leave it unset (429), which kubectl reports as too many requests", s.GetCode())
	}
	remote := len(l.GetRateLimits()) == 1 && len(l.GetRateLimits()[0].GetActions()) == 1 &&
		l.GetRateLimits()[0].GetActions()[0].GetRemoteAddress() != nil
	if !remote {
		c.fs.add(fp+".rate_limits", RuleClientRateLimit, "must be one rate limit with the single action remote_address: {} (one bucket per client address)")
	}
	wildcard := false
	for _, d := range l.GetDescriptors() {
		e := d.GetEntries()
		if len(e) == 1 && e[0].GetKey() == ClientAddressDescriptorKey && e[0].GetValue() == "" && d.GetTokenBucket() != nil && !d.GetShadowMode() {
			wildcard = true
		}
	}
	if !wildcard {
		c.fs.add(fp+".descriptors", RuleClientRateLimit, "needs a descriptor with the one entry {key: %s} (no value: a bucket per address), a token_bucket and no shadow_mode", ClientAddressDescriptorKey)
	}
	if m := l.GetMaxDynamicDescriptors(); m == nil || m.GetValue() < 1000 {
		c.fs.add(fp+".max_dynamic_descriptors", RuleClientRateLimit, "at least 1000 client buckets (the default is 20: an attacker with 21 addresses would keep evicting its own buckets and never be limited); kubegate renders --max-connections")
	}
}

// listenerHardening checks a listener's connection-level limits.
func (c *checker) listenerHardening(l *listenerv3.Listener, lp string) {
	if v := l.GetPerConnectionBufferLimitBytes(); v == nil || v.GetValue() > MaxConnectionBufferBytes {
		c.fs.add(lp+".per_connection_buffer_limit_bytes", RuleConnectionBuffer, "set it to at most 1 MiB (kubegate renders %d): what one connection can make Envoy buffer", DefaultConnectionBufferBytes)
	}
}

// handshakeTimeout checks one filter chain's TLS handshake deadline.
func (c *checker) handshakeTimeout(fc *listenerv3.FilterChain, p string) {
	switch d := fc.GetTransportSocketConnectTimeout(); {
	case d == nil || d.AsDuration() == 0:
		c.fs.add(p+".transport_socket_connect_timeout", RuleTLSHandshakeTimeout, "unset: a client that opens TCP and never finishes the TLS handshake holds the connection forever; set it (kubegate renders %v)", DefaultTLSHandshakeTimeout)
	case d.AsDuration() > MaxSlowClientTimeout:
		c.fs.add(p+".transport_socket_connect_timeout", RuleTLSHandshakeTimeout, "%v is more than %v", d.AsDuration(), MaxSlowClientTimeout)
	}
}

// connectTimeouts checks every cluster's connect_timeout (default 5s, cluster.proto).
func (c *checker) connectTimeouts() {
	for i, cl := range c.b.GetStaticResources().GetClusters() {
		p := fmt.Sprintf("$.static_resources.clusters[%d].connect_timeout", i)
		switch d := cl.GetConnectTimeout(); {
		case d == nil:
			c.fs.add(p, RuleConnectTimeout, "cluster %q: set connect_timeout explicitly (kubegate renders %v)", cl.GetName(), DefaultConnectTimeout)
		case d.AsDuration() > MaxConnectTimeout:
			c.fs.add(p, RuleConnectTimeout, "cluster %q: %v holds each request that long when the upstream is unreachable; at most %v", cl.GetName(), d.AsDuration(), MaxConnectTimeout)
		}
	}
}

// walk calls fn for every message in m, with its JSON path, unpacking every
// google.protobuf.Any on the way (its fields continue the path, as in findings).
func walk(m protoreflect.Message, path string, fn func(protoreflect.Message, string)) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return // reported by the schema rule
		}
		m = inner.ProtoReflect()
	}
	fn(m, path)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fp := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message(), fmt.Sprintf("%s[%q]", fp, k.String()), fn)
					return true
				})
			}
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", fp, i), fn)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			walk(v.Message(), fp, fn)
		}
		return true
	})
}

// everywhere applies the checks that concern any place of the bootstrap: mirror
// policies (route configuration, virtual host, route) and access logs (HCM,
// listener, router upstream_log, admin).
func (c *checker) everywhere() {
	walk(c.b.ProtoReflect(), "$", func(m protoreflect.Message, p string) {
		c.noCORS(m, p)
		switch x := m.Interface().(type) {
		case *routev3.RouteConfiguration:
			c.mirror(len(x.GetRequestMirrorPolicies()), p)
		case *routev3.VirtualHost:
			c.mirror(len(x.GetRequestMirrorPolicies()), p)
		case *routev3.RouteAction:
			c.mirror(len(x.GetRequestMirrorPolicies()), p)
		case *accesslogv3.AccessLog:
			c.accessLog(x, p)
		}
	})
}

func (c *checker) mirror(n int, p string) {
	if n > 0 {
		c.fs.add(p+".request_mirror_policies", RuleRequestMirror, "a mirror gets a copy of every request after the filters ran, with the agent token in Authorization; remove it")
	}
}

// accessLog checks what one access log prints.
func (c *checker) accessLog(al *accesslogv3.AccessLog, p string) {
	tp := p + ".typed_config"
	var formats []string
	var dflt bool
	uncheckable := ""
	sfs := func(f *corev3.SubstitutionFormatString, fp string) {
		switch {
		//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
		case f.GetTextFormat() != "":
			//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
			formats = append(formats, f.GetTextFormat())
		case f.GetJsonFormat() != nil:
			formats = append(formats, structStrings(f.GetJsonFormat())...)
		case f.GetTextFormatSource() != nil:
			switch s := f.GetTextFormatSource().GetSpecifier().(type) {
			case *corev3.DataSource_InlineString:
				formats = append(formats, s.InlineString)
			case *corev3.DataSource_InlineBytes:
				formats = append(formats, string(s.InlineBytes))
			default:
				uncheckable = fp + ".text_format_source: a format read from a file or the environment"
			}
		default:
			dflt = true
		}
	}
	switch l := c.unpack(al.GetTypedConfig(), tp).(type) {
	case nil:
		return
	case *streamv3.StdoutAccessLog:
		if l.GetLogFormat() == nil {
			dflt = true
		} else {
			sfs(l.GetLogFormat(), tp+".log_format")
		}
	case *streamv3.StderrAccessLog:
		if l.GetLogFormat() == nil {
			dflt = true
		} else {
			sfs(l.GetLogFormat(), tp+".log_format")
		}
	case *filev3.FileAccessLog:
		switch f := l.GetAccessLogFormat().(type) {
		case *filev3.FileAccessLog_Format:
			//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
			if f.Format == "" {
				dflt = true
			}
			//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
			formats = append(formats, f.Format)
		case *filev3.FileAccessLog_JsonFormat:
			//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
			formats = append(formats, structStrings(f.JsonFormat)...)
		case *filev3.FileAccessLog_TypedJsonFormat:
			//lint:ignore SA1019 Envoy still accepts the deprecated format fields, so a config using them must be checked for credentials too
			formats = append(formats, structStrings(f.TypedJsonFormat)...)
		case *filev3.FileAccessLog_LogFormat:
			sfs(f.LogFormat, tp+".log_format")
		default:
			dflt = true
		}
	default:
		uncheckable = fmt.Sprintf("%s: access logger %s", tp, l.ProtoReflect().Descriptor().FullName())
	}
	if uncheckable != "" {
		c.fs.add(tp, RuleAccessLogCredentials, "%s cannot be checked for credentials; use the stdout, stderr or file logger with an inline format", uncheckable)
		return
	}
	if dflt {
		c.fs.add(tp, RuleAccessLogQuery, "no format means Envoy's default, which prints the path with its query (%%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%%), and so the gitlab-agent-id and gitlab-csrf-token of every request; set kubegate's format (%%PATH(NQ:ORIG_OR_PATH)%%)")
	}
	for _, f := range formats {
		for _, op := range commandOperator.FindAllStringSubmatch(f, -1) {
			c.operator(op[1], op[2], op[0], tp)
		}
	}
}

// commandOperator matches a substitution command: %NAME%, %NAME(ARGS)%, with an
// optional :LENGTH (substitution_formatter.rst, "Supported commands").
var commandOperator = regexp.MustCompile(`%([A-Z_]+)(?:\(([^)]*)\))?(?::[0-9]+)?%`)

// sensitiveHeader reports whether a header holds a credential or an identity.
func sensitiveHeader(h string) bool {
	h = strings.ToLower(h)
	switch h {
	case "authorization", "proxy-authorization", "cookie", "set-cookie", "x-csrf-token":
		return true
	}
	return strings.HasPrefix(h, contract.ImpersonatePrefix)
}

func (c *checker) operator(name, args, text, p string) {
	switch name {
	case "REQ", "RESP", "TRAILER":
		for _, h := range strings.Split(args, "?") {
			h = strings.ToLower(strings.TrimSpace(h))
			switch {
			case sensitiveHeader(h):
				c.fs.add(p, RuleAccessLogCredentials, "%s prints %s, a credential or an identity (the agent token is in Authorization upstream); remove it", text, h)
			case name == "REQ" && (h == ":path" || h == "x-envoy-original-path"):
				c.fs.add(p, RuleAccessLogQuery, "%s prints the path with its query, and so the gitlab-agent-id and gitlab-csrf-token values; use %%PATH(NQ:ORIG_OR_PATH)%%", text)
			}
		}
	case "PATH":
		// %PATH(X:Y)%: X is WQ (with query, the default) or NQ.
		if x, _, _ := strings.Cut(args, ":"); strings.TrimSpace(x) != "NQ" {
			c.fs.add(p, RuleAccessLogQuery, "%s prints the query (WQ is the default); use %%PATH(NQ:ORIG_OR_PATH)%%", text)
		}
	case "QUERY_PARAM":
		if k := strings.ToLower(strings.TrimSpace(args)); slices.Contains(contract.CredentialQuery, k) {
			c.fs.add(p, RuleAccessLogQuery, "%s prints a credential query parameter; remove it", text)
		}
	}
}

// structStrings returns every string in a JSON format (keys are not formatted).
func structStrings(s *structpb.Struct) []string {
	var out []string
	var visit func(v *structpb.Value)
	visit = func(v *structpb.Value) {
		switch k := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			out = append(out, k.StringValue)
		case *structpb.Value_StructValue:
			for _, f := range k.StructValue.GetFields() {
				visit(f)
			}
		case *structpb.Value_ListValue:
			for _, e := range k.ListValue.GetValues() {
				visit(e)
			}
		}
	}
	for _, f := range s.GetFields() {
		visit(f)
	}
	return out
}
