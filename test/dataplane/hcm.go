package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// stream is one downstream request as Envoy's filter manager holds it.
type stream struct {
	id        uint64
	start     time.Time
	protocol  string // "HTTP/1.1" or "HTTP/2", StreamInfo::protocol
	headers   *headerMap
	remote    *net.TCPAddr
	local     *net.TCPAddr
	tls       bool
	endStream bool // the request has no body (headers with END_STREAM)
	body      io.ReadCloser
	route     *route
	// vhosts are the route table clearRouteCache matches against again.
	vhosts []virtualHost
	// cluster is the route's cluster as of the last match (refreshRoute).
	cluster string

	// metadata is the stream's dynamic metadata (StreamInfo::dynamicMetadata,
	// filter_metadata) by namespace.
	metadata map[string]*structpb.Struct
	// responseHeaders are mutations ext_authz asked for on the downstream response
	// (OkHttpResponse.response_headers_to_add), applied to whatever response follows.
	responseHeaders []headerMutation

	// For the access log.
	details      string // response code details
	flags        string // response flags
	upstreamAddr string
	respStatus   int
	serviceTime  string // x-envoy-upstream-service-time
	bytesIn      atomic.Int64
	bytesOut     atomic.Int64
}

// headerMutation is one header change with Envoy's append action.
type headerMutation struct {
	key, value string
	action     mutationAction
}

type mutationAction int

const (
	actionSet    mutationAction = iota // OVERWRITE_IF_EXISTS_OR_ADD
	actionAdd                          // a new line
	actionAppend                       // comma-append to an existing value (ext_authz legacy append)
	actionAddIfAbsent
	actionOverwriteIfExists
)

func (m headerMutation) apply(h *headerMap) {
	switch m.action {
	case actionSet:
		h.set(m.key, m.value)
	case actionAdd:
		h.add(m.key, m.value)
	case actionAppend:
		if h.has(m.key) {
			h.appendValue(m.key, m.value, ",")
		}
	case actionAddIfAbsent:
		if !h.has(m.key) {
			h.add(m.key, m.value)
		}
	case actionOverwriteIfExists:
		if h.has(m.key) {
			h.set(m.key, m.value)
		}
	}
}

// localReply is what Envoy's sendLocalReply produces.
type localReply struct {
	status int
	body   string
	// headers are applied to the reply's header map in order.
	headers []headerMutation
	details string
	flags   string
	// closeConn ends an HTTP/1 connection after the reply (codec errors).
	closeConn bool
	// reset resets an HTTP/2 stream instead of replying (codec errors on HTTP/2).
	reset bool
}

// httpFilter is a decoder filter. A non-nil reply stops the chain.
type httpFilter interface {
	decodeHeaders(ctx context.Context, s *stream) *localReply
}

// connectionManager is the HTTP connection manager: it turns a Go request into
// Envoy's request headers, runs the filter chain and hands the request to the router.
type connectionManager struct{ dp *DataPlane }

func (cm *connectionManager) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !cm.dp.streamStarts() {
		panic(http.ErrAbortHandler) // the data plane is closing
	}
	defer cm.dp.streams.Done()
	cfg := &cm.dp.cfg.hcm
	s := newStream(req)
	defer cm.accessLog(s)

	if r := cm.codecChecks(s, cfg); r != nil {
		cm.sendLocalReply(w, req, s, r)
		return
	}
	mutateRequestHeaders(s)
	if r := normalizePath(s, cfg); r != nil {
		cm.sendLocalReply(w, req, s, r)
		return
	}
	earlyRemove(s, cfg.earlyRemoves)
	s.vhosts = cfg.routes
	s.refreshRoute()

	// ConnectionManagerImpl::ActiveStream::decodeHeaders: an upgrade whose type is
	// not enabled in upgrade_configs is answered 403 before any filter runs.
	if up, ok := upgradeType(s.headers); ok && !cfg.upgradeAllowed(up) {
		cm.sendLocalReply(w, req, s, &localReply{status: http.StatusForbidden, details: "upgrade_failed"})
		return
	}
	// http_connection_manager.proto proxy_100_continue (default false): Envoy answers
	// "Expect: 100-continue" itself and removes the header; Go's server sends the
	// 100 when the body is first read.
	if strings.EqualFold(s.headers.first("expect"), "100-continue") {
		s.headers.remove("expect")
	}

	ctx := req.Context()
	for _, f := range cm.dp.filters {
		if r := f.decodeHeaders(ctx, s); r != nil {
			cm.sendLocalReply(w, req, s, r)
			return
		}
	}
	if s.route == nil {
		// The router's answer for a request no route matches (router.cc,
		// "route_not_found", response flag NR).
		cm.sendLocalReply(w, req, s, &localReply{status: http.StatusNotFound, details: "route_not_found", flags: "NR"})
		return
	}
	if s.route.direct != nil {
		r := *s.route.direct
		cm.sendLocalReply(w, req, s, &r)
		return
	}
	if s.route.redirect != nil {
		cm.sendLocalReply(w, req, s, s.route.redirect.reply(s.headers))
		return
	}
	cm.dp.router.forward(cm.dp.ctx, w, req, s, cm)
}

