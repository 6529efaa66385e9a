package dataplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/envoy/sds"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/extproc"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

// The sandbox's agent, directory and demo tokens (deploy/sandbox), which the real
// kubegate authz service decides with.
const (
	sandboxConfig    = "../../deploy/sandbox/agent-config.yaml"
	sandboxDirectory = "../../deploy/sandbox/directory.yaml"
	agentToken       = "agent-sa-token-1"
)

var sandboxAgent = policy.Agent{ID: 1, ConfigProjectID: 1}

// apiCluster is the sandbox agent's API server cluster, tokenSecret its SDS secret.
var (
	apiCluster  = envoy.APIServerCluster(sandboxAgent.ID)
	tokenSecret = envoy.TokenSecretFor(sandboxAgent.ID)
)

func alicePAT() string { return "Bearer pat:1:kg-sandbox-alice-token" }

// serveGRPC serves register's services on a loopback port until the test ends.
func serveGRPC(t testing.TB, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// realAuthz is kubegate authz on the sandbox configuration.
func realAuthz(t testing.TB) string {
	t.Helper()
	srv := realAuthzServer(t)
	return serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) })
}

// realAuthzServer is the service behind realAuthz, for tests that wrap it.
func realAuthzServer(t testing.TB) authv3.AuthorizationServer {
	t.Helper()
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.LoadAgentConfig(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), sandboxAgent, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extauthz.NewServer(sandboxAgent, &extauthz.Snapshot{Engine: engine, Authenticator: dir, Memberships: dir}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// realExtProc is kubegate extproc, served as the command serves it (its codec
// sends pre-encoded answers).
func realExtProc(t testing.TB) string {
	t.Helper()
	srv, err := extproc.NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return serveGRPC(t, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) }, srv.ServerOptions()...)
}

// realXDS is kubegate xds serving token (no token: nothing published yet).
func realXDS(t testing.TB, token string) (*sds.Server, string) {
	t.Helper()
	srv := sds.NewServer(tokenSecret, slog.New(slog.DiscardHandler))
	if token != "" {
		if _, err := srv.Publish(context.Background(), token); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return srv, serveGRPC(t, func(g *grpc.Server) { srv.Register(ctx, g) })
}

// certs is a throwaway CA and a listener certificate for 127.0.0.1.
type certs struct{ dir string }

func newCerts(t testing.TB) certs {
	t.Helper()
	dir := t.TempDir()
	if _, err := devcert.Ensure(dir, []string{"127.0.0.1", "localhost"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return certs{dir}
}

func (c certs) pool(t testing.TB) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(c.dir, devcert.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

// clientTLS trusts the listener's CA and offers the given ALPN protocols.
func (c certs) clientTLS(t testing.TB, alpn ...string) *tls.Config {
	return &tls.Config{RootCAs: c.pool(t), NextProtos: alpn}
}

// freePort finds a loopback port for the listener: the bootstrap must name a
// concrete one, as Envoy's would.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func mustAddr(t testing.TB, s string) envoy.Addr {
	t.Helper()
	a, err := envoy.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// setup names the parts of one data plane under test.
type setup struct {
	authz, extproc, xds string // gRPC addresses
	apiserver, caFile   string // upstream https URL and its CA bundle
	edit                func(*envoy.Options)
	editBootstrap       func(*bootstrapv3.Bootstrap)
}

// render produces the bootstrap exactly as `kubegate envoy render` does for these
// addresses, optionally edited afterwards (for refusal and quirk tests).
func render(t testing.TB, c certs, s setup) []byte {
	t.Helper()
	o := envoy.DefaultOptions()
	o.Admin = ""
	o.Listen = mustAddr(t, "127.0.0.1:"+strconv.Itoa(freePort(t)))
	o.TLSCertFile = filepath.Join(c.dir, devcert.CertFile)
	o.TLSKeyFile = filepath.Join(c.dir, devcert.KeyFile)
	o.AgentID, o.APIServer, o.APIServerCA = sandboxAgent.ID, s.apiserver, s.caFile
	o.Authz, o.ExtProc, o.XDS = mustAddr(t, s.authz), mustAddr(t, s.extproc), mustAddr(t, s.xds)
	if s.edit != nil {
		s.edit(&o)
	}
	y, err := envoy.Render(o)
	if err != nil {
		t.Fatalf("rendering the bootstrap: %v", err)
	}
	if s.editBootstrap == nil {
		return y
	}
	b, fs := envoy.Decode(y)
	if len(fs) > 0 {
		t.Fatal(envoy.FormatFindings(fs))
	}
	s.editBootstrap(b)
	y, err = envoy.MarshalYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// start runs a data plane for the test; its access log goes to the test log.
func start(t testing.TB, bootstrap []byte, opts Options) *DataPlane {
	t.Helper()
	if opts.AccessLog == nil {
		opts.AccessLog = testWriter{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dp, err := Start(ctx, bootstrap, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return dp
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log("access log: " + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// client talks to the data plane like kubectl: TLS with the listener's CA, h2
// when h2 is true (kubectl's default), HTTP/1.1 otherwise.
func client(t testing.TB, c certs, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool(t)}, ForceAttemptHTTP2: h2, DisableCompression: true}
	var protos http.Protocols
	protos.SetHTTP1(!h2)
	protos.SetHTTP2(h2)
	tr.Protocols = &protos
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// get sends a request and returns status, headers and body.
func do(t testing.TB, cl *http.Client, method, url string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// recorder is a TLS upstream standing in for the API server where the test needs
// to see exactly what arrived (httptest, HTTP/1.1 only, as the cluster is).
type recorder struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	got    []*http.Request
}

func newRecorder(t testing.TB, handler http.HandlerFunc) *recorder {
	t.Helper()
	return newRecorderWith(t, handler, nil)
}

// newRecorderWith serves with the certificate in serving (nil: httptest's own,
// which names 127.0.0.1 and example.com); caFile is then serving's CA.
func newRecorderWith(t testing.TB, handler http.HandlerFunc, serving *certs) *recorder {
	t.Helper()
	r := &recorder{}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.got = append(r.got, req.Clone(context.Background()))
		r.mu.Unlock()
		if handler != nil {
			handler(w, req)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"kind":"Status","status":"Success"}`)
	}))
	if serving != nil {
		cert, err := tls.LoadX509KeyPair(filepath.Join(serving.dir, devcert.CertFile), filepath.Join(serving.dir, devcert.KeyFile))
		if err != nil {
			t.Fatal(err)
		}
		r.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	if serving != nil {
		r.caFile = filepath.Join(serving.dir, devcert.CAFile)
		return r
	}
	r.caFile = filepath.Join(t.TempDir(), "upstream-ca.crt")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
	if err := os.WriteFile(r.caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *recorder) url() string { return r.srv.URL }

func (r *recorder) requests() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.got...)
}

// observed collects what the router wrote upstream.
type observed struct {
	mu   sync.Mutex
	reqs []UpstreamRequest
}

func (o *observed) record(u UpstreamRequest) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reqs = append(o.reqs, u)
}

func (o *observed) all() []UpstreamRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]UpstreamRequest(nil), o.reqs...)
}

func (o *observed) last(t testing.TB) UpstreamRequest {
	t.Helper()
	all := o.all()
	if len(all) == 0 {
		t.Fatal("no request reached the upstream")
	}
	return all[len(all)-1]
}

func headerLines(u UpstreamRequest) string {
	var b bytes.Buffer
	for _, h := range u.Header {
		fmt.Fprintf(&b, "%s: %s\n", h.Name, h.Value)
	}
	return b.String()
}
