package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/envoy"
)

// TestRouting: prefix match and prefix_rewrite with x-envoy-original-path; the
// Kubernetes API's top-level paths (path_separated_prefix) forwarded as they are;
// the HCM's path normalization before anything sees the path; other requests
// outside /k8s-proxy/ match kubegate's catch-all direct_response route, so
// ext_authz is still asked (here it allows) and the router answers 404 without an
// upstream.
func TestRouting(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	authz := &authzDouble{}
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	host := strings.TrimPrefix(dp.URL(), "https://")

	tests := []struct {
		name         string
		target       string
		wantStatus   int
		wantUpstream string // "" when nothing must reach the upstream
		wantChecked  string // the :path ext_authz saw, "" when it must not be asked
	}{
		{"prefix rewritten", "/k8s-proxy/api/v1/pods?watch=1", 200, "/api/v1/pods?watch=1", "/k8s-proxy/api/v1/pods?watch=1"},
		{"dot segments resolved first", "/k8s-proxy/api/v1/x/../pods", 200, "/api/v1/pods", "/k8s-proxy/api/v1/pods"},
		{"encoded dot segments too", "/k8s-proxy/api/%2e%2e/api/v1", 200, "/api/v1", "/k8s-proxy/api/v1"},
		{"slashes merged", "/k8s-proxy//api///v1", 200, "/api/v1", "/k8s-proxy/api/v1"},
		{"escaped slash refused", "/k8s-proxy/api/v1/namespaces/a%2Fb", 400, "", ""},
		{"a top-level API path, as it is", "/api/v1/pods", 200, "/api/v1/pods", "/api/v1/pods"},
		{"a top-level API root itself", "/version?timeout=1s", 200, "/version?timeout=1s", "/version?timeout=1s"},
		{"a path that only starts like a root", "/apiary", 404, "", "/apiary"},
		{"outside the prefix and the API's paths", "/metrics", 404, "", "/metrics"},
		{"the prefix without its slash", "/k8s-proxy", 404, "", "/k8s-proxy"},
		{"escaping the prefix with dot segments", "/k8s-proxy/../apis/apps/v1", 200, "/apis/apps/v1", "/apis/apps/v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, beforeChecks := len(obs.all()), len(authz.requests())
			status, _ := rawRequest(t, c, host, "GET "+tt.target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			if status != tt.wantStatus {
				t.Errorf("status %d, want %d", status, tt.wantStatus)
			}
			ups := obs.all()[before:]
			switch {
			case tt.wantUpstream == "" && len(ups) > 0:
				t.Errorf("reached the upstream as %q", ups[0].Target)
			case tt.wantUpstream != "" && (len(ups) != 1 || ups[0].Target != tt.wantUpstream):
				t.Errorf("upstream requests %v, want one to %q", ups, tt.wantUpstream)
			case tt.wantUpstream != "" && tt.wantChecked != "":
				// A rewritten path keeps the original in x-envoy-original-path; a
				// top-level one goes as it is, without it.
				want := []string{tt.wantChecked}
				if tt.wantChecked == tt.wantUpstream {
					want = nil
				}
				if got := ups[0].Values("x-envoy-original-path"); !slices.Equal(got, want) {
					t.Errorf("x-envoy-original-path %q, want %q", got, want)
				}
			}
			checks := authz.requests()[beforeChecks:]
			switch {
			case tt.wantChecked == "" && len(checks) > 0:
				t.Errorf("ext_authz was asked about %q", checks[0].GetAttributes().GetRequest().GetHttp().GetPath())
			case tt.wantChecked != "" && (len(checks) != 1 || checks[0].GetAttributes().GetRequest().GetHttp().GetPath() != tt.wantChecked):
				t.Errorf("ext_authz checks %d, want one of %q", len(checks), tt.wantChecked)
			}
		})
	}
}

// TestOutsideThePrefixWithKubegateServices: for a path neither under /k8s-proxy/
// nor one of the API's top-level paths, the catch-all route makes ext_authz
// run, and kubegate authz answers its own 400 that names the prefix. (Without that
// route Envoy would skip ext_authz and kubegate extproc would refuse the request for
// lack of a decision.)
func TestOutsideThePrefixWithKubegateServices(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/metrics", http.Header{"Authorization": {alicePAT()}})
	if status != http.StatusBadRequest || !strings.Contains(body, "under /k8s-proxy/") {
		t.Errorf("got %d %q, want kubegate authz's 400 naming the prefix", status, body)
	}
}

