package perf

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/test/loadgen"
	"kubegate.dev/kubegate/test/realsize"
	"kubegate.dev/kubegate/test/stack"
)

// env is the real-size data written to files and the kubegate binary, made once per
// test process.
type env struct {
	dir, bin, directory, agentConfig string
	data                             *realsize.Data
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

func setup(tb testing.TB) *env {
	tb.Helper()
	envOnce.Do(func() {
		e := &env{}
		if e.dir, envErr = os.MkdirTemp("", "kubegate-perf-"); envErr != nil {
			return
		}
		if e.data, envErr = realsize.Generate(realsize.Default()); envErr != nil {
			return
		}
		e.directory, e.agentConfig = filepath.Join(e.dir, "directory.yaml"), filepath.Join(e.dir, "agent-config.yaml")
		if envErr = os.WriteFile(e.directory, e.data.Directory, 0o600); envErr != nil {
			return
		}
		if envErr = os.WriteFile(e.agentConfig, e.data.AgentConfig, 0o600); envErr != nil {
			return
		}
		e.bin = filepath.Join(e.dir, "kubegate")
		cmd := exec.Command("go", "build", "-o", e.bin, "./cmd/kubegate")
		cmd.Dir = stack.ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			envErr = fmt.Errorf("building kubegate: %v\n%s", err, out)
			return
		}
		theEnv = e
	})
	if envErr != nil {
		tb.Fatal(envErr)
	}
	return theEnv
}

// The data directory outlives single tests (it is shared); remove it at exit.
func cleanupEnv() {
	if theEnv != nil {
		os.RemoveAll(theEnv.dir)
	}
}

func (e *env) startAuthz(tb testing.TB) *server {
	tb.Helper()
	addr := freeAddr(tb)
	return start(tb, e.dir, "authz", addr, []string{e.bin, "authz", "--listen", addr,
		"--agent-id", "1", "--config-project-id", "1", "--agent-config", e.agentConfig, "--directory", e.directory})
}

func (e *env) startExtProc(tb testing.TB) *server {
	tb.Helper()
	addr := freeAddr(tb)
	return start(tb, e.dir, "extproc", addr, []string{e.bin, "extproc", "--listen", addr})
}

const podsPath = "/k8s-proxy/api/v1/namespaces/demo/pods"

// checkRequest is a CheckRequest as Envoy builds it for kubectl's GET (raw header
// values, encode_raw_headers: true).
func checkRequest(token string) *authv3.CheckRequest {
	hm := &corev3.HeaderMap{}
	for _, kv := range [][2]string{
		{":authority", "gateway.example:8443"}, {":method", "GET"}, {":path", podsPath}, {":scheme", "https"},
		{"authorization", "Bearer pat:1:" + token}, {"accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
		{"user-agent", "kubectl/v1.32.0 (linux/amd64) kubernetes/abcdef0"}, {"x-request-id", "9b5d4c1e-perf"},
	} {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Id: "9b5d4c1e-perf", Method: "GET", Path: podsPath, Host: "gateway.example:8443", Scheme: "https", Protocol: "HTTP/1.1", HeaderMap: hm},
	}}}
}

// processingRequest is ext_proc's request_headers message for the same request,
// carrying the decision ext_authz returned (what Envoy forwards from its dynamic
// metadata).
func processingRequest(ok *authv3.CheckResponse) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for _, kv := range [][2]string{
		{":authority", "gateway.example:8443"}, {":method", "GET"}, {":path", "/api/v1/namespaces/demo/pods"}, {":scheme", "https"},
		{"accept", "application/json"}, {"user-agent", "kubectl/v1.32.0 (linux/amd64) kubernetes/abcdef0"}, {"x-request-id", "9b5d4c1e-perf"},
	} {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
	}
	// Envoy applies ext_authz's OK headers (Impersonate-User in user mode) before
	// ext_proc sees the request.
	for _, h := range ok.GetOkResponse().GetHeaders() {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: h.GetHeader().GetKey(), RawValue: []byte(h.GetHeader().GetValue())})
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: ok.GetDynamicMetadata()}},
	}
}

