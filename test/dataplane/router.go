package dataplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// router is envoy.filters.http.router for HTTP/1.1 upstream clusters
// (source/common/router/router.cc, the upstream request written by
// source/common/http/http1/codec_impl.cc).
type router struct {
	clusters map[string]*upstreamCluster
	observe  func(UpstreamRequest)
	log      *slog.Logger
	idle     time.Duration // the HCM's stream_idle_timeout
}

// creds are the clusters' upstream credential injectors, by cluster name.
func newRouter(cfg *config, breakers map[string]*breaker, creds map[string]*credentialFilter, observe func(UpstreamRequest), log *slog.Logger) (*router, error) {
	r := &router{clusters: map[string]*upstreamCluster{}, observe: observe, log: log, idle: cfg.hcm.streamIdleTimeout}
	for _, vh := range cfg.hcm.routes {
		for _, rt := range vh.routes {
			if rt.direct != nil || rt.cluster == "" {
				continue // answered by the router itself, or a cluster_header route
			}
			if cc := cfg.clusterFor(rt.cluster); cc.http2 {
				return nil, fmt.Errorf("route %q: HTTP/2 to the upstream cluster %q is not emulated (and breaks SPDY and WebSocket upgrades; kubegate renders HTTP/1.1)", rt.name, cc.name)
			}
		}
	}
	// Every cluster can be a route's: a cluster_header route names any of them.
	for name, cc := range cfg.clusters {
		uc := &upstreamCluster{cfg: cc, breaker: breakers[cc.name], cred: creds[name], grpc: cc.http2}
		if cc.tls != nil {
			uc.tls = cc.tls.tlsConfig()
		}
		r.clusters[name] = uc
	}
	return r, nil
}

func (r *router) close() {
	for _, c := range r.clusters {
		c.closeIdle()
	}
}

// upstreamCluster holds a cluster's idle HTTP/1.1 connections.
type upstreamCluster struct {
	cfg     *clusterConfig
	tls     *tls.Config // nil: plain text
	breaker *breaker
	// cred is the cluster's upstream credential_injector (nil: none).
	cred *credentialFilter
	// grpc: an HTTP/2 cluster (kubegate's services), never a route's upstream.
	grpc bool

	mu   sync.Mutex
	idle []*upstreamConn
}

type upstreamConn struct {
	net.Conn
	br *bufio.Reader
	// idleRead delivers the result of the read that watches an idle connection:
	// Envoy notices a peer's close from the connection's read event.
	idleRead chan error
	// idleTimer closes the connection once it has been idle for the cluster's
	// idle_timeout; nil when the timeout is 0 (disabled).
	idleTimer *time.Timer
}

// get returns a live idle connection or a new one.
func (c *upstreamCluster) get(ctx context.Context) (*upstreamConn, error) {
	c.mu.Lock()
	for len(c.idle) > 0 {
		uc := c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		// Taken off the list under the lock, so a timer firing now finds nothing
		// to close (expire).
		if uc.idleTimer != nil {
			uc.idleTimer.Stop()
		}
		if uc.reclaim() {
			c.mu.Unlock()
			return uc, nil
		}
		uc.Close()
	}
	c.mu.Unlock()
	conn, err := c.cfg.dial(ctx)
	if err != nil {
		return nil, err
	}
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.connectTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS_error: %w", err)
		}
		conn = tc
	}
	return &upstreamConn{Conn: conn, br: bufio.NewReader(conn)}, nil
}