// rawRequest writes an HTTP/1.1 request as bytes (so no client library cleans the
// path) and returns the status and the raw response.
func rawRequest(t testing.TB, c certs, host, request string) (int, string) {
	t.Helper()
	conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: c.pool(t), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	resp.Write(&b)
	return resp.StatusCode, b.String()
}

// TestRequestFraming: the HTTP/1.1 upstream request carries the downstream
// Content-Length, or chunked transfer-encoding for an HTTP/2 body of unknown
// length, and the body arrives whole.
func TestRequestFraming(t *testing.T) {
	c := newCerts(t)
	type got struct {
		body    string
		chunked bool
		length  int64
	}
	bodies := make(chan got, 4)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- got{string(b), slices.Contains(r.TransferEncoding, "chunked"), r.ContentLength}
	})
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})

	t.Run("content-length", func(t *testing.T) {
		resp, err := client(t, c, false).Post(dp.URL()+"/k8s-proxy/api/v1/namespaces", "application/json", strings.NewReader(`{"kind":"Namespace"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if g := <-bodies; g.body != `{"kind":"Namespace"}` || g.chunked || g.length != 20 {
			t.Errorf("upstream got %+v", g)
		}
	})
	t.Run("h2 body of unknown length", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			io.WriteString(pw, "part one, ")
			io.WriteString(pw, "part two")
			pw.Close()
		}()
		resp, err := client(t, c, true).Post(dp.URL()+"/k8s-proxy/api/v1/namespaces", "application/json", pr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if g := <-bodies; g.body != "part one, part two" || !g.chunked {
			t.Errorf("upstream got %+v, want the body chunked", g)
		}
	})
}

// TestStreamingIsFlushed: each piece of a streamed response (a watch, logs -f)
// reaches the client before the upstream sends the next. The upstream waits for
// the client to have read the first event, so a buffering proxy would hang here.
func TestStreamingIsFlushed(t *testing.T) {
	c := newCerts(t)
	next := make(chan struct{})
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"type":"ADDED"}`+"\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, `{"type":"MODIFIED"}`+"\n")
	})
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})

	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprint("h2=", h2), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang guard only
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", dp.URL()+"/k8s-proxy/api/v1/pods?watch=true", nil)
			resp, err := client(t, c, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, err := br.ReadString('\n')
			if err != nil || first != `{"type":"ADDED"}`+"\n" {
				t.Fatalf("first event %q, %v", first, err)
			}
			next <- struct{}{}
			second, err := br.ReadString('\n')
			if err != nil || second != `{"type":"MODIFIED"}`+"\n" {
				t.Fatalf("second event %q, %v", second, err)
			}
		})
	}
}

// upgradeUpstream answers an upgrade with 101, then sends a greeting and echoes
// every byte back, so both directions can be compared byte for byte.
func upgradeUpstream(t testing.TB) *recorder {
	return newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			http.Error(w, "not an upgrade", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("refuse") != "" {
			http.Error(w, "upgrade refused", http.StatusForbidden)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\n\r\ngreeting\x00\xff", r.Header.Get("Upgrade"))
		io.Copy(conn, brw)
	})
}

