package dataplane

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extprocfiltv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/envoy/sds"
)

// Two agents behind one data plane: each its own API server (its own serving
// CA), its own cluster and its own token secret.
const (
	agentA, agentB = int64(1), int64(2)
	tokenA, tokenB = "agent-a-sa-token", "agent-b-sa-token"
)

type twoAgents struct {
	c          certs
	recA, recB *recorder
	obs        *observed
	authz      *authzDouble
	dp         *DataPlane
}

// routeByCredential is kubegate authz's routing as a double: an OK answer naming
// the cluster of the agent in the PAT (pat:<agent>:...), contract.HeaderUpstream.
func routeByCredential(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	auth := req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"]
	if auth == "" {
		for _, h := range req.GetAttributes().GetRequest().GetHttp().GetHeaderMap().GetHeaders() {
			if h.GetKey() == "authorization" {
				auth = string(h.GetRawValue())
			}
		}
	}
	switch {
	case strings.HasPrefix(auth, "Bearer pat:1:"):
		return allowTo(envoy.APIServerCluster(agentA)), nil
	case strings.HasPrefix(auth, "Bearer pat:2:"):
		return allowTo(envoy.APIServerCluster(agentB)), nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}}}, nil
}

// allowTo is an OK answer naming cluster, with a decision in the dynamic metadata
// as kubegate authz sends one (what the agent-token-missing mapper looks for).
func allowTo(cluster string) *authv3.CheckResponse {
	decision, _ := structpb.NewStruct(map[string]any{"kubegate": map[string]any{"version": handoff.Version, "access_as": "agent"}})
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, DynamicMetadata: decision,
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routedTo(&authv3.OkHttpResponse{HeadersToRemove: []string{"authorization"}}, cluster)}}
}

// startTwoAgents renders the bootstrap for agents A and B (the --gateway-config
// case) in front of one recorder each, with kubegate xds serving the tokens
// given (a missing one is never published).
func startTwoAgents(t *testing.T, authz *authzDouble, proc *processorDouble, tokens map[int64]string, editBootstrap func(*bootstrapv3.Bootstrap)) *twoAgents {
	t.Helper()
	a := &twoAgents{c: newCerts(t), obs: &observed{}, authz: authz}
	a.recA = newRecorder(t, nil)
	servingB := newCerts(t) // B's API server has a CA of its own
	a.recB = newRecorderWith(t, nil, &servingB)
	srv := sds.NewServer(envoy.TokenSecretFor(agentA), slog.New(slog.DiscardHandler))
	for id, tok := range tokens {
		if _, err := srv.PublishSecret(context.Background(), envoy.TokenSecretFor(id), tok); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	xds := serveGRPC(t, func(g *grpc.Server) { srv.Register(ctx, g) })
	if proc == nil {
		proc = &processorDouble{}
	}
	s := setup{authz: authz.serve(t), extproc: proc.serve(t), xds: xds,
		edit: func(o *envoy.Options) {
			o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
			o.Agents = []envoy.Agent{
				{ID: agentA, APIServer: a.recA.url(), APIServerCA: a.recA.caFile},
				{ID: agentB, APIServer: strings.Replace(a.recB.url(), "127.0.0.1", "localhost", 1), APIServerCA: a.recB.caFile},
			}
		},
		editBootstrap: func(b *bootstrapv3.Bootstrap) {
			// A secret never published must not hold the listener for 10 s.
			editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
				g.Credential.SdsConfig.InitialFetchTimeout = durationpbOf(200 * time.Millisecond)
			})
			if editBootstrap != nil {
				editBootstrap(b)
			}
		}}
	a.dp = start(t, render(t, a.c, s), Options{OnUpstreamRequest: a.obs.record})
	return a
}