// put parks a connection, watching it with a read: data or EOF while idle means
// it cannot be reused. It is closed after the cluster's idle_timeout with no
// request: "The idle timeout is defined as the period in which there are no
// active requests. When the idle timeout is reached the connection will be
// closed" (protocol.proto, HttpProtocolOptions.idle_timeout; Envoy's codec client
// arms the timer when its last active request completes and disarms it when a new
// one starts, source/common/http/codec_client.cc). A connection carrying a
// request, however quiet (a watch, `logs -f`, an upgraded exec stream), is never
// parked, so the timeout cannot cut it.
func (c *upstreamCluster) put(uc *upstreamConn) {
	uc.idleRead = make(chan error, 1)
	go func() {
		_, err := uc.br.Peek(1)
		uc.idleRead <- err
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.cfg.idleTimeout; d > 0 {
		uc.idleTimer = time.AfterFunc(d, func() { c.expire(uc) })
	}
	c.idle = append(c.idle, uc)
}

// expire closes uc if it is still parked: its idle_timeout has passed.
func (c *upstreamCluster) expire(uc *upstreamConn) {
	c.mu.Lock()
	i := slices.Index(c.idle, uc)
	if i >= 0 {
		c.idle = slices.Delete(c.idle, i, i+1)
	}
	c.mu.Unlock()
	if i >= 0 {
		uc.Close()
	}
}

// reclaim stops the idle read and reports whether the connection is still good:
// only a read cut short by the deadline set here means nothing happened on it.
func (uc *upstreamConn) reclaim() bool {
	uc.SetReadDeadline(time.Unix(1, 0))
	err := <-uc.idleRead
	uc.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && uc.br.Buffered() == 0
}

func (c *upstreamCluster) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, uc := range c.idle {
		if uc.idleTimer != nil {
			uc.idleTimer.Stop()
		}
		uc.Close()
	}
	c.idle = nil
}

// Local replies of the router (router.cc): the body text Envoy sends.
const (
	upstreamResetPrefix = "upstream connect error or disconnect/reset before headers. reset reason: "
)

// forward sends the request upstream and the response downstream.
func (r *router) forward(dpCtx context.Context, w http.ResponseWriter, req *http.Request, s *stream, cm *connectionManager) {
	rt := s.route
	c, reply := r.upstreamClusterFor(rt, s)
	if reply != nil {
		cm.sendLocalReply(w, req, s, reply)
		return
	}
	finalizeRequestHeaders(s, rt)

	release, ok := c.breaker.acquire()
	if !ok {
		cm.sendLocalReply(w, req, s, &localReply{
			status: http.StatusServiceUnavailable, body: upstreamResetPrefix + "overflow",
			headers: []headerMutation{{key: "x-envoy-overloaded", value: "true", action: actionSet}},
			details: "upstream_reset_before_response_started{overflow}", flags: "UO",
		})
		return
	}
	defer release()

	// The cluster's upstream HTTP filters run on the request the router hands
	// the upstream request (UpstreamRequest::acceptHeadersFromRouter), before
	// upstream_codec sends it. Their local reply goes "via the downstream HTTP
	// filter manager" (UpstreamFilterManager::sendLocalReply,
	// source/common/router/upstream_request.cc), so local_reply_config applies.
	if c.cred != nil {
		if reply := c.cred.decodeHeaders(req.Context(), s); reply != nil {
			cm.sendLocalReply(w, req, s, reply)
			return
		}
	}

	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(dpCtx, cancel) // Close ends streams, upgraded ones included
	defer stop()
	idled := make(chan struct{})
	idle := newIdleTimer(r.idle, func() { close(idled); cancel() })
	defer idle.stop()

	uc, err := c.get(ctx)
	if err != nil {
		r.log.Debug("upstream connection failed", "cluster", c.cfg.name, "error", err)
		cm.sendLocalReply(w, req, s, &localReply{
			status:  http.StatusServiceUnavailable,
			body:    upstreamResetPrefix + "connection failure, transport failure reason: " + err.Error(),
			details: "upstream_reset_before_response_started{connection_failure}", flags: "UF",
		})
		return
	}
	s.upstreamAddr = uc.RemoteAddr().String()
	done := make(chan struct{})
	defer close(done)
	go func() { // tear the connection down when the stream ends abnormally
		select {
		case <-ctx.Done():
			uc.Close()
		case <-done:
		}
	}()

	// The route timeout (RouteAction.timeout; 0 disables it) starts once the
	// whole downstream request has been sent (Filter::onRequestComplete arms
	// response_timeout_) and covers the response to its end; on expiry the router
	// answers 504 "upstream request timeout" if no response headers went
	// downstream yet, and resets the stream otherwise (Filter::onResponseTimeout →
	// onUpstreamTimeout, response flag UT, details upstream_response_timeout,
	// source/common/router/router.cc). An upgraded stream stays under it too.
	rto := newRouteTimer(rt.timeout, cancel)
	defer rto.stop()

	_, upgrade := upgradeType(s.headers)
	head, chunked := r.requestHead(s, c.cfg.name)
	sent := time.Now()
	if _, err := uc.Write(head); err != nil {
		uc.Close()
		r.resetBeforeResponse(w, req, s, cm, err, idled)
		return
	}
	bodyDone := make(chan error, 1)
	if s.endStream || upgrade {
		rto.start()
		bodyDone <- nil
	} else {
		go func() {
			err := copyRequestBody(uc, s, req.Body, chunked, idle)
			if err == nil {
				rto.start()
			}
			bodyDone <- err
		}()
	}

	resp, err := http.ReadResponse(uc.br, &http.Request{Method: s.headers.first(":method")})
	if err != nil {
		uc.Close()
		if rto.fired() {
			cm.sendLocalReply(w, req, s, &localReply{status: http.StatusGatewayTimeout, body: "upstream request timeout", details: "upstream_response_timeout", flags: "UT"})
			return
		}
		r.resetBeforeResponse(w, req, s, cm, err, idled)
		return
	}
	idle.touch()
	s.serviceTime = strconv.FormatInt(time.Since(sent).Milliseconds(), 10)
	if upgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		r.upgrade(ctx, w, s, uc, resp, idle)
		return
	}
	r.respond(w, req, s, resp, idle, idled)
	if resp.Close || ctx.Err() != nil {
		uc.Close() // also unblocks a request body the upstream did not read
		<-bodyDone
		return
	}
	if err := <-bodyDone; err != nil {
		uc.Close()
		return
	}
	c.put(uc)
}

