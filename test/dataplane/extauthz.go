package dataplane

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"kubegate.dev/kubegate/contract"
)

// ExtAuthzNamespace is where Envoy stores CheckResponse.dynamic_metadata: the
// filter's canonical name (ext_authz.cc Filter::onComplete,
// setDynamicMetadata("envoy.filters.http.ext_authz", ...)).
const ExtAuthzNamespace = contract.MetadataNamespace

// extAuthzFilter is envoy.filters.http.ext_authz with a gRPC service
// (source/extensions/filters/http/ext_authz/ext_authz.cc, the request built by
// filters/common/ext_authz/check_request_utils.cc, the response read by
// filters/common/ext_authz/ext_authz_grpc_impl.cc).
type extAuthzFilter struct {
	name string
	cfg  *extAuthzConfig
	// principal is the listener certificate's identity (destination.principal).
	principal string
	client    authv3.AuthorizationClient
	breaker   *breaker
	hcm       *hcmConfig
}

func newExtAuthzFilter(name string, cfg *extAuthzConfig, conn *grpc.ClientConn, br *breaker, hcm *hcmConfig, listenerCert *x509.Certificate) *extAuthzFilter {
	return &extAuthzFilter{name: name, cfg: cfg, client: authv3.NewAuthorizationClient(conn), breaker: br, hcm: hcm, principal: principal(listenerCert)}
}

// checkStatus is Filters::Common::ExtAuthz::CheckStatus.
type checkStatus int

const (
	checkStatusOK checkStatus = iota
	checkStatusDenied
	checkStatusError
)

// authzResponse is Filters::Common::ExtAuthz::Response, what GrpcClientImpl makes of
// a CheckResponse.
type authzResponse struct {
	status          checkStatus
	statusCode      int // 0: not set by the service
	body            string
	requestHeaders  []headerMutation // OkHttpResponse.headers
	localHeaders    []headerMutation // denied/error response headers
	responseHeaders []headerMutation // OkHttpResponse.response_headers_to_add
	headersToRemove []string
	queryToSet      [][2]string
	queryToRemove   []string
	metadata        *structpb.Struct
	invalidAppend   bool // saw_invalid_append_actions
}

func (f *extAuthzFilter) decodeHeaders(ctx context.Context, s *stream) *localReply {
	// Filter::getPerRouteFlags: without a route the check is skipped
	// ("if (route == nullptr) return PerRouteFlags{true /*skip_check_*/ ...}"), and
	// the router answers 404 later.
	if s.route == nil {
		return nil
	}
	// getPerRouteFlags: the route's ExtAuthzPerRoute{disabled: true} skips the
	// check (skip_check_), and the request goes on untouched (browser.go).
	if s.route.disabled[f.name] == "ext_authz" {
		return nil
	}
	start := time.Now()
	resp := f.check(ctx, s)
	return f.onComplete(s, resp, time.Since(start))
}

// check calls the service with the filter's timeout (grpc_service.timeout) and maps
// the outcome like GrpcClientImpl::onSuccess / onFailure.
func (f *extAuthzFilter) check(ctx context.Context, s *stream) *authzResponse {
	release, ok := f.breaker.acquire()
	if !ok {
		return &authzResponse{status: checkStatusError} // overflow fails the call
	}
	defer release()
	cctx, cancel := context.WithTimeout(ctx, f.cfg.timeout)
	defer cancel()
	resp, err := f.client.Check(cctx, f.checkRequest(s))
	if err != nil {
		// onFailure: a transport error, a timeout or a non-OK gRPC status.
		return &authzResponse{status: checkStatusError}
	}
	return fromCheckResponse(resp)
}

