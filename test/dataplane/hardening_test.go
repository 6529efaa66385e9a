package dataplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
)

// countingAuthz is kubegate authz behind a counter of Check calls.
type countingAuthz struct {
	authv3.AuthorizationServer
	calls atomic.Int64
}

func (c *countingAuthz) Check(ctx context.Context, r *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	c.calls.Add(1)
	return c.AuthorizationServer.Check(ctx, r)
}

// clientFrom is an HTTP/1.1 client whose connections come from a given loopback
// address (127.0.0.0/8 is all loopback on Linux): another client, to the rate limit.
func clientFrom(t *testing.T, c certs, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool(t)}, DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestClientRateLimitFromTheAttackersSide floods the gateway with made-up tokens
// from one address: after the bucket is empty Envoy's local rate limit answers 429
// itself, so kubegate authz (and GitLab behind it) sees only the bucket's worth of
// them, and the API server nothing. Another address keeps its own bucket.
func TestClientRateLimitFromTheAttackersSide(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	authz := &countingAuthz{AuthorizationServer: realAuthzServer(t)}
	authzAddr := serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, authz) })
	const burst, flood = 5, 40
	var obs observed
	dp := start(t, render(t, c, setup{authz: authzAddr, extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.ClientRateLimit, o.ClientRateBurst = 1, burst }}), Options{OnUpstreamRequest: obs.record})

	attacker := clientFrom(t, c, "127.0.0.1")
	began := time.Now()
	counts := map[int]int{}
	for i := range flood {
		status, h, body := do(t, attacker, "GET", dp.URL()+"/k8s-proxy/api/v1/secrets", http.Header{"Authorization": {"Bearer pat:1:junk-token-" + strconv.Itoa(i)}})
		counts[status]++
		// Envoy's own answer is text/plain "local_rate_limited" (local_ratelimit.cc);
		// the rendered local_reply_config maps it to a Status the user can act on.
		if status == http.StatusTooManyRequests && (!strings.Contains(body, `"reason":"TooManyRequests"`) || !strings.Contains(body, "too many requests from your address") ||
			h.Get("Content-Type") != "application/json" || h.Get("X-Kubegate-Error") != envoy.ReasonRateLimited || h.Get("Retry-After") != "1") {
			t.Errorf("429 answer %q (%v), want kubegate's rate_limited Status with Retry-After", body, h)
		}
	}
	// The bucket holds burst tokens and gains one a second.
	allowed := burst + int(time.Since(began)/time.Second)
	if counts[http.StatusUnauthorized] > allowed || counts[http.StatusUnauthorized]+counts[http.StatusTooManyRequests] != flood {
		t.Errorf("statuses %v: want at most %d 401s, the rest 429", counts, allowed)
	}
	if got := authz.calls.Load(); got != int64(counts[http.StatusUnauthorized]) {
		t.Errorf("kubegate authz saw %d Check calls, want only the %d requests the bucket let through", got, counts[http.StatusUnauthorized])
	}
	// The limit is per address, not per 401: the attacker's address is out of
	// tokens for anyone using it (users behind one NAT share a bucket).
	if status, _, _ := do(t, attacker, "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}}); status != http.StatusTooManyRequests {
		t.Errorf("alice from the flooding address: %d, want 429", status)
	}
	if n := len(rec.requests()) + len(obs.all()); n != 0 {
		t.Fatalf("%d requests reached the API server", n)
	}
	// Another client address has its own bucket.
	other := clientFrom(t, c, "127.0.0.2")
	if status, _, body := do(t, other, "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}}); status != http.StatusOK {
		t.Errorf("alice from another address: %d %s, want 200", status, body)
	}
}

// TestSlowClients: a client that opens TCP and never completes TLS, and one that
// sends its headers slowly, are cut off by transport_socket_connect_timeout and
// request_headers_timeout; neither holds its connection, nothing goes upstream,
// and other clients are served meanwhile.
func TestSlowClients(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var obs observed
	const timeout = 300 * time.Millisecond
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.RequestHeadersTimeout, o.TLSHandshakeTimeout = timeout, timeout }}), Options{OnUpstreamRequest: obs.record})
	addr := strings.TrimPrefix(dp.URL(), "https://")

	// closedByServer reads until the server ends the connection; a read deadline
	// far above the timeout only keeps a broken test from hanging.
	closedByServer := func(t *testing.T, conn net.Conn) []byte {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(conn)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the server kept the connection open")
		}
		return got
	}
	tests := []struct {
		name  string
		slowC func(t *testing.T) net.Conn
	}{
		{"TLS handshake never finished", func(t *testing.T) net.Conn {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conn.Write([]byte{0x16, 0x03, 0x01}) // the first bytes of a ClientHello, then nothing
			return conn
		}},
		{"headers never finished", func(t *testing.T) net.Conn {
			conn, err := tls.Dial("tcp", addr, c.clientTLS(t, "http/1.1"))
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, "GET /k8s-proxy/api/v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "+alicePAT()+"\r\n")
			return conn
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slow := tt.slowC(t)
			defer slow.Close()
			// Served while the slow client waits.
			if status, _, body := do(t, client(t, c, false), "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}}); status != http.StatusOK {
				t.Fatalf("other client: %d %s", status, body)
			}
			before := len(obs.all())
			if got := closedByServer(t, slow); bytes.Contains(got, []byte("200")) {
				t.Errorf("the slow client got an answer: %q", got)
			}
			if len(obs.all()) != before {
				t.Error("the slow request reached the API server")
			}
		})
	}
}

