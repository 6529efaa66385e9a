package dataplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// Limits against slow and greedy clients, and the access-log format.

// Envoy's defaults (protocol.proto Http2ProtocolOptions): max_concurrent_streams
// 2147483647, initial_stream_window_size and initial_connection_window_size
// 268435456 (256 MiB).
const (
	defaultH2MaxStreams = 2147483647
	defaultH2Window     = 268435456
)

type http2Limits struct {
	maxStreams   int
	streamWindow int
	connWindow   int
}

// listenerLimits reads the listener's connection-level settings.
//
// per_connection_buffer_limit_bytes is accepted and not acted on: it is Envoy's
// flow-control watermark (reading from a connection pauses while that much is
// buffered), and no filter kubegate renders buffers a body, so it changes when
// bytes move, not what is sent; the Go server has its own, smaller buffers.
func (p *parser) listenerLimits(l *listenerv3.Listener, fc *listenerv3.FilterChain, lc *listenerConfig, path string) {
	_ = l.GetPerConnectionBufferLimitBytes()
	// listener_components.proto transport_socket_connect_timeout: unset means no
	// limit; expiry closes the connection ("summarily closed").
	lc.handshakeTimeout = duration(fc.GetTransportSocketConnectTimeout(), 0)
}

// hcmLimits reads request_headers_timeout and the downstream HTTP/2 limits.
func (p *parser) hcmLimits(h *hcmv3.HttpConnectionManager, hc *hcmConfig, path string) {
	// http_connection_manager.proto request_headers_timeout: "If not specified or
	// set to 0, this timeout is disabled."
	hc.requestHeadersTimeout = duration(h.GetRequestHeadersTimeout(), 0)
	o := h.GetHttp2ProtocolOptions()
	hc.h2 = http2Limits{maxStreams: defaultH2MaxStreams, streamWindow: defaultH2Window, connWindow: defaultH2Window}
	if v := o.GetMaxConcurrentStreams(); v != nil {
		hc.h2.maxStreams = int(v.GetValue())
	}
	if v := o.GetInitialStreamWindowSize(); v != nil {
		hc.h2.streamWindow = int(v.GetValue())
	}
	if v := o.GetInitialConnectionWindowSize(); v != nil {
		hc.h2.connWindow = int(v.GetValue())
	}
}

// handshakeListener completes each connection's TLS handshake before the HTTP
// server sees it, within transport_socket_connect_timeout: like Envoy, which hands
// a connection to the network filters (the HCM) only once the transport socket
// reports it connected, and closes it when the timeout passes first
// (ConnectionImpl transport_socket_connect_timeout, "summarily closed"). Handshakes
// run concurrently, so a slow one delays no other connection.
type handshakeListener struct {
	net.Listener
	cfg     *tls.Config
	timeout time.Duration
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	err     error // set before done is closed by the accept loop

	mu       sync.Mutex
	inFlight map[net.Conn]struct{} // connections still in their handshake
}

func newHandshakeListener(ln net.Listener, cfg *tls.Config, timeout time.Duration) *handshakeListener {
	h := &handshakeListener{Listener: ln, cfg: cfg, timeout: timeout, conns: make(chan net.Conn), done: make(chan struct{}), inFlight: map[net.Conn]struct{}{}}
	h.wg.Add(1)
	go h.acceptLoop()
	return h
}

func (h *handshakeListener) acceptLoop() {
	defer h.wg.Done()
	for {
		raw, err := h.Listener.Accept()
		if err != nil {
			h.err = err
			h.once.Do(func() { close(h.done) })
			return
		}
		h.mu.Lock()
		h.inFlight[raw] = struct{}{}
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer func() {
				h.mu.Lock()
				delete(h.inFlight, raw)
				h.mu.Unlock()
			}()
			tc := tls.Server(raw, h.cfg)
			ctx := context.Background()
			if h.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, h.timeout)
				defer cancel()
			}
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return
			}
			select {
			case h.conns <- tc:
			case <-h.done:
				tc.Close()
			}
		}()
	}
}