// allBytes is every byte value, twice, to catch any re-encoding.
func allBytes() []byte {
	b := make([]byte, 512)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// TestUpgradesPassThrough: SPDY/3.1 and WebSocket upgrades reach the upstream over
// HTTP/1.1 with Connection and Upgrade kept and the agent token injected; the 101
// comes back and then bytes flow unchanged both ways, including bytes the client
// sends with the request and the upstream sends with its 101.
func TestUpgradesPassThrough(t *testing.T) {
	c := newCerts(t)
	rec := upgradeUpstream(t)
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	host := strings.TrimPrefix(dp.URL(), "https://")

	for _, up := range []string{"SPDY/3.1", "websocket"} {
		t.Run(up, func(t *testing.T) {
			conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: c.pool(t), NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hang guard only
			early := []byte("early\x00")
			req := "GET /k8s-proxy/api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: " + host +
				"\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\n\r\n"
			if _, err := conn.Write(append([]byte(req), early...)); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != up {
				t.Fatalf("got %s, upgrade %q", resp.Status, resp.Header.Get("Upgrade"))
			}
			want := append([]byte("greeting\x00\xff"), early...)
			got := make([]byte, len(want))
			if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("first bytes %q, %v; want %q", got, err, want)
			}
			payload := allBytes()
			if _, err := conn.Write(payload); err != nil {
				t.Fatal(err)
			}
			echo := make([]byte, len(payload))
			if _, err := io.ReadFull(br, echo); err != nil || !bytes.Equal(echo, payload) {
				t.Fatalf("echo differs (%v)", err)
			}
			u := obs.last(t)
			for k, want := range map[string][]string{"connection": {"Upgrade"}, "upgrade": {up}, "authorization": {"Bearer " + agentToken}, "content-length": nil, "transfer-encoding": nil} {
				if got := u.Values(k); !slices.Equal(got, want) {
					t.Errorf("upstream %s = %q, want %q", k, got, want)
				}
			}
		})
	}

	t.Run("upgrade type not in upgrade_configs", func(t *testing.T) {
		before := len(obs.all())
		status, _ := rawRequest(t, c, host, "GET /k8s-proxy/api HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		if status != http.StatusForbidden || len(obs.all()) != before {
			t.Errorf("status %d, %d upstream requests; want 403 and none", status, len(obs.all())-before)
		}
	})
	t.Run("upstream refuses the upgrade", func(t *testing.T) {
		status, raw := rawRequest(t, c, host, "GET /k8s-proxy/api?refuse=1 HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if status != http.StatusForbidden || !strings.Contains(raw, "upgrade refused") {
			t.Errorf("got %d %q, want the upstream's own 403", status, raw)
		}
	})
}

// TestUpstreamFailures: the API server is reached over TLS verified against the
// cluster's CA and its SAN matcher; a failure to connect is Envoy's 503 "upstream
// connect error ..." local reply.
func TestUpstreamFailures(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	port := rec.srv.Listener.Addr().(*net.TCPAddr).Port
	otherCA := newCerts(t)
	tests := []struct {
		name      string
		apiserver string
		caFile    string
	}{
		// httptest's certificate names 127.0.0.1 and example.com, not localhost.
		{"certificate without the server's name", fmt.Sprintf("https://localhost:%d", port), rec.caFile},
		{"certificate from another CA", rec.url(), otherCA.dir + "/ca.crt"},
		{"nothing listening", fmt.Sprintf("https://127.0.0.1:%d", freePort(t)), rec.caFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: tt.apiserver, caFile: tt.caFile}), Options{})
			status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil)
			if status != http.StatusServiceUnavailable || !strings.HasPrefix(body, "upstream connect error or disconnect/reset before headers. reset reason: connection failure") {
				t.Errorf("got %d %q", status, body)
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d requests reached an unverified upstream", n)
	}
}

// TestCodecLimits: headers_with_underscores_action REJECT_REQUEST and
// max_headers_count are enforced while parsing: HTTP/1 gets a 400 or 431 and a
// closed connection, HTTP/2 a reset stream.
func TestCodecLimits(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.MaxHeadersCount = 20 }}), Options{})
	host := strings.TrimPrefix(dp.URL(), "https://")
	many := ""
	for i := range 20 {
		many += fmt.Sprintf("X-H%d: v\r\n", i)
	}
	tests := []struct {
		name    string
		headers string
		want    int
	}{
		{"underscore in a header name", "Impersonate_User: root\r\n", 400},
		{"more headers than max_headers_count", many, 431},
	}
	for _, tt := range tests {
		t.Run(tt.name+" over HTTP/1.1", func(t *testing.T) {
			status, raw := rawRequest(t, c, host, "GET /k8s-proxy/api HTTP/1.1\r\nHost: "+host+"\r\n"+tt.headers+"\r\n")
			if status != tt.want || !strings.Contains(strings.ToLower(raw), "connection: close") {
				t.Errorf("got %d, want %d with the connection closed:\n%s", status, tt.want, raw)
			}
		})
	}
	t.Run("underscore over HTTP/2: stream reset", func(t *testing.T) {
		req, _ := http.NewRequest("GET", dp.URL()+"/k8s-proxy/api", nil)
		req.Header["impersonate_user"] = []string{"root"}
		resp, err := client(t, c, true).Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("got %s, want a reset stream", resp.Status)
		}
	})
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
}