func fired(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// finalizeRequestHeaders is RouteEntryImplBase::finalizePathHeader for a prefix
// route: prefix_rewrite replaces the matched prefix, and the original path is kept
// in x-envoy-original-path (insert_envoy_original_path: the router's
// suppress_envoy_headers is false). With timeout 0 the router sends no
// x-envoy-expected-rq-timeout-ms (FilterUtility::setTimeoutHeaders); with a
// route timeout it sends that timeout in milliseconds ("if
// (insert_envoy_expected_request_timeout_ms && expected_timeout > 0)", the
// router's suppress_envoy_headers being false). The route's
// request_headers_to_remove go last (RouteEntryImplBase::finalizeRequestHeaders,
// HeaderParser::evaluateHeaders removing every line of each name).
func finalizeRequestHeaders(s *stream, rt *route) {
	path := s.headers.first(":path")
	if rt.prefixRewrite != "" {
		s.headers.set("x-envoy-original-path", path)
		s.headers.set(":path", rt.prefixRewrite+path[len(rt.prefix):])
	}
	if rt.timeout > 0 {
		s.headers.set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(rt.timeout.Milliseconds(), 10))
	}
	for _, h := range rt.requestRemoves {
		s.headers.remove(h)
	}
}

// requestHead writes the request line and headers as Envoy's HTTP/1 encoder does
// (RequestEncoderImpl::encodeHeaders, StreamEncoderImpl::encodeHeadersBase):
// ":method :path HTTP/1.1", then every header-map entry in order with :authority
// written as "host" and other pseudo-headers skipped, lower-case names, then the
// framing: the request's own content-length, or "transfer-encoding: chunked" for a
// body of unknown length, or "content-length: 0" for a body-less request of a
// method that may carry one. An upgrade request gets no framing: the bytes after
// the headers are the upgraded stream.
func (r *router) requestHead(s *stream, cluster string) ([]byte, bool) {
	var b strings.Builder
	method := s.headers.first(":method")
	target := s.headers.first(":path")
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	var fields []HeaderField
	for _, e := range s.headers.entries {
		k := e.key
		if k == ":authority" {
			k = "host"
		}
		if strings.HasPrefix(k, ":") {
			continue
		}
		fields = append(fields, HeaderField{k, e.value})
	}
	_, upgrade := upgradeType(s.headers)
	chunked := false
	switch {
	case upgrade, s.headers.has("content-length"):
	case !s.endStream:
		fields = append(fields, HeaderField{"transfer-encoding", "chunked"})
		chunked = true
	case !bodilessMethod(method):
		fields = append(fields, HeaderField{"content-length", "0"})
	}
	for _, f := range fields {
		fmt.Fprintf(&b, "%s: %s\r\n", f.Name, f.Value)
	}
	b.WriteString("\r\n")
	if r.observe != nil {
		r.observe(UpstreamRequest{Cluster: cluster, Method: method, Target: target, Header: fields})
	}
	return []byte(b.String()), chunked
}