func newStream(req *http.Request) *stream {
	var idb [8]byte
	rand.Read(idb[:])
	s := &stream{
		// ActiveStream's stream id is a random 64-bit number (conn_manager_impl.cc),
		// the CheckRequest's attributes.request.http.id.
		id:       binary.BigEndian.Uint64(idb[:]),
		start:    time.Now(),
		protocol: "HTTP/1.1",
		headers:  &headerMap{},
		metadata: map[string]*structpb.Struct{},
		tls:      req.TLS != nil,
		body:     req.Body,
	}
	if req.ProtoMajor == 2 {
		s.protocol = "HTTP/2"
	}
	s.remote, _ = net.ResolveTCPAddr("tcp", req.RemoteAddr)
	if la, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		s.local, _ = la.(*net.TCPAddr)
	}
	// Pseudo-headers first (HeaderList::insert). The HTTP/1 codec turns Host into
	// :authority and sets :path and :method when the headers are complete; the
	// HTTP/2 codec gets them from the frame (Go's client sends :authority, :method,
	// :path, :scheme). Go's server does not keep the order of other header names, so
	// they follow sorted by name, each line in the order received.
	s.headers.addFromCodec(":authority", req.Host)
	if req.ProtoMajor == 2 {
		s.headers.addFromCodec(":method", req.Method)
		s.headers.addFromCodec(":path", req.RequestURI)
		s.headers.addFromCodec(":scheme", "https")
	} else {
		s.headers.addFromCodec(":path", req.RequestURI)
		s.headers.addFromCodec(":method", req.Method)
	}
	names := make([]string, 0, len(req.Header))
	for k := range req.Header {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	for _, k := range names {
		for _, v := range req.Header[k] {
			s.headers.addFromCodec(k, v)
		}
	}
	if len(req.TransferEncoding) > 0 {
		s.headers.addFromCodec("transfer-encoding", strings.Join(req.TransferEncoding, ","))
	}
	// end_stream on the headers: no body follows. Go's HTTP/2 server leaves
	// ContentLength at 0 with no Content-Length header only when the HEADERS frame
	// ended the stream (-1 or the header's value otherwise). An HTTP/1 request
	// without Content-Length or chunked framing has no body either, except an
	// upgrade, whose "body" is the upgraded stream (Envoy's HTTP/1 codec does not
	// end the stream for it).
	_, up := upgradeType(s.headers)
	_, hasCL := req.Header["Content-Length"]
	if req.ProtoMajor == 2 {
		s.endStream = req.ContentLength == 0 && !hasCL
	} else {
		s.endStream = req.ContentLength == 0 && len(req.TransferEncoding) == 0 && !up
	}
	return s
}