// TestHTTP2Limits: the listener tells an HTTP/2 client its stream and window
// limits, and a stream beyond max_concurrent_streams is reset without reaching the
// API server.
func TestHTTP2Limits(t *testing.T) {
	c := newCerts(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	_, xds := realXDS(t, agentToken)
	const streams, window, connWindow = 1, 70000, 1 << 20
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) {
			o.MaxConcurrentStreams, o.InitialStreamWindowSize, o.InitialConnectionWindowSize = streams, window, connWindow
		}}), Options{})

	conn, err := tls.Dial("tcp", strings.TrimPrefix(dp.URL(), "https://"), c.clientTLS(t, "h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, http2.ClientPreface)
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var settings []http2.Setting
	var connIncrement uint32
	for settings == nil || connIncrement == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's preface: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				f.ForeachSetting(func(s http2.Setting) error { settings = append(settings, s); return nil })
				fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connIncrement = f.Increment
			}
		}
	}
	want := map[http2.SettingID]uint32{http2.SettingMaxConcurrentStreams: streams, http2.SettingInitialWindowSize: window}
	for _, s := range settings {
		if v, ok := want[s.ID]; ok {
			if s.Val != v {
				t.Errorf("%v = %d, want %d", s.ID, s.Val, v)
			}
			delete(want, s.ID)
		}
	}
	if len(want) > 0 {
		t.Errorf("settings %v lack %v", settings, want)
	}
	if got := connIncrement + 65535; got != connWindow {
		t.Errorf("connection window %d, want %d", got, connWindow)
	}

	// Stream 1 waits at the API server; stream 3 is one too many.
	headers := func(id uint32) {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "127.0.0.1"},
			{":path", "/k8s-proxy/api/v1/namespaces"}, {"authorization", alicePAT()}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	headers(1)
	for deadline := time.Now().Add(10 * time.Second); len(rec.requests()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("stream 1 never reached the API server")
		}
	}
	headers(3)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for stream 3 to be refused: %v", err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 3 {
			t.Logf("stream 3 reset with %v", rst.ErrCode)
			break
		}
		if f.Header().StreamID == 3 {
			t.Fatalf("stream 3 was served: %v", f)
		}
	}
	unblock()
	if n := len(rec.requests()); n != 1 {
		t.Errorf("%d requests reached the API server, want only stream 1", n)
	}
}

// syncBuffer is an access-log sink safe for the data plane's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAccessLogOmitsCredentials: a refused request whose query carries the
// credential parameters leaves the path in the access log, not the query, and
// never the Authorization value.
func TestAccessLogOmitsCredentials(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var log syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dp, err := Start(ctx, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{AccessLog: &log})
	if err != nil {
		t.Fatal(err)
	}
	const secret = "csrf-s3cr3t-value"
	status, _, _ := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/pods?gitlab-agent-id=1&gitlab-csrf-token="+secret+"&watch=1",
		http.Header{"Authorization": {"Bearer pat:1:made-up-token"}, "Cookie": {"_gitlab_session=" + secret}})
	if status != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", status)
	}
	dp.Close() // every line is written
	line := log.String()
	t.Logf("access log: %s", line)
	if !strings.Contains(line, `"GET /k8s-proxy/api/v1/pods HTTP/2" 401`) {
		t.Errorf("the line lacks the request without its query")
	}
	for _, leak := range []string{secret, "gitlab-csrf-token", "made-up-token", "watch=1"} {
		if strings.Contains(line, leak) {
			t.Errorf("the access log contains %q", leak)
		}
	}
	if len(rec.requests()) != 0 {
		t.Error("the refused request reached the API server")
	}
}

// relayUnix listens on a unix socket and relays each connection to a TCP address:
// the kubegate services of these tests listen on TCP, the bootstrap names sockets.
func relayUnix(t *testing.T, tcpAddr string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", tcpAddr)
			if err != nil {
				in.Close()
				continue
			}
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return "unix://" + path
}

// TestUnixSocketServices: with every kubegate service on a unix socket (as in
// docker-compose.yaml), the data plane dials the gRPC clusters' pipes and serves.
func TestUnixSocketServices(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var obs observed
	s := setup{authz: relayUnix(t, realAuthz(t)), extproc: relayUnix(t, realExtProc(t)), xds: relayUnix(t, xds), apiserver: rec.url(), caFile: rec.caFile}
	y := render(t, c, s)
	if !bytes.Contains(y, []byte("pipe:")) {
		t.Fatal("the bootstrap names no pipe address")
	}
	dp := start(t, y, Options{OnUpstreamRequest: obs.record})
	status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}})
	if status != http.StatusOK {
		t.Fatalf("status %d %s", status, body)
	}
	u := obs.last(t)
	if got := u.Values("impersonate-user"); len(got) != 1 || got[0] != "gitlab:user:alice" {
		t.Errorf("impersonate-user %q", got)
	}
}