// checkRequest is CheckRequestUtils::createHttpCheck.
func (f *extAuthzFilter) checkRequest(s *stream) *authv3.CheckRequest {
	h := s.headers
	httpReq := &authv3.AttributeContext_HttpRequest{
		Id:       formatUint(s.id),
		Method:   sanitizeUTF8(h.first(":method")),
		Path:     sanitizeUTF8(h.first(":path")),
		Host:     sanitizeUTF8(h.first(":authority")),
		Scheme:   sanitizeUTF8(h.first(":scheme")),
		Size:     0, // bytesReceived: no body is read before the check (with_request_body unset)
		Protocol: s.protocol,
	}
	if f.cfg.encodeRawHeaders {
		// header_map: one entry per header-map entry, raw bytes in raw_value
		// (headerMapAddHeader), pseudo-headers included.
		hm := &corev3.HeaderMap{}
		for _, e := range h.entries {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)})
		}
		httpReq.HeaderMap = hm
	} else {
		// headers: a map; duplicates merged with "," and values made valid UTF-8.
		m := map[string]string{}
		for _, e := range h.entries {
			v := sanitizeUTF8(e.value)
			if old, ok := m[e.key]; ok {
				m[e.key] = old + "," + v
			} else {
				m[e.key] = v
			}
		}
		httpReq.Headers = m
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		// setAttrContextPeer: source is the connection's remote address, with the
		// x-envoy-downstream-service-cluster header as service (removed from edge
		// requests); destination is the local address with the listener
		// certificate's URI SAN, else DNS SAN, else subject as principal.
		Source:      &authv3.AttributeContext_Peer{Address: socketAddress(s.remote), Service: sanitizeUTF8(h.first("x-envoy-downstream-service-cluster"))},
		Destination: &authv3.AttributeContext_Peer{Address: socketAddress(s.local), Principal: f.principal},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(s.start),
			Http: httpReq,
		},
		ContextExtensions:    map[string]string{},
		MetadataContext:      &corev3.Metadata{},
		RouteMetadataContext: &corev3.Metadata{},
	}}
}

func principal(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

func socketAddress(a *net.TCPAddr) *corev3.Address {
	if a == nil {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       a.IP.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port)},
	}}}
}

// fromCheckResponse is GrpcClientImpl::onSuccess.
func fromCheckResponse(resp *authv3.CheckResponse) *authzResponse {
	r := &authzResponse{}
	switch {
	case codes.Code(resp.GetStatus().GetCode()) == codes.OK:
		r.status = checkStatusOK
		if ok := resp.GetOkResponse(); ok != nil {
			r.requestHeaders = requestHeaderMutations(ok.GetHeaders(), &r.invalidAppend)
			r.responseHeaders = responseHeaderMutations(ok.GetResponseHeadersToAdd(), &r.invalidAppend)
			r.headersToRemove = ok.GetHeadersToRemove()
			for _, q := range ok.GetQueryParametersToSet() {
				r.queryToSet = append(r.queryToSet, [2]string{q.GetKey(), q.GetValue()})
			}
			r.queryToRemove = ok.GetQueryParametersToRemove()
		}
	case resp.GetErrorResponse() != nil:
		// "If error_response is present, treat it as an error and not denial";
		// the status falls back to status_on_error.
		e := resp.GetErrorResponse()
		r.status = checkStatusError
		r.statusCode = int(e.GetStatus().GetCode())
		r.body = e.GetBody()
		r.localHeaders = responseHeaderMutations(e.GetHeaders(), &r.invalidAppend)
	default:
		// "The default HTTP status code for denied response is 403 Forbidden."
		r.status = checkStatusDenied
		r.statusCode = http.StatusForbidden
		if d := resp.GetDeniedResponse(); d != nil {
			if c := int(d.GetStatus().GetCode()); c > 0 {
				r.statusCode = c
			}
			r.body = d.GetBody()
			r.localHeaders = responseHeaderMutations(d.GetHeaders(), &r.invalidAppend)
		}
	}
	// "OkHttpResponse.dynamic_metadata is deprecated. Until [it] is removed, it
	// overrides dynamic_metadata field of the outer check response."
	//lint:ignore SA1019 Envoy still honours the deprecated field (the proto comment quoted above); the emulation must too
	if md := resp.GetOkResponse().GetDynamicMetadata(); md != nil {
		r.metadata = md
	} else {
		r.metadata = resp.GetDynamicMetadata()
	}
	return r
}

// requestHeaderMutations reads OkHttpResponse.headers the way
// ext_authz_grpc_impl.cc does (toHeaderMutationAction / getAppendAction, Envoy
// 1.40): the legacy append, when present, decides — true appends to an existing
// value with "," (appendCopy, and only if the header exists: Filter::onComplete),
// false sets; without it, append_action decides, and its zero value
// APPEND_IF_EXISTS_OR_ADD adds a new header line (addCopy). So a header with
// neither field is added next to any existing line, not set: external_auth.proto's
// "By leaving append as false, the filter will either add a new header, or
// override an existing one" describes the deprecated field only.
func requestHeaderMutations(opts []*corev3.HeaderValueOption, invalid *bool) []headerMutation {
	var out []headerMutation
	for _, o := range opts {
		m := headerMutation{key: o.GetHeader().GetKey(), value: o.GetHeader().GetValue()}
		legacy := legacyAppend(o)
		switch {
		case legacy != nil && legacy.GetValue():
			m.action = actionAppend
		case legacy != nil:
			m.action = actionSet
		default:
			m.action = appendAction(o.GetAppendAction(), actionAdd, invalid)
		}
		out = append(out, m)
	}
	return out
}