// codecChecks are the checks Envoy's codecs make while parsing headers:
// max_headers_count, max_request_headers_kb and headers_with_underscores_action.
// On HTTP/1 they end in a local reply and a closed connection, on HTTP/2 in a reset
// stream (http1/codec_impl.cc sendProtocolError; http2/codec_impl.cc onHeader).
func (cm *connectionManager) codecChecks(s *stream, cfg *hcmConfig) *localReply {
	h2 := s.protocol == "HTTP/2"
	codecError := func(status int, details string) *localReply {
		return &localReply{status: status, body: http.StatusText(status), details: details, closeConn: !h2, reset: h2, flags: "DPE"}
	}
	// The HTTP/1 codec checks the limits while reading header lines, before it
	// adds :path and :method; the HTTP/2 codec counts every field it receives.
	count, size := s.headers.size(), s.headers.byteSize()
	if !h2 {
		for _, k := range []string{":path", ":method"} {
			count--
			size -= len(k) + len(s.headers.first(k))
		}
	}
	if count > cfg.maxHeadersCount {
		return codecError(http.StatusRequestHeaderFieldsTooLarge, "http1.too_many_headers")
	}
	if size > cfg.maxHeadersKB*1024 {
		return codecError(http.StatusRequestHeaderFieldsTooLarge, "http1.headers_too_large")
	}
	for _, e := range slices.Clone(s.headers.entries) {
		if !strings.Contains(e.key, "_") {
			continue
		}
		switch cfg.underscores {
		case corev3.HttpProtocolOptions_REJECT_REQUEST:
			return codecError(http.StatusBadRequest, "http1.unexpected_underscore")
		case corev3.HttpProtocolOptions_DROP_HEADER:
			s.headers.remove(e.key)
		}
	}
	return nil
}

// mutateRequestHeaders is ConnectionManagerUtility::mutateRequestHeaders
// (source/common/http/conn_manager_utility.cc) for kubegate's settings:
// use_remote_address true, no trusted hops, no via, request ids generated, and
// (Envoy ≥ 1.33, internal_address_config unset) no address counted as internal,
// so every request is an edge request.
func mutateRequestHeaders(s *stream) {
	if _, up := upgradeType(s.headers); !up {
		s.headers.remove("connection")
		s.headers.remove("upgrade")
	}
	s.headers.remove("x-envoy-internal")
	s.headers.remove("keep-alive")
	s.headers.remove("proxy-connection")
	s.headers.remove("transfer-encoding")
	if refs := s.headers.get("referer"); len(refs) > 1 || (len(refs) == 1 && !validReferer(refs[0])) {
		s.headers.remove("referer")
	}
	// XFF: append the peer; for a loopback peer Envoy appends its own address
	// (config.localAddress()), here the listener's local IP.
	if s.remote != nil {
		peer := s.remote.IP
		if peer.IsLoopback() && s.local != nil {
			peer = s.local.IP
		}
		s.headers.appendValue("x-forwarded-for", peer.String(), ",")
	}
	scheme := "http"
	if s.tls {
		scheme = "https"
	}
	s.headers.set("x-forwarded-proto", scheme)
	if !s.headers.has(":scheme") {
		s.headers.set(":scheme", scheme)
	}
	cleanInternalHeaders(s.headers)
	if s.remote != nil {
		s.headers.set("x-envoy-external-address", s.remote.IP.String())
	}
	// UUIDRequestIDExtension::set with force (edge request, preserve_external_request_id false).
	s.headers.set("x-request-id", uuid4())
}

// cleanInternalHeaders is ConnectionManagerUtility::cleanInternalHeaders for an edge request.
func cleanInternalHeaders(h *headerMap) {
	for _, k := range []string{
		"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
		"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
		"x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
		"x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
		"x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
		"x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
	} {
		h.remove(k)
	}
}

func validReferer(v string) bool {
	u, err := url.Parse(v)
	return err == nil && u.Scheme != "" && u.Host != ""
}

func uuid4() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// upgradeType is Utility::isUpgrade: an Upgrade header and "upgrade" among the
// Connection tokens.
func upgradeType(h *headerMap) (string, bool) {
	up := h.first("upgrade")
	if up == "" {
		return "", false
	}
	for _, tok := range strings.Split(h.first("connection"), ",") {
		if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
			return up, true
		}
	}
	return "", false
}

// matchRoute picks the virtual host by :authority and the first route that matches
// :path (route_components.proto: VirtualHost.domains, RouteMatch; route.matches).
func matchRoute(vhosts []virtualHost, h *headerMap) *route {
	vh := matchVirtualHost(vhosts, strings.ToLower(h.first(":authority")))
	if vh == nil {
		return nil
	}
	path := h.first(":path")
	for i := range vh.routes {
		if vh.routes[i].matches(path) {
			return &vh.routes[i]
		}
	}
	return nil
}