func (h *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		if h.err != nil {
			return nil, h.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting, ends the handshakes in progress and waits for them.
func (h *handshakeListener) Close() error {
	err := h.Listener.Close()
	h.once.Do(func() { close(h.done) })
	h.mu.Lock()
	for c := range h.inFlight {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return err
}

// The access-log formatter: the command operators of substitution_formatter.rst
// that a kubegate-like format uses. Any other is refused when the bootstrap is
// read, so a format cannot print something here that Envoy would not, or the
// reverse.

// envoyDefaultFormat is Envoy's default (access_log docs, "Default format string").
const envoyDefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// logToken is literal text or one command with its argument and truncation.
type logToken struct {
	literal string
	command string
	arg     string
	maxLen  int // 0: no truncation
}

var logCommand = regexp.MustCompile(`%([A-Z_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%`)

// accessLogFormat parses the stdout logger's format.
func (p *parser) accessLogFormat(l *streamv3.StdoutAccessLog, path string) []logToken {
	format := envoyDefaultFormat
	if f := l.GetLogFormat(); f != nil {
		src, ok := f.GetFormat().(*corev3.SubstitutionFormatString_TextFormatSource)
		if !ok {
			p.fail(path+".log_format", "only text_format_source is emulated")
			return nil
		}
		inline, ok := src.TextFormatSource.GetSpecifier().(*corev3.DataSource_InlineString)
		if !ok {
			p.fail(path+".log_format.text_format_source", "only inline_string is emulated")
			return nil
		}
		format = inline.InlineString
	}
	toks, err := parseLogFormat(format)
	if err != nil {
		p.fail(path+".log_format", "%v", err)
	}
	return toks
}

func parseLogFormat(format string) ([]logToken, error) {
	var out []logToken
	rest := format
	for rest != "" {
		loc := logCommand.FindStringSubmatchIndex(rest)
		if loc == nil {
			out = append(out, logToken{literal: rest})
			break
		}
		if loc[0] > 0 {
			out = append(out, logToken{literal: rest[:loc[0]]})
		}
		t := logToken{command: rest[loc[2]:loc[3]]}
		if loc[4] >= 0 {
			t.arg = rest[loc[4]:loc[5]]
		}
		if loc[6] >= 0 {
			t.maxLen, _ = strconv.Atoi(rest[loc[6]:loc[7]])
		}
		if err := checkLogCommand(t); err != nil {
			return nil, err
		}
		out = append(out, t)
		rest = rest[loc[1]:]
	}
	for _, t := range out {
		if strings.Contains(t.literal, "%") {
			return nil, fmt.Errorf("%q is not a command operator the test data plane emulates", t.literal)
		}
	}
	return out, nil
}

func checkLogCommand(t logToken) error {
	switch t.command {
	case "START_TIME", "PROTOCOL", "RESPONSE_CODE", "RESPONSE_FLAGS", "RESPONSE_CODE_DETAILS",
		"BYTES_RECEIVED", "BYTES_SENT", "DURATION", "UPSTREAM_HOST":
		if t.arg != "" {
			return fmt.Errorf("%%%s(%s)%%: arguments are not emulated", t.command, t.arg)
		}
	case "REQ":
	case "RESP":
		if !strings.EqualFold(t.arg, "x-envoy-upstream-service-time") {
			return fmt.Errorf("%%RESP(%s)%%: only X-ENVOY-UPSTREAM-SERVICE-TIME is emulated", t.arg)
		}
	case "PATH":
		x, y, _ := strings.Cut(t.arg, ":")
		if x != "" && x != "WQ" && x != "NQ" || y != "" && y != "ORIG" && y != "PATH" && y != "ORIG_OR_PATH" {
			return fmt.Errorf("%%PATH(%s)%%: X must be WQ or NQ and Y ORIG, PATH or ORIG_OR_PATH", t.arg)
		}
	default:
		return fmt.Errorf("%%%s%% is not a command operator the test data plane emulates", t.command)
	}
	return nil
}

// writeAccessLog formats one line for a finished stream.
func writeAccessLog(w io.Writer, toks []logToken, s *stream) {
	var b strings.Builder
	for _, t := range toks {
		if t.command == "" {
			b.WriteString(t.literal)
			continue
		}
		v := logValue(t, s)
		if v == "" {
			v = "-"
		}
		if t.maxLen > 0 && len(v) > t.maxLen {
			v = v[:t.maxLen]
		}
		b.WriteString(v)
	}
	io.WriteString(w, b.String())
}

func logValue(t logToken, s *stream) string {
	switch t.command {
	case "START_TIME":
		return s.start.UTC().Format("2006-01-02T15:04:05.000Z")
	case "PROTOCOL":
		return s.protocol
	case "RESPONSE_CODE":
		return strconv.Itoa(s.status())
	case "RESPONSE_FLAGS":
		return s.flags
	case "RESPONSE_CODE_DETAILS":
		return strings.ReplaceAll(s.details, " ", "_")
	case "BYTES_RECEIVED":
		return strconv.FormatInt(s.bytesIn.Load(), 10)
	case "BYTES_SENT":
		return strconv.FormatInt(s.bytesOut.Load(), 10)
	case "DURATION":
		return strconv.FormatInt(time.Since(s.start).Milliseconds(), 10)
	case "UPSTREAM_HOST":
		return s.upstreamAddr
	case "RESP":
		return s.upstreamServiceTime()
	case "REQ":
		// %REQ(X?Y)%: X, or Y when X is absent.
		for _, h := range strings.Split(t.arg, "?") {
			if v := s.headers.first(strings.ToLower(strings.TrimSpace(h))); v != "" {
				return v
			}
		}
		return ""
	case "PATH":
		x, y, _ := strings.Cut(t.arg, ":")
		var path string
		switch y {
		case "ORIG":
			path = s.headers.first("x-envoy-original-path")
		case "PATH":
			path = s.headers.first(":path")
		default: // ORIG_OR_PATH
			if path = s.headers.first("x-envoy-original-path"); path == "" {
				path = s.headers.first(":path")
			}
		}
		if x == "NQ" {
			path, _, _ = strings.Cut(path, "?")
		}
		return path
	}
	return ""
}