// TestEachAgentItsClusterAndToken: a request kubegate authz routes to agent A
// reaches A's API server with A's token only, and B's likewise; each cluster's TLS
// verifies its own server (B's serving CA is not A's).
func TestEachAgentItsClusterAndToken(t *testing.T) {
	a := startTwoAgents(t, &authzDouble{answer: routeByCredential}, nil, map[int64]string{agentA: tokenA, agentB: tokenB}, nil)
	cl := client(t, a.c, true)
	for _, tt := range []struct {
		name, pat   string
		want, other *recorder
		token       string
		cluster     string
	}{
		{"agent A", "Bearer pat:1:alice", a.recA, a.recB, tokenA, envoy.APIServerCluster(agentA)},
		{"agent B", "Bearer pat:2:alice", a.recB, a.recA, tokenB, envoy.APIServerCluster(agentB)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			beforeWant, beforeOther := len(tt.want.requests()), len(tt.other.requests())
			status, _, body := do(t, cl, "GET", a.dp.URL()+"/k8s-proxy/api/v1/pods", http.Header{"Authorization": {tt.pat}})
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			got := tt.want.requests()[beforeWant:]
			if len(got) != 1 || len(tt.other.requests()) != beforeOther {
				t.Fatalf("%d requests at the agent's API server, %d at the other's; want 1 and 0", len(got), len(tt.other.requests())-beforeOther)
			}
			if auth := got[0].Header.Values("Authorization"); !slices.Equal(auth, []string{"Bearer " + tt.token}) {
				t.Errorf("the API server got Authorization %q, want the agent's own token", auth)
			}
			if u := a.obs.last(t); u.Cluster != tt.cluster {
				t.Errorf("went through cluster %q, want %q", u.Cluster, tt.cluster)
			}
		})
	}
}

// TestClientCannotChooseTheCluster, from the attacker's side: whatever a client
// sends as x-kubegate-upstream (the other agent's cluster, several lines, another
// case, an unknown cluster), ext_authz never sees it, and the request goes where
// kubegate authz routed it, with that agent's token, or nowhere.
func TestClientCannotChooseTheCluster(t *testing.T) {
	a := startTwoAgents(t, &authzDouble{answer: routeByCredential}, nil, map[int64]string{agentA: tokenA, agentB: tokenB}, nil)
	other := envoy.APIServerCluster(agentB)
	tests := []struct {
		name   string
		header http.Header
		want   int // status; 200 means agent A's API server got it
	}{
		{"the other agent's cluster", http.Header{"X-Kubegate-Upstream": {other}}, http.StatusOK},
		{"two lines", http.Header{"X-Kubegate-Upstream": {other, other}}, http.StatusOK},
		{"upper case", http.Header{"X-KUBEGATE-UPSTREAM": {other}}, http.StatusOK},
		{"an unknown cluster", http.Header{"X-Kubegate-Upstream": {"kubegate_apiserver_999"}}, http.StatusOK},
		{"a denied request naming a cluster", http.Header{"X-Kubegate-Upstream": {envoy.APIServerCluster(agentA)}, "Authorization": {"Bearer not-a-pat"}}, http.StatusForbidden},
	}
	for _, tt := range tests {
		for _, h2 := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{false: " (HTTP/1.1)", true: " (HTTP/2)"}[h2], func(t *testing.T) {
				h := tt.header.Clone()
				if h.Get("Authorization") == "" {
					h.Set("Authorization", "Bearer pat:1:alice")
				}
				beforeA, beforeB, beforeChecks := len(a.recA.requests()), len(a.recB.requests()), len(a.authz.requests())
				status, _, body := do(t, client(t, a.c, h2), "GET", a.dp.URL()+"/k8s-proxy/api/v1/pods", h)
				if status != tt.want {
					t.Fatalf("status %d (%s), want %d", status, body, tt.want)
				}
				gotA, gotB := a.recA.requests()[beforeA:], a.recB.requests()[beforeB:]
				if len(gotB) != 0 {
					t.Fatalf("the other agent's API server got %d requests", len(gotB))
				}
				wantA := 0
				if tt.want == http.StatusOK {
					wantA = 1
				}
				if len(gotA) != wantA {
					t.Fatalf("agent A's API server got %d requests, want %d", len(gotA), wantA)
				}
				if wantA == 1 {
					if auth := gotA[0].Header.Values("Authorization"); !slices.Equal(auth, []string{"Bearer " + tokenA}) {
						t.Errorf("Authorization %q, want agent A's token", auth)
					}
					if up := gotA[0].Header.Values(contract.HeaderUpstream); !slices.Equal(up, []string{envoy.APIServerCluster(agentA)}) {
						t.Errorf("%s upstream %q: want only kubegate authz's choice", contract.HeaderUpstream, up)
					}
				}
				for _, req := range a.authz.requests()[beforeChecks:] {
					hs := req.GetAttributes().GetRequest().GetHttp()
					if _, ok := hs.GetHeaders()[contract.HeaderUpstream]; ok {
						t.Error("ext_authz was shown the client's x-kubegate-upstream: header_mutation must strip it first")
					}
					for _, kv := range hs.GetHeaderMap().GetHeaders() {
						if kv.GetKey() == contract.HeaderUpstream {
							t.Error("ext_authz was shown the client's x-kubegate-upstream: header_mutation must strip it first")
						}
					}
				}
			})
		}
	}
}