// TestCircuitBreaker: with max_requests 2 on the API-server cluster, two held
// requests both reach the API server and a third concurrent one is Envoy's 503
// overflow with x-envoy-overloaded, never reaching it.
func TestCircuitBreaker(t *testing.T) {
	c := newCerts(t)
	release := make(chan struct{})
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.MaxConnections = 2 }}), Options{})
	defer close(release)
	cl := client(t, c, true) // one h2 connection carries both streams
	// Each held request has its headers back (the recorder flushed its 200), so
	// it holds one of the two slots until release is closed.
	for i := range 2 {
		resp, err := cl.Get(dp.URL() + "/k8s-proxy/hold")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("held request %d: got %d %q, want 200 from the API server (the limit is 2)", i+1, resp.StatusCode, b)
		}
	}
	status, hdr, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil)
	if status != http.StatusServiceUnavailable || hdr.Get("X-Envoy-Overloaded") != "true" || !strings.HasSuffix(body, "reset reason: overflow") {
		t.Errorf("got %d %q %v, want the overflow reply", status, body, hdr)
	}
	var paths []string
	for _, r := range rec.requests() {
		paths = append(paths, r.URL.Path)
	}
	if want := []string{"/hold", "/hold"}; !slices.Equal(paths, want) {
		t.Errorf("the API server saw %q, want %q (the overflowed request must not reach it)", paths, want)
	}
}

// TestAdminReady: the bootstrap's admin address serves /ready.
func TestAdminReady(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.Admin = admin }}), Options{})
	status, _, body := do(t, http.DefaultClient, "GET", "http://"+admin+"/ready", nil)
	if status != 200 || body != "LIVE\n" {
		t.Errorf("/ready: %d %q", status, body)
	}
}

// TestDownstreamConnectionLimit: the overload manager's
// global_downstream_max_connections closes connections beyond the limit at accept.
func TestDownstreamConnectionLimit(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
		edit: func(o *envoy.Options) { o.MaxConnections = 1 }}), Options{})
	cl := client(t, c, false) // keeps its connection open after the request
	if status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusOK {
		t.Fatalf("first connection: %d %q", status, body)
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(dp.URL(), "https://"), c.clientTLS(t, "http/1.1"))
	if err == nil {
		conn.Close()
		t.Fatal("a second connection was accepted beyond max_active_downstream_connections 1")
	}
}

// TestIdleUpstreamClosed: an idle upstream connection the server closed is not
// reused; the next request opens a new one instead of failing.
func TestIdleUpstreamClosed(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	cl := client(t, c, true)
	for i := range 2 {
		if status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusOK {
			t.Fatalf("request %d: %d %q", i, status, body)
		}
		rec.srv.CloseClientConnections()
	}
	if reqs := rec.requests(); reqs[0].RemoteAddr == reqs[1].RemoteAddr {
		t.Errorf("the closed connection was reused")
	}
}

// TestUpstreamByName: for an API server named by DNS, the cluster sends that name
// as SNI (UpstreamTlsContext.sni) and checks it as a DNS SAN.
func TestUpstreamByName(t *testing.T) {
	c := newCerts(t) // its certificate names localhost and 127.0.0.1
	rec := newRecorderWith(t, nil, &c)
	_, xds := realXDS(t, agentToken)
	port := rec.srv.Listener.Addr().(*net.TCPAddr).Port
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: fmt.Sprintf("https://localhost:%d", port), caFile: rec.caFile}), Options{})
	if status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if reqs := rec.requests(); len(reqs) != 1 || reqs[0].TLS == nil || reqs[0].TLS.ServerName != "localhost" {
		t.Errorf("the upstream did not see SNI localhost: %+v", reqs)
	}
}