// bodilessMethod: requests that by RFC 7230 §3.3.2 need no Content-Length: 0.
func bodilessMethod(m string) bool {
	return slices.Contains([]string{"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"}, m)
}

func copyRequestBody(w io.Writer, s *stream, body io.Reader, chunked bool, idle *idleTimer) error {
	dst := w
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(w)
		dst = cw
	}
	n, err := io.Copy(dst, idle.reader(body))
	s.bytesIn.Add(n)
	if err != nil {
		return err
	}
	if cw != nil {
		if err := cw.Close(); err != nil {
			return err
		}
		_, err = io.WriteString(w, "\r\n") // the empty trailer section
	}
	return err
}

// resetBeforeResponse answers a request whose upstream failed before the response
// headers: 408 "stream timeout" after the stream idle timeout
// (ActiveStream::onIdleTimeout), 503 otherwise.
func (r *router) resetBeforeResponse(w http.ResponseWriter, req *http.Request, s *stream, cm *connectionManager, err error, idled chan struct{}) {
	if fired(idled) {
		cm.sendLocalReply(w, req, s, &localReply{status: http.StatusRequestTimeout, body: "stream timeout", details: "stream_idle_timeout", flags: "SI"})
		return
	}
	if req.Context().Err() != nil {
		return // the client went away
	}
	r.log.Debug("upstream reset before response", "error", err)
	cm.sendLocalReply(w, req, s, &localReply{
		status: http.StatusServiceUnavailable, body: upstreamResetPrefix + "connection termination",
		details: "upstream_reset_before_response_started{connection_termination}", flags: "UC",
	})
}

// responseHeaders is ConnectionManagerUtility::mutateResponseHeaders plus what the
// router and the HCM add: hop-by-hop headers dropped (Connection and Upgrade kept
// on a 101), server: envoy (server_header_transformation OVERWRITE), and
// x-envoy-upstream-service-time.
func responseHeaders(s *stream, resp *http.Response) *headerMap {
	h := &headerMap{}
	names := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for _, v := range resp.Header[k] {
			h.add(k, v)
		}
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		h.remove("connection")
		h.remove("upgrade")
	}
	h.remove("transfer-encoding")
	h.remove("keep-alive")
	h.remove("proxy-connection")
	// The route's response_headers_to_remove, applied by the router
	// (Filter::onUpstreamHeaders → RouteEntryImplBase::finalizeResponseHeaders),
	// before the encoder filters (ext_authz's response headers) run.
	if s.route != nil {
		for _, k := range s.route.responseRemoves {
			h.remove(k)
		}
	}
	for _, m := range s.responseHeaders {
		m.apply(h)
	}
	h.set("server", "envoy")
	h.set("x-envoy-upstream-service-time", s.serviceTime)
	return h
}