// TestUnroutedRequestFailsClosed: an OK answer that names no cluster, or one that
// does not exist, is the route's cluster_not_found_response_code (503) and reaches
// no API server, whatever the client sent.
func TestUnroutedRequestFailsClosed(t *testing.T) {
	tests := []struct {
		name   string
		answer *authv3.CheckResponse
	}{
		{"OK without the header", &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}},
		{"OK naming an unknown cluster", allowTo("kubegate_apiserver_999")},
		{"OK naming an empty cluster", allowTo("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authz := &authzDouble{answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) { return tt.answer, nil }}
			a := startTwoAgents(t, authz, nil, map[int64]string{agentA: tokenA, agentB: tokenB}, nil)
			for _, target := range []string{"/k8s-proxy/api/v1/pods", "/version", "/apis/apps/v1"} {
				status, _, body := do(t, client(t, a.c, false), "GET", a.dp.URL()+target, http.Header{
					"Authorization": {"Bearer pat:1:alice"}, "X-Kubegate-Upstream": {envoy.APIServerCluster(agentA)}})
				if status != http.StatusServiceUnavailable {
					t.Errorf("%s: status %d (%s), want 503", target, status, body)
				}
			}
			if n := len(a.obs.all()); n != 0 {
				t.Fatalf("%d requests went upstream", n)
			}
		})
	}
}

// TestOneAgentsMissingTokenLeavesTheOther: the secret of agent B never arrives;
// B's requests get the agent-token-missing 503 (its cluster's injector refuses,
// nothing reaches B's API server) while A's are served.
func TestOneAgentsMissingTokenLeavesTheOther(t *testing.T) {
	a := startTwoAgents(t, &authzDouble{answer: routeByCredential}, nil, map[int64]string{agentA: tokenA}, nil)
	cl := client(t, a.c, false)
	if status, _, body := do(t, cl, "GET", a.dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer pat:1:alice"}}); status != http.StatusOK {
		t.Fatalf("agent A: %d %s", status, body)
	}
	status, header, body := do(t, cl, "GET", a.dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer pat:2:alice"}})
	if status != http.StatusServiceUnavailable || header.Get(envoy.HeaderKubegateError) != envoy.ReasonAgentTokenMissing {
		t.Fatalf("agent B without its token: %d %q %s, want 503 %s", status, header.Get(envoy.HeaderKubegateError), body, envoy.ReasonAgentTokenMissing)
	}
	if n := len(a.recB.requests()); n != 0 {
		t.Fatalf("agent B's API server got %d requests", n)
	}
	if got := a.dp.SecretVersionOf(envoy.TokenSecretFor(agentA)); got == "" {
		t.Error("agent A's secret not received")
	}
}

// TestExtProcCannotReroute: kubegate extproc's answer cannot move a request to
// another agent's cluster: mutation_rules refuse x-kubegate-upstream (the request
// fails, nothing upstream), and route_cache_action RETAIN ignores its
// clear_route_cache (TestRouteCacheEmulation shows that the other actions would
// re-route, so this proves something).
func TestExtProcCannotReroute(t *testing.T) {
	setB := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: rawHeader(contract.HeaderUpstream, envoy.APIServerCluster(agentB))}}}
	tests := []struct {
		name     string
		clear    bool
		wantCode int
		wantAt   *int64 // the agent whose API server gets it; nil: none
	}{
		{"sets the header", false, http.StatusServiceUnavailable, nil},
		{"sets the header and clears the route cache", true, http.StatusServiceUnavailable, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := &processorDouble{answer: func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
				return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
					Response: &extprocv3.CommonResponse{HeaderMutation: setB, ClearRouteCache: tt.clear}}}}, nil
			}}
			a := startTwoAgents(t, &authzDouble{answer: routeByCredential}, proc, map[int64]string{agentA: tokenA, agentB: tokenB}, nil)
			status, _, body := do(t, client(t, a.c, false), "GET", a.dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer pat:1:alice"}})
			if status != tt.wantCode {
				t.Fatalf("status %d (%s), want %d", status, body, tt.wantCode)
			}
			nA, nB := len(a.recA.requests()), len(a.recB.requests())
			switch {
			case tt.wantAt == nil && nA+nB != 0:
				t.Fatalf("%d and %d requests reached the API servers", nA, nB)
			case tt.wantAt != nil && (nB != 1 || nA != 0):
				t.Fatalf("A got %d, B got %d; want B once", nA, nB)
			}
		})
	}
}

