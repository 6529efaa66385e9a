package dataplane

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"kubegate.dev/kubegate/envoy"
)

// connWatcher is an HTTP/1.1 TLS upstream that never closes an idle connection
// itself (IdleTimeout 0 and no keep-alive limit), so any close of a kept-alive
// connection comes from the data plane. It records, per connection, when its
// last request finished and when it was closed.
type connWatcher struct {
	srv    *httptest.Server
	caFile string

	mu       sync.Mutex
	served   map[string]time.Time // remote address → when its last handler returned
	closedAt map[string]time.Time
	closed   chan string
}

func newConnWatcher(t *testing.T, handler http.HandlerFunc) *connWatcher {
	t.Helper()
	w := &connWatcher{served: map[string]time.Time{}, closedAt: map[string]time.Time{}, closed: make(chan string, 16)}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		handler(rw, r)
		w.mu.Lock()
		w.served[r.RemoteAddr] = time.Now()
		w.mu.Unlock()
	}))
	w.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s != http.StateClosed {
			return
		}
		w.mu.Lock()
		w.closedAt[c.RemoteAddr().String()] = time.Now()
		w.mu.Unlock()
		w.closed <- c.RemoteAddr().String()
	}
	w.srv.TLS = &tls.Config{NextProtos: []string{"http/1.1"}}
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	w.caFile = filepath.Join(t.TempDir(), "upstream-ca.crt")
	if err := os.WriteFile(w.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// waitClosed waits for the upstream to see a connection closed and returns its
// remote address; the bound only keeps a broken emulation from hanging the test.
func (w *connWatcher) waitClosed(t *testing.T) string {
	t.Helper()
	select {
	case a := <-w.closed:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("the data plane never closed its idle upstream connection")
		return ""
	}
}

// withAPIServerIdle sets the API server cluster's upstream idle_timeout (nil: unset).
func withAPIServerIdle(t testing.TB, idle *durationpb.Duration) func(*bootstrapv3.Bootstrap) {
	return func(b *bootstrapv3.Bootstrap) {
		editAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
			if o.CommonHttpProtocolOptions == nil {
				o.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{}
			}
			o.CommonHttpProtocolOptions.IdleTimeout = idle
		})
	}
}

func editAPIServerOptions(t testing.TB, b *bootstrapv3.Bootstrap, fn func(*upstreamhttpv3.HttpProtocolOptions)) {
	t.Helper()
	opts := clusterNamed(b, apiCluster).TypedExtensionProtocolOptions
	o := &upstreamhttpv3.HttpProtocolOptions{}
	mustUnpack(t, opts[envoy.UpstreamHTTPOptionsKey], o)
	fn(o)
	opts[envoy.UpstreamHTTPOptionsKey] = mustAny(t, o)
}

// TestUpstreamIdleTimeout: a pooled upstream connection is closed once it has
// carried no request for the cluster's idle_timeout ("the period in which there
// are no active requests", protocol.proto HttpProtocolOptions.idle_timeout), and
// the next request opens a new one; a request that stays quiet for longer than
// the timeout is not cut (the FAQ "How do I configure timeouts?": the idle
// timeout "only fires when there are no active streams").
func TestUpstreamIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	quiet := make(chan struct{})
	up := newConnWatcher(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") == "true" {
			// A watch with no event for several idle timeouts, then one event.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-quiet
			io.WriteString(w, `{"type":"ADDED"}`)
			return
		}
		io.WriteString(w, `{"kind":"Status","status":"Success"}`)
	})
	c := newCerts(t)
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{
		authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: up.srv.URL, caFile: up.caFile,
		editBootstrap: withAPIServerIdle(t, durationpb.New(idle)),
	}), Options{})
	cl := client(t, c, true)
	auth := http.Header{"Authorization": {alicePAT()}}
	get := func(t *testing.T, target string) string {
		t.Helper()
		status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy"+target, auth)
		if status != http.StatusOK {
			t.Fatalf("GET %s: status %d, body %s", target, status, body)
		}
		return body
	}

	t.Run("idle connection closed, next request on a new one", func(t *testing.T) {
		get(t, "/api/v1/namespaces?gitlab-agent-id=1")
		first := up.waitClosed(t)
		get(t, "/api/v1/namespaces?gitlab-agent-id=1")
		second := up.waitClosed(t)
		if first == second {
			t.Errorf("both requests came from %s; the second should have needed a new connection", first)
		}
	})
	t.Run("quiet watch outlives the idle timeout", func(t *testing.T) {
		go func() {
			// Release the event only after several idle timeouts of silence. This
			// sleep sets up the scenario; nothing asserts on elapsed time.
			time.Sleep(5 * idle)
			close(quiet)
		}()
		if body := get(t, "/api/v1/namespaces/default/pods?watch=true&gitlab-agent-id=1"); !strings.Contains(body, `"ADDED"`) {
			t.Fatalf("watch body %q: the event after the quiet period did not arrive", body)
		}
		addr := up.waitClosed(t)
		up.mu.Lock()
		served, closed := up.served[addr], up.closedAt[addr]
		up.mu.Unlock()
		if served.IsZero() || closed.Before(served) {
			t.Errorf("the watch's connection %s was closed (%v) before its request ended (%v)", addr, closed, served)
		}
	})
}