// responseHeaderMutations reads headers meant for a response (denied, error and
// response_headers_to_add): there, "append=true meant adding a new header"
// (ext_authz_grpc_impl.cc toHeaderMutationAction, is_response_header).
func responseHeaderMutations(opts []*corev3.HeaderValueOption, invalid *bool) []headerMutation {
	var out []headerMutation
	for _, o := range opts {
		m := headerMutation{key: o.GetHeader().GetKey(), value: o.GetHeader().GetValue()}
		legacy := legacyAppend(o)
		switch {
		case legacy != nil && legacy.GetValue():
			m.action = actionAdd
		case legacy != nil:
			m.action = actionSet
		default:
			m.action = appendAction(o.GetAppendAction(), actionAdd, invalid)
		}
		out = append(out, m)
	}
	return out
}

// legacyAppend is HeaderValueOption.append, deprecated in base.proto in favour of
// append_action but still read first by Envoy's ext_authz (ext_authz_grpc_impl.cc)
// and ext_proc (mutation_utils.cc), which the data plane emulates.
func legacyAppend(o *corev3.HeaderValueOption) *wrapperspb.BoolValue {
	//lint:ignore SA1019 Envoy still reads the deprecated field first; the emulation must too
	return o.GetAppend()
}

func appendAction(a corev3.HeaderValueOption_HeaderAppendAction, zero mutationAction, invalid *bool) mutationAction {
	switch a {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		return zero
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		return actionAddIfAbsent
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		return actionOverwriteIfExists
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		return actionSet
	}
	*invalid = true
	return actionSet
}

// onComplete is Filter::onComplete.
func (f *extAuthzFilter) onComplete(s *stream, r *authzResponse, took time.Duration) *localReply {
	reject := &localReply{status: http.StatusInternalServerError, details: "ext_authz_invalid", flags: "UAEX"}
	if r.invalidAppend && f.cfg.validateMutations {
		return reject
	}
	if len(r.metadata.GetFields()) > 0 && f.cfg.ingestMetadata {
		md := r.metadata
		if r.status == checkStatusOK {
			// "Add duration of call to dynamic metadata": ext_authz_duration, in ms.
			md = cloneStruct(md)
			md.Fields["ext_authz_duration"] = structpb.NewNumberValue(float64(took.Milliseconds()))
		}
		s.metadata[ExtAuthzNamespace] = md
	}
	switch r.status {
	case checkStatusOK:
		return f.applyOK(s, r, reject)
	case checkStatusDenied:
		if f.cfg.validateMutations {
			for _, m := range r.localHeaders {
				if !validHeaderName(strings.ToLower(m.key)) || !validHeaderValue(m.value) {
					return reject
				}
			}
		}
		return &localReply{status: r.statusCode, body: r.body, headers: deniedHeaders(r.localHeaders), details: "ext_authz_denied", flags: "UAEX"}
	default:
		if f.cfg.failureModeAllow {
			return nil
		}
		status := f.cfg.statusOnError
		if r.statusCode > 0 {
			status = r.statusCode
		}
		return &localReply{status: status, body: r.body, headers: deniedHeaders(r.localHeaders), details: "ext_authz_error", flags: "UAEX"}
	}
}

// deniedHeaders: "Firstly, remove all headers requested by the ext_authz filter, to
// ensure that they will override existing headers. Then set all of the requested
// headers, allowing the same header to be set multiple times."
func deniedHeaders(ms []headerMutation) []headerMutation {
	out := make([]headerMutation, 0, len(ms))
	seen := map[string]bool{}
	for _, m := range ms {
		k := strings.ToLower(m.key)
		action := actionAdd
		if !seen[k] {
			action, seen[k] = actionSet, true
		}
		out = append(out, headerMutation{key: k, value: m.value, action: action})
	}
	return out
}