// TestRouteCacheEmulation: the cluster of a cluster_header route is read when the
// route is matched, before any filter; a later change of the header moves the
// request only when a filter clears the route cache: ext_authz with
// clear_route_cache on an OK answer that mutates headers, ext_proc by its
// route_cache_action.
func TestRouteCacheEmulation(t *testing.T) {
	vhosts := []virtualHost{{name: "all", domains: []string{"*"}, routes: []route{
		{name: "api", match: matchPrefix, prefix: "/", clusterHeader: contract.HeaderUpstream, notFound: http.StatusServiceUnavailable},
	}}}
	newTestStream := func(upstream string) *stream {
		req, err := http.NewRequest("GET", "https://gw/k8s-proxy/api", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.RemoteAddr, req.RequestURI = "127.0.0.1:1", "/k8s-proxy/api"
		s := newStream(req)
		if upstream != "" {
			s.headers.set(contract.HeaderUpstream, upstream)
		}
		s.vhosts = vhosts
		s.refreshRoute()
		return s
	}
	t.Run("matched before the filters", func(t *testing.T) {
		s := newTestStream("c1")
		s.headers.set(contract.HeaderUpstream, "c2")
		if s.cluster != "c1" {
			t.Fatalf("cluster %q after a header change without clearing, want c1", s.cluster)
		}
		s.clearRouteCache()
		if s.cluster != "c2" {
			t.Fatalf("cluster %q after clearing, want c2", s.cluster)
		}
	})
	rules, err := newMutationChecker(nil)
	if err != nil {
		t.Fatal(err)
	}
	setC2 := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: rawHeader(contract.HeaderUpstream, "c2")}}}
	for _, tt := range []struct {
		name   string
		action extprocfiltv3.ExternalProcessor_RouteCacheAction
		clear  bool
		want   string
	}{
		{"DEFAULT without clear_route_cache", extprocfiltv3.ExternalProcessor_DEFAULT, false, "c1"},
		{"DEFAULT with clear_route_cache", extprocfiltv3.ExternalProcessor_DEFAULT, true, "c2"},
		{"CLEAR on a mutation", extprocfiltv3.ExternalProcessor_CLEAR, false, "c2"},
		{"RETAIN with clear_route_cache", extprocfiltv3.ExternalProcessor_RETAIN, true, "c1"},
	} {
		t.Run("ext_proc "+tt.name, func(t *testing.T) {
			f := &extProcFilter{cfg: &extProcConfig{rules: rules, routeCacheAction: tt.action}, hcm: &hcmConfig{maxHeadersCount: 100, maxHeadersKB: 60}}
			s := newTestStream("c1")
			if r := f.handleHeadersResponse(s, &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: setC2, ClearRouteCache: tt.clear}}); r != nil {
				t.Fatalf("local reply %+v", r)
			}
			if s.cluster != tt.want {
				t.Fatalf("cluster %q, want %q", s.cluster, tt.want)
			}
		})
	}
}

// TestEachClusterVerifiesItsOwnServer: agent B's cluster trusts only B's CA, so
// pointed at A's API server (as a misconfiguration or a DNS hijack would) it
// refuses the connection: a 503 and nothing reaches A's server with B's token.
func TestEachClusterVerifiesItsOwnServer(t *testing.T) {
	c := newCerts(t)
	recA := newRecorder(t, nil)
	servingB := newCerts(t)
	srv := sds.NewServer(envoy.TokenSecretFor(agentA), slog.New(slog.DiscardHandler))
	for id, tok := range map[int64]string{agentA: tokenA, agentB: tokenB} {
		if _, err := srv.PublishSecret(context.Background(), envoy.TokenSecretFor(id), tok); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	xds := serveGRPC(t, func(g *grpc.Server) { srv.Register(ctx, g) })
	authz := &authzDouble{answer: routeByCredential}
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds,
		edit: func(o *envoy.Options) {
			o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
			o.Agents = []envoy.Agent{
				{ID: agentA, APIServer: recA.url(), APIServerCA: recA.caFile},
				{ID: agentB, APIServer: recA.url(), APIServerCA: filepath.Join(servingB.dir, devcert.CAFile)},
			}
		}}), Options{})
	cl := client(t, c, false)
	if status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer pat:1:alice"}}); status != http.StatusOK {
		t.Fatalf("agent A: %d %s", status, body)
	}
	status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer pat:2:alice"}})
	if status != http.StatusServiceUnavailable {
		t.Fatalf("agent B against a server its CA did not sign: %d %s, want 503", status, body)
	}
	for _, r := range recA.requests() {
		if r.Header.Get("Authorization") == "Bearer "+tokenB {
			t.Fatal("agent B's token reached agent A's API server")
		}
	}
	if n := len(recA.requests()); n != 1 {
		t.Fatalf("A's server got %d requests, want only agent A's", n)
	}
}