// TestUpstreamIdleTimeoutSettings: the value comes from the bootstrap, with
// Envoy's default of 1 hour when unset and 0 disabling it ("If not specified,
// this defaults to 1 hour. To disable idle timeouts explicitly set this to 0.",
// protocol.proto).
func TestUpstreamIdleTimeoutSettings(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	base := setup{authz: "127.0.0.1:9001", extproc: "127.0.0.1:9002", xds: "127.0.0.1:9003", apiserver: rec.url(), caFile: rec.caFile}
	for _, tt := range []struct {
		name string
		edit func(*bootstrapv3.Bootstrap)
		want time.Duration
	}{
		{"rendered", nil, envoy.UpstreamIdleTimeout},
		{"explicit", withAPIServerIdle(t, durationpb.New(7*time.Second)), 7 * time.Second},
		{"zero disables", withAPIServerIdle(t, durationpb.New(0)), 0},
		{"unset", func(b *bootstrapv3.Bootstrap) {
			editAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) { o.CommonHttpProtocolOptions = nil })
		}, time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			s.editBootstrap = tt.edit
			b, fs := envoy.Decode(render(t, c, s))
			if len(fs) > 0 {
				t.Fatal(envoy.FormatFindings(fs))
			}
			cfg, err := parseBootstrap(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.clusterFor(apiCluster).idleTimeout; got != tt.want {
				t.Errorf("idle timeout %v, want %v", got, tt.want)
			}
		})
	}
}

// TestIdleTimeoutRefusals: the idle_timeout and its neighbours that the stand-in
// does not emulate are refused with their path, not ignored.
func TestIdleTimeoutRefusals(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	base := setup{authz: "127.0.0.1:9001", extproc: "127.0.0.1:9002", xds: xds, apiserver: rec.url(), caFile: rec.caFile}
	for _, tt := range []struct {
		name string
		edit func(*bootstrapv3.Bootstrap)
		want string
	}{
		{"downstream idle timeout", func(b *bootstrapv3.Bootstrap) {
			editHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.CommonHttpProtocolOptions.IdleTimeout = durationpb.New(time.Minute)
			}, nil)
		}, "common_http_protocol_options.idle_timeout: the downstream connection idle timeout is not emulated"},
		{"idle timeout of a gRPC cluster", func(b *bootstrapv3.Bootstrap) {
			cl := clusterNamed(b, envoy.AuthzCluster)
			o := &upstreamhttpv3.HttpProtocolOptions{}
			mustUnpack(t, cl.TypedExtensionProtocolOptions[envoy.UpstreamHTTPOptionsKey], o)
			o.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Minute)}
			cl.TypedExtensionProtocolOptions[envoy.UpstreamHTTPOptionsKey] = mustAny(t, o)
		}, "idle timeout of an HTTP/2 (gRPC) cluster is not emulated"},
		{"upstream header count limit", func(b *bootstrapv3.Bootstrap) {
			editAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.CommonHttpProtocolOptions.MaxHeadersCount = wrapperspb.UInt32(100)
			})
		}, "common_http_protocol_options.max_headers_count: a limit on upstream response headers is not emulated"},
		{"upstream max connection duration", func(b *bootstrapv3.Bootstrap) {
			editAPIServerOptions(t, b, func(o *upstreamhttpv3.HttpProtocolOptions) {
				o.CommonHttpProtocolOptions.MaxConnectionDuration = durationpb.New(time.Hour)
			})
		}, "max_connection_duration is not emulated"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			s.editBootstrap = tt.edit
			dp, err := Start(context.Background(), render(t, c, s), Options{})
			if err == nil {
				dp.Close()
				t.Fatal("Start accepted the bootstrap")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not mention %q:\n%v", tt.want, err)
			}
		})
	}
}