// process is what Envoy does per HTTP request with kubegate's processing mode: open
// a stream, send request_headers, read the answer, close.
func process(c extprocv3.ExternalProcessorClient, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Process(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(req); err != nil {
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return resp, s.CloseSend()
}

// TestRealSize runs both services as processes on the real-size data and checks the
// decisions the benchmarks measure: alice allowed with 243 groups that ext_proc turns
// into 243 Impersonate-Group lines, the outsider a 403, a revoked token a 401.
func TestRealSize(t *testing.T) {
	e := setup(t)
	authz := e.startAuthz(t)
	ext := e.startExtProc(t)
	ac := authv3.NewAuthorizationClient(authz.conn)
	ctx := context.Background()

	ok, err := ac.Check(ctx, checkRequest(e.data.Token))
	if err != nil || ok.GetOkResponse() == nil {
		t.Fatalf("alice: %v, %v", ok, err)
	}
	d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: ok.GetDynamicMetadata()}})
	if err != nil {
		t.Fatalf("alice's hand-off: %v", err)
	}
	if len(d.Groups) != e.data.ImpersonatedGroups {
		t.Errorf("hand-off groups = %d, want %d", len(d.Groups), e.data.ImpersonatedGroups)
	}
	resp, err := process(extprocv3.NewExternalProcessorClient(ext.conn), processingRequest(ok))
	if err != nil {
		t.Fatal(err)
	}
	groups := 0
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if strings.EqualFold(h.GetHeader().GetKey(), "impersonate-group") {
			groups++
		}
	}
	if groups != e.data.ImpersonatedGroups {
		t.Errorf("Impersonate-Group lines = %d, want %d (response %v)", groups, e.data.ImpersonatedGroups, resp)
	}

	for _, tc := range []struct {
		name, token string
		code        int32
	}{
		{"outsider", e.data.OutsiderToken, 403},
		{"revoked or expired", e.data.BadTokens[0], 401},
	} {
		resp, err := ac.Check(ctx, checkRequest(tc.token))
		if err != nil || resp.GetDeniedResponse() == nil {
			t.Errorf("%s: %v, %v; want a denial", tc.name, resp, err)
			continue
		}
		if got := int32(resp.GetDeniedResponse().GetStatus().GetCode()); got != tc.code {
			t.Errorf("%s: HTTP %d, want %d", tc.name, got, tc.code)
		}
	}
}

// measure runs fn through loadgen and reports the server's CPU per call.
func measure(b *testing.B, s *server, callers int, fn func() error) (loadgen.Result, float64) {
	b.Helper()
	c0 := s.cpu(b)
	r := loadgen.Run(b, callers, fn)
	perCall := float64((s.cpu(b) - c0).Nanoseconds()) / 1e3 / float64(b.N)
	b.ReportMetric(perCall, "server-cpu-µs/op")
	return r, perCall
}

func reportCPURatio(b *testing.B, cpu, floor float64) {
	if floor > 0 {
		b.ReportMetric(cpu/floor, "cpu-x-floor")
	}
}

// BenchmarkCheck measures warm Checks at real size (alice allowed with 243 groups; the
// outsider's 403; a revoked token's 401) against the no-op floor process, at 1 and 8
// concurrent callers: p50/p99 as multiples of the floor's, throughput as a fraction,
// and server CPU per call from the process's own accounting.
func BenchmarkCheck(b *testing.B) {
	e := setup(b)
	floor := startFloor(b, e.dir, "authz")
	kg := e.startAuthz(b)
	fc, kc := authv3.NewAuthorizationClient(floor.conn), authv3.NewAuthorizationClient(kg.conn)
	cases := []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"allowed", checkRequest(e.data.Token)},
		{"denied-403", checkRequest(e.data.OutsiderToken)},
		{"denied-401", checkRequest(e.data.BadTokens[0])},
	}
	for _, tc := range cases { // warm: the first decision of each is the cold path
		if _, err := kc.Check(context.Background(), tc.req); err != nil {
			b.Fatal(err)
		}
	}
	for _, callers := range []int{1, 8} {
		var base loadgen.Result
		var baseCPU float64
		b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
			base, baseCPU = measure(b, floor, callers, func() error {
				_, err := fc.Check(context.Background(), cases[0].req)
				return err
			})
		})
		for _, tc := range cases {
			b.Run(fmt.Sprintf("c=%d/kubegate-%s", callers, tc.name), func(b *testing.B) {
				r, cpu := measure(b, kg, callers, func() error {
					_, err := kc.Check(context.Background(), tc.req)
					return err
				})
				r.Compare(b, base)
				reportCPURatio(b, cpu, baseCPU)
			})
		}
	}
}