// applyOK applies an OK response's mutations in Filter::onComplete's order, each
// checked against validate_mutations and decoder_header_mutation_rules.
func (f *extAuthzFilter) applyOK(s *stream, r *authzResponse, reject *localReply) *localReply {
	check := func(op checkOp, key, value string) checkResult {
		if f.cfg.validateMutations && (!validHeaderName(key) || !validHeaderValue(value)) {
			return checkFail
		}
		if f.cfg.rules == nil {
			return checkOK
		}
		return f.cfg.rules.check(op, key, value)
	}
	for _, m := range r.requestHeaders {
		op := opSet
		if m.action == actionAppend {
			op = opAppend
		}
		switch check(op, m.key, m.value) {
		case checkOK:
			m.key = strings.ToLower(m.key)
			m.apply(s.headers)
		case checkFail:
			return reject
		}
	}
	for _, key := range r.headersToRemove {
		// "If the response contains an invalid header to remove, it's the same as
		// trying to remove a header that doesn't exist, so just ignore it."
		if f.cfg.validateMutations && !validHeaderName(key) {
			continue
		}
		lk := strings.ToLower(key)
		// Pseudo-headers and host are never removed; without rules this is checked
		// here, with rules the checker refuses them.
		if f.cfg.rules == nil {
			if modifiableHeader(lk) {
				s.headers.remove(lk)
			}
			continue
		}
		switch f.cfg.rules.check(opRemove, lk, "") {
		case checkOK:
			s.headers.remove(lk)
		case checkFail:
			return reject
		}
	}
	for _, m := range r.responseHeaders {
		if f.cfg.validateMutations && (!validHeaderName(m.key) || !validHeaderValue(m.value)) {
			return reject
		}
		m.key = strings.ToLower(m.key)
		s.responseHeaders = append(s.responseHeaders, m)
	}
	if len(r.queryToSet) > 0 || len(r.queryToRemove) > 0 {
		q := parseQueryParams(s.headers.first(":path"))
		for _, kv := range r.queryToSet {
			if f.cfg.validateMutations && (!queryParameterIsURLEncoded(kv[0]) || !queryParameterIsURLEncoded(kv[1])) {
				return reject
			}
			q.overwrite(kv[0], kv[1])
		}
		for _, k := range r.queryToRemove {
			q.remove(k)
		}
		s.headers.set(":path", q.replaceQueryString(s.headers.first(":path")))
	}
	if s.headers.size() > f.hcm.maxHeadersCount || s.headers.byteSize() > f.hcm.maxHeadersKB*1024 {
		return reject
	}
	// clear_route_cache: "The filter clears all cached routes when all of the
	// following holds: This field is set to true. The status returned from the
	// authorization service is an HTTP 200 or gRPC 0. At least one authorization
	// response header is added to the client request, or is used to alter another
	// client request header" (ext_authz.proto). The route is then matched again
	// from the mutated headers, so a cluster_header route reads what ext_authz set.
	if f.cfg.clearRouteCache && (len(r.requestHeaders) > 0 || len(r.headersToRemove) > 0) {
		s.clearRouteCache()
	}
	return nil
}

// queryParams is Http::Utility::QueryParamsMulti: an absl::btree_map, so a
// rewritten query string lists parameters sorted by name, values in order.
type queryParams map[string][]string

// parseQueryParams is QueryParamsMulti::parseQueryString: split on & and the first
// =, nothing decoded.
func parseQueryParams(path string) queryParams {
	q := queryParams{}
	_, raw, ok := strings.Cut(path, "?")
	if !ok {
		return q
	}
	for raw != "" {
		var p string
		p, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(p, "=")
		q[k] = append(q[k], v)
	}
	return q
}

func (q queryParams) overwrite(k, v string) { q[k] = []string{v} }
func (q queryParams) remove(k string)       { delete(q, k) }

// replaceQueryString is QueryParamsMulti::replaceQueryString: the path without
// its query, then "?k=v&..." if any parameter is left.
func (q queryParams) replaceQueryString(path string) string {
	base, _, _ := strings.Cut(path, "?")
	if len(q) == 0 {
		return base
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		for _, v := range q[k] {
			parts = append(parts, k+"="+v)
		}
	}
	return base + "?" + strings.Join(parts, "&")
}

// queryParameterIsURLEncoded approximates PercentEncoding::queryParameterIsUrlEncoded:
// only unreserved characters (RFC 3986) and well-formed %XX escapes.
func queryParameterIsURLEncoded(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.IndexByte("-._~", c) >= 0:
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			i += 2
		default:
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func cloneStruct(s *structpb.Struct) *structpb.Struct {
	out := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(s.GetFields())+1)}
	for k, v := range s.GetFields() {
		out.Fields[k] = v
	}
	return out
}

// sanitizeUTF8 is MessageUtil::sanitizeUtf8String: invalid bytes become '!'.
func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b := []byte(s)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			b[i] = '!'
			n = 1
		}
		i += n
	}
	return string(b)
}

func formatUint(v uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(buf[i:])
		}
	}
}
