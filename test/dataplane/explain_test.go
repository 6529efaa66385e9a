package dataplane

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/extauthz"
)

// allowEverything is an ext_authz service that says OK to every request, as a
// broken or compromised kubegate authz might.
type allowEverything struct {
	authv3.UnimplementedAuthorizationServer
}

func (allowEverything) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}, nil
}

// TestExplainEndpointThroughTheDataPlane sends the explain endpoint's requests —
// the caller's own, refused ones, and tricks on the path — through the rendered
// configuration: the caller gets their own explanation as Envoy's local reply, every
// refusal is the proxy's, and nothing ever reaches the API server. With an
// ext_authz that allows everything, the route's direct_response still keeps the
// endpoint from the API server.
func TestExplainEndpointThroughTheDataPlane(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	ext := realExtProc(t)
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: ext, xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	permissive := serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, allowEverything{}) })
	broken := start(t, render(t, c, setup{authz: permissive, extproc: ext, xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	cl := client(t, c, true)

	const pods = contract.ExplainPrefix + "GET/api/v1/namespaces/demo/pods"
	tests := []struct {
		name       string
		method     string
		path       string
		header     http.Header
		wantStatus int
		wantUser   string // the explanation's user; "" for a refusal
		wantError  string // X-Kubegate-Error
	}{
		{name: "alice asks about herself", method: "GET", path: pods, header: http.Header{"Authorization": {alicePAT()}}, wantStatus: 200, wantUser: "alice", wantError: "explained"},
		{name: "bob learns why he is refused", method: "GET", path: pods, header: http.Header{"Authorization": {"Bearer pat:1:kg-sandbox-bob-token"}}, wantStatus: 200, wantUser: "bob", wantError: "explained"},
		{name: "merged slashes still reach the endpoint", method: "GET", path: "/kubegate//explain/GET/api/v1/pods", header: http.Header{"Authorization": {alicePAT()}}, wantStatus: 200, wantUser: "alice", wantError: "explained"},
		{name: "no credential", method: "GET", path: pods, wantStatus: 401, wantError: "no_credential"},
		{name: "bob asking as alice", method: "GET", path: pods, header: http.Header{"Authorization": {"Bearer pat:1:kg-sandbox-bob-token"}, "Impersonate-User": {"alice"}}, wantStatus: 403, wantError: "client_impersonation"},
		{name: "a revoked token", method: "GET", path: pods, header: http.Header{"Authorization": {"Bearer pat:1:kg-sandbox-erin-token"}}, wantStatus: 401, wantError: "unauthorized"},
		{name: "an encoded slash", method: "GET", path: contract.ExplainPrefix + "GET/api/v1/namespaces/a%2Fb/pods", header: http.Header{"Authorization": {alicePAT()}}, wantStatus: 400},
		{name: "POST to the endpoint", method: "POST", path: pods, header: http.Header{"Authorization": {alicePAT()}}, wantStatus: 400, wantError: "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(rec.requests())
			status, header, body := do(t, cl, tt.method, dp.URL()+tt.path, tt.header)
			if status != tt.wantStatus || (tt.wantError != "" && header.Get(extauthz.HeaderError) != tt.wantError) {
				t.Fatalf("status %d %s, want %d %s: %s", status, header.Get(extauthz.HeaderError), tt.wantStatus, tt.wantError, body)
			}
			if tt.wantUser != "" {
				var x extauthz.Explanation
				if err := json.Unmarshal([]byte(body), &x); err != nil || x.User.Username != tt.wantUser {
					t.Fatalf("explanation for %q (%v), want %s: %s", x.User.Username, err, tt.wantUser, body)
				}
				if strings.Contains(body, "kg-sandbox-") || strings.Contains(body, "sha256:") {
					t.Fatalf("the explanation shows a token or digest: %s", body)
				}
			}
			if got := rec.requests()[before:]; len(got) != 0 {
				t.Fatalf("an explain request reached the API server: %s", got[0].URL)
			}
		})
	}
	t.Run("an ext_authz that allows everything still cannot open the endpoint", func(t *testing.T) {
		before := len(rec.requests())
		status, _, body := do(t, cl, "GET", broken.URL()+pods, http.Header{"Authorization": {alicePAT()}})
		if status == http.StatusOK {
			t.Fatalf("status 200: %s", body)
		}
		if got := rec.requests()[before:]; len(got) != 0 {
			t.Fatalf("an explain request reached the API server: %s", got[0].URL)
		}
	})
}