// BenchmarkExtProc measures one ext_proc stream per request carrying alice's real
// 243-group decision against the no-op processor process.
func BenchmarkExtProc(b *testing.B) {
	e := setup(b)
	authz := e.startAuthz(b)
	ok, err := authv3.NewAuthorizationClient(authz.conn).Check(context.Background(), checkRequest(e.data.Token))
	if err != nil || ok.GetOkResponse() == nil {
		b.Fatal(ok, err)
	}
	req := processingRequest(ok)
	floor := startFloor(b, e.dir, "extproc")
	kg := e.startExtProc(b)
	fc, kc := extprocv3.NewExternalProcessorClient(floor.conn), extprocv3.NewExternalProcessorClient(kg.conn)
	for _, callers := range []int{1, 8} {
		var base loadgen.Result
		var baseCPU float64
		b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
			base, baseCPU = measure(b, floor, callers, func() error { _, err := process(fc, req); return err })
		})
		b.Run(fmt.Sprintf("c=%d/kubegate", callers), func(b *testing.B) {
			r, cpu := measure(b, kg, callers, func() error { _, err := process(kc, req); return err })
			r.Compare(b, base)
			reportCPURatio(b, cpu, baseCPU)
		})
	}
}

// BenchmarkLifecycle starts kubegate authz on the real-size files and reports, per
// start: time to healthy and to the first OK Check (wall time, and the process's
// CPU time by then, which a loaded machine inflates less), resident memory idle, then the
// CPU of each user's first Check (a new identity: authentication, memberships and the
// cold decision) and the memory each identity served adds. The no-op floor process's
// start-up and memory are measured the same way, for the ratios.
//
// Memory per identity comes two ways. rss-per-identity-KB is the growth from idle
// over all 1,000 users, divided by 1,000: it includes the heap's one-time growth
// from its scavenged start-up state to the garbage collector's working size (at
// GOGC=100 about the live heap again, ~4 MB), which the first few hundred requests
// cause whatever they are. rss-marginal-per-identity-KB is the growth over the last
// 500 users, divided by 500: what each further cached identity adds, the figure a
// cache of 10,000 identities scales by.
func BenchmarkLifecycle(b *testing.B) {
	e := setup(b)
	users := make([]string, 0, len(e.data.Tokens))
	for u := range e.data.Tokens {
		users = append(users, u)
	}
	var startup, firstOK, startCPU, rssIdle, newCPU, perIdentity, marginal, floorStartup, floorFirstOK, floorCPU, floorRSS float64
	for range b.N {
		floor := startFloor(b, e.dir, "authz")
		floorStartup += float64(floor.healthy.Sub(floor.started).Microseconds()) / 1e3
		if _, err := authv3.NewAuthorizationClient(floor.conn).Check(context.Background(), checkRequest(e.data.Token)); err != nil {
			b.Fatal(err)
		}
		floorFirstOK += float64(time.Since(floor.started).Microseconds()) / 1e3
		floorCPU += float64(floor.cpu(b).Microseconds()) / 1e3
		floorRSS += float64(floor.rss(b)) / (1 << 20)
		floor.child.Stop()

		kg := e.startAuthz(b)
		kc := authv3.NewAuthorizationClient(kg.conn)
		startup += float64(kg.healthy.Sub(kg.started).Microseconds()) / 1e3
		idle := kg.rss(b)
		rssIdle += float64(idle) / (1 << 20)
		resp, err := kc.Check(context.Background(), checkRequest(e.data.Token))
		if err != nil || resp.GetOkResponse() == nil {
			b.Fatal(resp, err)
		}
		firstOK += float64(time.Since(kg.started).Microseconds()) / 1e3
		c0 := kg.cpu(b)
		startCPU += float64(c0.Microseconds()) / 1e3
		var half int64
		for i, u := range users {
			if i == len(users)/2 {
				half = kg.rss(b)
			}
			if _, err := kc.Check(context.Background(), checkRequest(e.data.Tokens[u])); err != nil {
				b.Fatal(err)
			}
		}
		newCPU += float64((kg.cpu(b) - c0).Microseconds()) / float64(len(users))
		end := kg.rss(b)
		perIdentity += float64(end-idle) / 1024 / float64(len(users))
		marginal += float64(end-half) / 1024 / float64(len(users)-len(users)/2)
		kg.child.Stop()
	}
	n := float64(b.N)
	b.ReportMetric(startup/n, "startup-ms")
	b.ReportMetric(firstOK/n, "first-ok-ms")
	b.ReportMetric(startup/floorStartup, "startup-x-floor")
	b.ReportMetric(firstOK/floorFirstOK, "first-ok-x-floor")
	b.ReportMetric(startCPU/n, "startup-cpu-ms")
	b.ReportMetric(startCPU/floorCPU, "startup-cpu-x-floor")
	b.ReportMetric(rssIdle/n, "rss-idle-MB")
	b.ReportMetric(rssIdle/floorRSS, "rss-x-floor")
	b.ReportMetric(newCPU/n, "new-identity-cpu-µs")
	b.ReportMetric(perIdentity/n, "rss-per-identity-KB")
	b.ReportMetric(marginal/n, "rss-marginal-per-identity-KB")
}