// respond streams the response: every chunk read from upstream is written and
// flushed at once, so watches and `logs -f` are not buffered.
func (r *router) respond(w http.ResponseWriter, req *http.Request, s *stream, resp *http.Response, idle *idleTimer, idled chan struct{}) {
	defer resp.Body.Close()
	s.respStatus = resp.StatusCode
	h := responseHeaders(s, resp)
	if resp.ContentLength >= 0 && !h.has("content-length") && req.Method != http.MethodHead {
		h.set("content-length", strconv.FormatInt(resp.ContentLength, 10))
	}
	writeResponseHeaders(w, h, resp.StatusCode)
	rc := http.NewResponseController(w)
	rc.Flush()
	buf := make([]byte, 32*1024)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			idle.touch()
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			s.bytesOut.Add(int64(n))
			rc.Flush()
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			// The upstream reset mid-response (or the idle timeout cut it): Envoy
			// resets the downstream stream.
			s.flags = "UR"
			if fired(idled) {
				s.flags = "SI"
			}
			panic(http.ErrAbortHandler)
		}
	}
}

// upgrade passes a 101 through and then bytes in both directions unchanged until
// either side ends (an upgraded stream is a TCP-like tunnel in Envoy's HCM).
func (r *router) upgrade(ctx context.Context, w http.ResponseWriter, s *stream, uc *upstreamConn, resp *http.Response, idle *idleTimer) {
	defer uc.Close()
	s.respStatus = resp.StatusCode
	h := responseHeaders(s, resp)
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // HTTP/2 downstream: no HTTP/1 upgrade to hand back
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for _, e := range h.entries {
		fmt.Fprintf(&b, "%s: %s\r\n", e.key, e.value)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return
	}
	// Bytes either side sent right after the headers are already buffered.
	down := io.MultiReader(io.LimitReader(brw.Reader, int64(brw.Reader.Buffered())), conn)
	up := io.MultiReader(io.LimitReader(uc.br, int64(uc.br.Buffered())), uc.Conn)
	errc := make(chan error, 2)
	go func() {
		n, err := io.Copy(uc.Conn, idle.reader(down))
		s.bytesIn.Add(n)
		closeWrite(uc.Conn)
		errc <- err
	}()
	go func() {
		n, err := io.Copy(conn, idle.reader(up))
		s.bytesOut.Add(n)
		closeWrite(conn)
		errc <- err
	}()
	for range 2 {
		select {
		case <-errc:
		case <-ctx.Done():
			return
		}
	}
}

func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
	}
}

// routeTimer is the route timeout: armed by start once the request is sent,
// cancelling the stream when it fires (0: never).
type routeTimer struct {
	d      time.Duration
	cancel func()
	mu     sync.Mutex
	t      *time.Timer
	hit    bool
}

func newRouteTimer(d time.Duration, cancel func()) *routeTimer {
	return &routeTimer{d: d, cancel: cancel}
}

func (rt *routeTimer) start() {
	if rt.d <= 0 {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.t = time.AfterFunc(rt.d, func() {
		rt.mu.Lock()
		rt.hit = true
		rt.mu.Unlock()
		rt.cancel()
	})
}

func (rt *routeTimer) stop() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.t != nil {
		rt.t.Stop()
	}
}

func (rt *routeTimer) fired() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.hit
}

// idleTimer is the HCM's stream_idle_timeout: it ends the stream when no bytes
// have moved in either direction for that long (0 disables it).
type idleTimer struct {
	d time.Duration
	t *time.Timer
}

func newIdleTimer(d time.Duration, expire func()) *idleTimer {
	it := &idleTimer{d: d}
	if d > 0 {
		it.t = time.AfterFunc(d, expire)
	}
	return it
}

func (it *idleTimer) touch() {
	if it.t != nil {
		it.t.Reset(it.d)
	}
}

func (it *idleTimer) stop() {
	if it.t != nil {
		it.t.Stop()
	}
}

func (it *idleTimer) reader(r io.Reader) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		if n > 0 {
			it.touch()
		}
		return n, err
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