// matchVirtualHost follows VirtualHost.domains: an exact domain wins, then the
// longest suffix wildcard ("*.foo.com"), then the longest prefix wildcard
// ("foo.*"), then "*".
func matchVirtualHost(vhosts []virtualHost, host string) *virtualHost {
	var suffix, prefix, any *virtualHost
	suffixLen, prefixLen := -1, -1
	for i := range vhosts {
		for _, d := range vhosts[i].domains {
			d = strings.ToLower(d)
			switch {
			case d == host:
				return &vhosts[i]
			case d == "*":
				if any == nil {
					any = &vhosts[i]
				}
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(d) > suffixLen:
				suffix, suffixLen = &vhosts[i], len(d)
			case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(d) > prefixLen:
				prefix, prefixLen = &vhosts[i], len(d)
			}
		}
	}
	switch {
	case suffix != nil:
		return suffix
	case prefix != nil:
		return prefix
	}
	return any
}

// sendLocalReply writes a reply the way Utility::prepareLocalReply builds it: the
// filter's headers, then the local_reply_config rewrite, then content-length and a
// text/plain content type when there is a body, none of either without one;
// server: envoy (the HCM's server_name); no body for HEAD.
func (cm *connectionManager) sendLocalReply(w http.ResponseWriter, req *http.Request, s *stream, r *localReply) {
	s.details, s.flags, s.respStatus = r.details, r.flags, r.status
	if r.reset {
		// An HTTP/2 stream reset: Go's server answers a handler panic with
		// ErrAbortHandler by RST_STREAM.
		panic(http.ErrAbortHandler)
	}
	h := &headerMap{}
	for _, m := range r.headers {
		m.apply(h)
	}
	// The HCM's local_reply_config rewrite and the content-type rule (localreply.go).
	status, body := rewriteLocalReply(cm.dp.cfg.hcm.localReply, s, r, h)
	s.respStatus = status
	if body != "" {
		h.set("content-length", strconv.Itoa(len(body)))
	} else {
		h.remove("content-length")
	}
	for _, m := range s.responseHeaders {
		m.apply(h)
	}
	h.set("server", "envoy")
	if r.closeConn {
		h.set("connection", "close")
	}
	writeResponseHeaders(w, h, status)
	if body != "" && req.Method != http.MethodHead {
		n, _ := io.WriteString(w, body)
		s.bytesOut.Add(int64(n))
	}
}

// writeResponseHeaders copies h into w with lower-case names (Envoy's codecs write
// lower-case header names) and sends the status. The few headers Go's server acts
// on (framing, Date, Connection) keep Go's spelling so that it sees them; Go would
// otherwise add a second Date, frame the body twice or sniff a Content-Type, none
// of which Envoy does.
func writeResponseHeaders(w http.ResponseWriter, h *headerMap, status int) {
	out := w.Header()
	for _, e := range h.entries {
		if strings.HasPrefix(e.key, ":") {
			continue
		}
		k := e.key
		if goManaged[k] {
			k = http.CanonicalHeaderKey(k)
		}
		out[k] = append(out[k], e.value)
	}
	if _, ok := out["Content-Type"]; !ok {
		out["Content-Type"] = nil
	}
	w.WriteHeader(status)
}

var goManaged = map[string]bool{"content-length": true, "content-type": true, "connection": true, "date": true, "transfer-encoding": true, "trailer": true}

// accessLog writes the stdout access log line of the configured format (Envoy's
// default when none is set; hardening.go emulates the command operators) when
// the bootstrap configures the stdout logger.
func (cm *connectionManager) accessLog(s *stream) {
	if !cm.dp.cfg.hcm.accessLog {
		return
	}
	writeAccessLog(cm.dp.opts.AccessLog, cm.dp.cfg.hcm.accessLogFormat, s)
}

func (s *stream) status() int                 { return s.respStatus }
func (s *stream) upstreamServiceTime() string { return s.serviceTime }
