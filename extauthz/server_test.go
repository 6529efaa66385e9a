package extauthz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/testkit"
)

const (
	sandboxConfig    = "../deploy/sandbox/agent-config.yaml"
	sandboxDirectory = "../deploy/sandbox/directory.yaml"
	aliceToken       = "kg-sandbox-alice-token"
)

var agent = policy.Agent{ID: 1, ConfigProjectID: 1}

// counting wraps the real directory and records whether the identity backend was
// reached: malformed input must be refused before it.
type counting struct {
	dir   *directory.Directory
	auths atomic.Int64
	mems  atomic.Int64
}

func (c *counting) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	c.auths.Add(1)
	return c.dir.Authenticate(ctx, cred)
}

func (c *counting) Memberships(ctx context.Context, u identity.User, l identity.Listed) ([]identity.Membership, error) {
	c.mems.Add(1)
	return c.dir.Memberships(ctx, u, l)
}

type fixture struct {
	client  authv3.AuthorizationClient
	server  *Server
	backend *counting
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func snapshot(t testing.TB, configFile, policyDir string, backend *counting) *Snapshot {
	t.Helper()
	cfg, err := policy.LoadAgentConfig(configFile)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := policy.LoadModules(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(context.Background(), agent, cfg, mods)
	if err != nil {
		t.Fatal(err)
	}
	return &Snapshot{Engine: e, Authenticator: backend, Memberships: backend}
}

// start serves the Check service on a real loopback gRPC listener.
func start(t testing.TB, configFile, policyDir string) *fixture {
	t.Helper()
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	backend := &counting{dir: dir}
	logs := &syncBuffer{}
	srv, err := NewServer(agent, snapshot(t, configFile, policyDir, backend), slog.New(slog.NewJSONHandler(logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The gateway's own origin, so that session-cookie requests without an Origin
	// reach the identity step (origin_test.go tries the others).
	if err := srv.SetAllowedOrigins([]string{testPublicURL}); err != nil {
		t.Fatal(err)
	}
	return &fixture{client: serve(t, srv), server: srv, backend: backend, logs: logs}
}

func serve(t testing.TB, srv authv3.AuthorizationServer) authv3.AuthorizationClient {
	t.Helper()
	return authv3.NewAuthorizationClient(testkit.ServeGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) }))
}

// hdr is one header line; checkRequest builds a CheckRequest as Envoy does with
// encode_raw_headers: true (lower-case keys, raw values, repeated lines kept apart).
type hdr struct{ k, v string }

func checkRequest(method, path string, headers ...hdr) *authv3.CheckRequest {
	hm := &corev3.HeaderMap{}
	hm.Headers = append(hm.Headers,
		&corev3.HeaderValue{Key: ":authority", RawValue: []byte("gateway.example")},
		&corev3.HeaderValue{Key: ":method", RawValue: []byte(method)},
		&corev3.HeaderValue{Key: ":path", RawValue: []byte(path)},
	)
	for _, h := range headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: strings.ToLower(h.k), RawValue: []byte(h.v)})
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Id: "req-1", Method: method, Path: path, Host: "gateway.example", Scheme: "https", Protocol: "HTTP/1.1", HeaderMap: hm},
	}}}
}

func bearer(tok string) hdr { return hdr{"authorization", "Bearer " + tok} }
func pat(tok string) hdr    { return bearer("pat:1:" + tok) }
func token(user string) string {
	return "kg-sandbox-" + user + "-token"
}

const podsPath = "/k8s-proxy/api/v1/namespaces/demo/pods"

type denial struct {
	code    int
	reason  string
	message string
}

func (f *fixture) check(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	resp, err := f.client.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check returned a gRPC error (Envoy would answer status_on_error): %v", err)
	}
	return resp
}

// denied asserts a well-formed denial: the gRPC status is not OK, the HTTP status is
// set, the body is a Kubernetes Status, and the gateway's marker header is present.
func denied(t *testing.T, resp *authv3.CheckResponse) denial {
	t.Helper()
	if resp.GetStatus().GetCode() == int32(codes.OK) || resp.GetOkResponse() != nil || resp.GetDynamicMetadata() != nil {
		t.Fatalf("want a denial, got %v", resp)
	}
	dr := resp.GetDeniedResponse()
	var st struct {
		Kind, APIVersion, Status, Message, Reason string
		Code                                      int
	}
	if err := json.Unmarshal([]byte(dr.GetBody()), &st); err != nil {
		t.Fatalf("body is not JSON: %q", dr.GetBody())
	}
	if st.Kind != "Status" || st.APIVersion != "v1" || st.Status != "Failure" || st.Code != int(dr.GetStatus().GetCode()) || st.Reason == "" {
		t.Fatalf("body is not a Kubernetes Status matching the HTTP status: %s", dr.GetBody())
	}
	h := map[string]string{}
	for _, o := range dr.GetHeaders() {
		h[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	if h["content-type"] != "application/json" || h[HeaderError] == "" {
		t.Fatalf("denial headers %v lack content-type or %s", h, HeaderError)
	}
	if st.Code == 401 && !strings.HasPrefix(h["www-authenticate"], "Bearer") {
		t.Fatalf("401 without a Bearer WWW-Authenticate: %v", h)
	}
	return denial{code: st.Code, reason: h[HeaderError], message: st.Message}
}

// TestCredentials covers every row of access.md §2 over a real gRPC connection.
func TestCredentials(t *testing.T) {
	f := start(t, sandboxConfig, "")
	jws := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
	tests := []struct {
		name        string
		headers     []hdr
		path        string
		wantCode    int // 0: allowed
		wantReason  string
		wantMessage string // part of the client message
		backend     bool   // whether the identity backend may be reached
	}{
		{name: "valid PAT", headers: []hdr{pat(aliceToken)}, backend: true},
		{name: "no credential", wantCode: 401, wantReason: "no_credential", wantMessage: "no credential"},
		{name: "two Authorization headers", headers: []hdr{pat(aliceToken), pat(aliceToken)}, wantCode: 401, wantReason: "malformed_credential", wantMessage: "2 Authorization headers"},
		{name: "lower-case bearer", headers: []hdr{{"authorization", "bearer pat:1:" + aliceToken}}, wantCode: 401, wantReason: "malformed_credential", wantMessage: "case-sensitive"},
		{name: "basic auth", headers: []hdr{{"authorization", "Basic YWxpY2U6cHc="}}, wantCode: 401, wantReason: "malformed_credential"},
		{name: "pat without agent", headers: []hdr{bearer("pat:" + aliceToken)}, wantCode: 401, wantReason: "malformed_credential"},
		{name: "negative agent id", headers: []hdr{bearer("pat:-1:" + aliceToken)}, wantCode: 401, wantReason: "malformed_credential", wantMessage: "positive decimal"},
		{name: "huge agent id", headers: []hdr{bearer("pat:99999999999999999999:" + aliceToken)}, wantCode: 401, wantReason: "malformed_credential", wantMessage: "out of range"},
		{name: "empty token", headers: []hdr{bearer("pat:1:")}, wantCode: 401, wantReason: "malformed_credential"},
		{name: "token with extra colons is one token", headers: []hdr{bearer("pat:1:" + aliceToken + ":x:y")}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		// An agent the gateway does not serve answers as an invalid token does
		// (TestUnservedAgentIsAnInvalidToken compares the whole answers).
		{name: "wrong agent", headers: []hdr{bearer("pat:2:" + aliceToken)}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "unknown token", headers: []hdr{pat("kg-sandbox-nobody-token")}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "revoked token", headers: []hdr{pat(token("erin"))}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "token without k8s_proxy", headers: []hdr{pat(token("frank"))}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "expired token", headers: []hdr{pat(token("judy"))}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "blocked user", headers: []hdr{pat(token("mallory"))}, wantCode: 401, wantReason: "unauthorized", wantMessage: "Unauthorized", backend: true},
		{name: "bare OIDC not accepted here", headers: []hdr{bearer(jws)}, wantCode: 401, wantReason: "unsupported_credential", wantMessage: "does not accept oidc_id_token", backend: true},
		{name: "prefixed OIDC not accepted here", headers: []hdr{bearer("oidc:1:" + jws)}, wantCode: 401, wantReason: "unsupported_credential", backend: true},
		{name: "OIDC for another agent answers as for this one", headers: []hdr{bearer("oidc:7:" + jws)}, wantCode: 401, wantReason: "unsupported_credential", backend: true},
		{name: "session cookie not accepted here", headers: []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}, {"x-csrf-token", "c"}}, wantCode: 401, wantReason: "unsupported_credential", wantMessage: "does not accept session_cookie", backend: true},
		{name: "session cookie via query", headers: []hdr{{"cookie", "kubegate_session=s"}}, path: podsPath + "?gitlab-agent-id=1&gitlab-csrf-token=c", wantCode: 401, wantReason: "unsupported_credential", backend: true},
		{name: "session cookie without CSRF", headers: []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}}, wantCode: 401, wantReason: "malformed_credential", wantMessage: "CSRF"},
		{name: "two CSRF headers", headers: []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}, {"x-csrf-token", "a"}, {"x-csrf-token", "b"}}, wantCode: 401, wantReason: "malformed_credential"},
		// Credentials the API server would read besides the agent's (identity.ForeignCredential).
		{name: "WebSocket bearer subprotocol", headers: []hdr{pat(aliceToken), {"upgrade", "websocket"}, {"connection", "Upgrade"}, {"sec-websocket-protocol", "base64url.bearer.authorization.k8s.io.c2VjcmV0, v5.channel.k8s.io"}}, wantCode: 400, wantReason: "foreign_credential", wantMessage: "Sec-WebSocket-Protocol header carries a bearer token"},
		{name: "WebSocket bearer subprotocol on its own line", headers: []hdr{pat(aliceToken), {"sec-websocket-protocol", "v4.channel.k8s.io"}, {"sec-websocket-protocol", " Base64url.Bearer.Authorization.K8s.Io.c2VjcmV0"}}, wantCode: 400, wantReason: "foreign_credential"},
		{name: "WebSocket bearer subprotocol as the only credential", headers: []hdr{{"sec-websocket-protocol", "base64url.bearer.authorization.k8s.io.c2VjcmV0,v5.channel.k8s.io"}}, wantCode: 400, wantReason: "foreign_credential"},
		{name: "access_token query parameter", headers: []hdr{pat(aliceToken)}, path: podsPath + "?access_token=secret", wantCode: 400, wantReason: "foreign_credential", wantMessage: "access_token"},
		{name: "kubectl exec WebSocket subprotocols pass", headers: []hdr{pat(aliceToken), {"upgrade", "websocket"}, {"connection", "Upgrade"}, {"sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"}}, path: podsPath + "/web/exec?command=sh&command=-c&command=ls&stdout=true&stderr=true", backend: true},
		{name: "kubectl port-forward WebSocket subprotocols pass", headers: []hdr{pat(aliceToken), {"upgrade", "websocket"}, {"connection", "Upgrade"}, {"sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"}, {"sec-websocket-protocol", "portforward.k8s.io"}}, path: podsPath + "/web/portforward?ports=80&ports=443", backend: true},
		// Credential parameters Envoy would not erase (query.go).
		{name: "percent-encoded CSRF parameter name", headers: []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}}, path: podsPath + "?gitlab%2Dcsrf%2Dtoken=c", wantCode: 400, wantReason: "ambiguous_query", wantMessage: "percent-encoded"},
		{name: "CSRF parameter in upper case", headers: []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}}, path: podsPath + "?GITLAB-CSRF-TOKEN=c", wantCode: 400, wantReason: "ambiguous_query", wantMessage: "another spelling"},
		{name: "agent id parameter with '+'", headers: []hdr{pat(aliceToken)}, path: podsPath + "?gitlab-agent-id+=1", wantCode: 400, wantReason: "ambiguous_query"},
		{name: "malformed Authorization does not fall through to a cookie", headers: []hdr{{"authorization", "Bearer junk"}, {"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}, {"x-csrf-token", "c"}}, wantCode: 401, wantReason: "malformed_credential"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.backend.auths.Load()
			path := tt.path
			if path == "" {
				path = podsPath
			}
			resp := f.check(t, checkRequest("GET", path, tt.headers...))
			if tt.wantCode == 0 {
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				return
			}
			d := denied(t, resp)
			if d.code != tt.wantCode || d.reason != tt.wantReason || !strings.Contains(d.message, tt.wantMessage) {
				t.Fatalf("got %+v, want %d %s %q", d, tt.wantCode, tt.wantReason, tt.wantMessage)
			}
			if reached := f.backend.auths.Load() > before; reached && !tt.backend {
				t.Fatalf("the identity backend was called for input that should be refused before it")
			}
		})
	}
}

// TestRequestsAndResponses covers access.md §4's error list and allow in user mode.
func TestRequestsAndResponses(t *testing.T) {
	f := start(t, sandboxConfig, "../policy/testdata/operator")
	tests := []struct {
		name        string
		method      string
		path        string
		headers     []hdr
		wantCode    int
		wantReason  string
		wantMessage string
	}{
		{name: "reporter only", path: podsPath, headers: []hdr{pat(token("bob"))}, wantCode: 403, wantReason: "not_a_member", wantMessage: "not a Developer or higher member"},
		{name: "subgroup member only", path: podsPath, headers: []hdr{pat(token("dave"))}, wantCode: 403, wantReason: "not_a_member"},
		{name: "policy denial carries its message", path: "/k8s-proxy/api/v1/namespaces/kube-system/secrets", headers: []hdr{pat(aliceToken)}, wantCode: 403, wantReason: "policy_denied", wantMessage: "reading secrets in kube-system"},
		{name: "Impersonate-User", path: podsPath, headers: []hdr{pat(aliceToken), {"impersonate-user", "admin"}}, wantCode: 403, wantReason: "client_impersonation", wantMessage: "impersonation through the gateway is not allowed"},
		{name: "Impersonate-Group", path: podsPath, headers: []hdr{pat(aliceToken), {"impersonate-group", "system:masters"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "Impersonate-Uid", path: podsPath, headers: []hdr{pat(aliceToken), {"impersonate-uid", "0"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "Impersonate-Extra", path: podsPath, headers: []hdr{pat(aliceToken), {"impersonate-extra-scopes", "x"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "front-proxy X-Remote-User", path: podsPath, headers: []hdr{pat(aliceToken), {"x-remote-user", "admin"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "front-proxy X-Remote-Group", path: podsPath, headers: []hdr{pat(aliceToken), {"x-remote-group", "system:masters"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "impersonation without credential", path: podsPath, headers: []hdr{{"impersonate-user", "admin"}}, wantCode: 403, wantReason: "client_impersonation"},
		{name: "outside the prefix", path: "/metrics", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "outside_prefix", wantMessage: "/k8s-proxy/"},
		{name: "prefix without slash", path: "/k8s-proxy", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "outside_prefix"},
		{name: "dot segments", path: "/k8s-proxy/api/v1/../../version", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "bad_request"},
		{name: "encoded slash", path: "/k8s-proxy/api/v1/namespaces/a%2Fb/pods", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "bad_request"},
		{name: "malformed query", path: podsPath + "?a=%zz", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "bad_request"},
		// The policy decides on the query the API server will parse (query.go).
		{name: "policy denies a watch", path: "/k8s-proxy/api/v1/namespaces/demo/configmaps?watch=true", headers: []hdr{pat(aliceToken)}, wantCode: 403, wantReason: "policy_denied", wantMessage: "watching configmaps"},
		{name: "policy denies a watch spelled watch=", path: "/k8s-proxy/api/v1/namespaces/demo/configmaps?watch", headers: []hdr{pat(aliceToken)}, wantCode: 403, wantReason: "policy_denied", wantMessage: "watching configmaps"},
		{name: "repeated watch", path: "/k8s-proxy/api/v1/namespaces/demo/configmaps?watch=false&watch=true", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "ambiguous_query", wantMessage: "watch appears 2 times"},
		{name: "percent-encoded watch", path: "/k8s-proxy/api/v1/namespaces/demo/configmaps?watch=false&%77atch=true", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "ambiguous_query"},
		{name: "policy denies a field selector", path: podsPath + "?fieldSelector=spec.nodeName%3Dn1", headers: []hdr{pat(aliceToken)}, wantCode: 403, wantReason: "policy_denied", wantMessage: "selecting pods by node"},
		{name: "field selector behind an encoded name", path: podsPath + "?fieldSelector=metadata.name%3Dweb&%66ieldSelector=spec.nodeName%3Dn1", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "ambiguous_query"},
		{name: "field selector repeated", path: podsPath + "?fieldSelector=metadata.name%3Dweb&fieldSelector=spec.nodeName%3Dn1", headers: []hdr{pat(aliceToken)}, wantCode: 400, wantReason: "ambiguous_query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			d := denied(t, f.check(t, checkRequest(method, tt.path, tt.headers...)))
			if d.code != tt.wantCode || d.reason != tt.wantReason || !strings.Contains(d.message, tt.wantMessage) {
				t.Fatalf("got %+v, want %d %s %q", d, tt.wantCode, tt.wantReason, tt.wantMessage)
			}
		})
	}

	t.Run("allowed in user mode", func(t *testing.T) {
		resp := f.check(t, checkRequest("GET", podsPath+"?watch=1&gitlab-agent-id=1", pat(aliceToken), hdr{"cookie", "a=b"}))
		ok := resp.GetOkResponse()
		if resp.GetStatus().GetCode() != int32(codes.OK) || ok == nil {
			t.Fatalf("want OK, got %v", resp)
		}
		if fmt.Sprint(ok.GetHeadersToRemove()) != "[authorization cookie gitlab-agent-id x-csrf-token]" ||
			fmt.Sprint(ok.GetQueryParametersToRemove()) != "[gitlab-agent-id gitlab-csrf-token]" {
			t.Fatalf("credential scrubbing: %v %v", ok.GetHeadersToRemove(), ok.GetQueryParametersToRemove())
		}
		// Only the upstream choice and Impersonate-User, each set (not appended) in
		// one line: a request ext_proc skips goes upstream as the user, never as the
		// agent.
		if h := okHeaders(t, resp); len(h) != 2 || h["impersonate-user"] != "gitlab:user:alice" || h["x-kubegate-upstream"] != "kubegate_apiserver_1" {
			t.Fatalf("user-mode OK headers: want only impersonate-user: gitlab:user:alice and the upstream choice, got %v", h)
		}
		d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: resp.GetDynamicMetadata()}})
		if err != nil {
			t.Fatal(err)
		}
		want := handoff.Decision{ID: "req-1", AccessAs: "user", User: "gitlab:user:alice",
			Groups: []string{"gitlab:user", "gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter", "gitlab:project_role:1:developer", "gitlab:project_role:1:maintainer"},
			Extra:  map[string][]string{"agent.gitlab.com/id": {"1"}, "agent.gitlab.com/username": {"alice"}, "agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"1"}}}
		if fmt.Sprint(d) != fmt.Sprint(want) {
			t.Fatalf("metadata\n got %+v\nwant %+v", d, want)
		}
	})
}

// okHeaders returns the request headers an OK answer sets, by name, after
// checking each is one line that replaces any copy the request has
// (OVERWRITE_IF_EXISTS_OR_ADD) and leaves the deprecated append unset, which
// Envoy would read before append_action.
func okHeaders(t *testing.T, resp *authv3.CheckResponse) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		//lint:ignore SA1019 checking that the deprecated field is not set
		legacy := h.GetAppend() != nil
		if legacy || h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || len(h.GetHeader().GetRawValue()) != 0 {
			t.Fatalf("OK header %v is not one line replacing any other", h)
		}
		if _, dup := out[h.GetHeader().GetKey()]; dup {
			t.Fatalf("OK header %s set twice: %v", h.GetHeader().GetKey(), resp.GetOkResponse().GetHeaders())
		}
		out[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return out
}

func TestAgentMode(t *testing.T) {
	cfg := t.TempDir() + "/agent.yaml"
	writeFile(t, cfg, "user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n")
	f := start(t, cfg, "")
	resp := f.check(t, checkRequest("GET", podsPath, pat(aliceToken)))
	d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: resp.GetDynamicMetadata()}})
	if err != nil || d.AccessAs != "agent" || d.User != "" || d.Groups != nil {
		t.Fatalf("agent mode metadata %+v %v", d, err)
	}
	if resp.GetOkResponse() == nil || len(resp.GetOkResponse().GetHeadersToRemove()) != 4 {
		t.Fatalf("want OK with credential scrubbing, got %v", resp)
	}
	if h := okHeaders(t, resp); len(h) != 1 || h["x-kubegate-upstream"] != "kubegate_apiserver_1" {
		t.Fatalf("agent mode sets only the upstream choice, got %v", h)
	}
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(token("bob"))))); d.code != 403 {
		t.Fatalf("reporter in agent mode: %+v", d)
	}
}

func TestMisconfiguredEnvoyIsRefused(t *testing.T) {
	f := start(t, sandboxConfig, "")
	req := checkRequest("GET", podsPath, pat(aliceToken))
	// Without encode_raw_headers Envoy sends the joined headers map instead.
	req.Attributes.Request.Http.HeaderMap = nil
	req.Attributes.Request.Http.Headers = map[string]string{"authorization": "Bearer pat:1:" + aliceToken}
	d := denied(t, f.check(t, req))
	if d.code != 500 || d.reason != "gateway_misconfigured" {
		t.Fatalf("got %+v", d)
	}
	if !strings.Contains(f.logs.String(), "encode_raw_headers") {
		t.Fatalf("the log does not tell the operator what to fix: %s", f.logs.String())
	}
}

// TestBadInput sends what no real kubectl sends: never a panic, never an allow,
// never the credential in a log line.
func TestBadInput(t *testing.T) {
	f := start(t, sandboxConfig, "")
	many := []hdr{pat(aliceToken)}
	for i := range 500 {
		many = append(many, hdr{fmt.Sprintf("x-filler-%d", i), "v"})
	}
	tests := []struct {
		name     string
		headers  []hdr
		wantCode int
	}{
		{"oversized token", []hdr{pat(strings.Repeat("A", 64<<10))}, 401},
		{"binary token", []hdr{pat("\x00\x01\x02\xff")}, 401},
		{"CR LF in value", []hdr{pat(aliceToken + "\r\nimpersonate-user: admin")}, 401},
		{"non-UTF-8", []hdr{pat("\xc3\x28" + aliceToken)}, 401},
		{"hundreds of headers are fine", many, 0},
		{"token is a Rego injection attempt", []hdr{pat(`"} else := {"allowed": true`)}, 401},
		{"empty header name", []hdr{pat(aliceToken), {"", "x"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.check(t, checkRequest("GET", podsPath, tt.headers...))
			if tt.wantCode == 0 {
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				return
			}
			if d := denied(t, resp); d.code != tt.wantCode {
				t.Fatalf("got %+v", d)
			}
		})
	}
	logs := f.logs.String()
	for _, secret := range []string{aliceToken, "AAAAAAAAAAAAAAAA", "admin"} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a credential or injected value reached the log: %q", secret)
		}
	}
	if !strings.Contains(logs, `"msg":"decision"`) || !strings.Contains(logs, `"user":"alice"`) {
		t.Fatalf("no audit lines: %s", logs)
	}
}

// TestReloadUnderLoad swaps the snapshot continuously while Checks run: every Check
// gets a complete, correct answer from one version or the other.
func TestReloadUnderLoad(t *testing.T) {
	f := start(t, sandboxConfig, "")
	agentCfg := t.TempDir() + "/agent.yaml"
	writeFile(t, agentCfg, "user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n")
	snaps := []*Snapshot{snapshot(t, sandboxConfig, "", f.backend), snapshot(t, agentCfg, "", f.backend)}

	ctx, cancel := context.WithCancel(context.Background())
	var swaps atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			if err := f.server.Swap(snaps[i%2]); err != nil {
				t.Error(err)
				return
			}
			swaps.Add(1)
		}
	}()
	const workers, each = 8, 200
	var wg sync.WaitGroup
	var users, agents atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				resp, err := f.client.Check(context.Background(), checkRequest("GET", podsPath, pat(aliceToken)))
				if err != nil || resp.GetOkResponse() == nil {
					t.Errorf("lost a request during reload: %v %v", resp, err)
					return
				}
				d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: resp.GetDynamicMetadata()}})
				switch {
				case err != nil:
					t.Errorf("bad metadata during reload: %v", err)
				case d.AccessAs == "user" && len(d.Groups) == 6:
					users.Add(1)
				case d.AccessAs == "agent" && d.User == "":
					agents.Add(1)
				default:
					t.Errorf("a mixed decision during reload: %+v", d)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-done
	if users.Load()+agents.Load() != workers*each || swaps.Load() < 2 {
		t.Fatalf("answers %d+%d of %d over %d swaps", users.Load(), agents.Load(), workers*each, swaps.Load())
	}
	if err := f.server.Swap(&Snapshot{}); err == nil {
		t.Fatal("an incomplete snapshot was accepted")
	}
}

// TestUnavailableBackend: a membership source that cannot answer is a 503 that says so.
func TestUnavailableBackend(t *testing.T) {
	f := start(t, sandboxConfig, "")
	snap := *f.server.current()
	down := identity.SourceUnavailable("gitlab", fmt.Errorf("dial tcp: connection refused"))
	snap.Memberships = membershipsFunc(func(context.Context, identity.User, identity.Listed) ([]identity.Membership, error) { return nil, down })
	if err := f.server.Swap(&snap); err != nil {
		t.Fatal(err)
	}
	d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(aliceToken))))
	if d.code != 503 || d.reason != "identity_unavailable" || !strings.Contains(d.message, "unavailable") {
		t.Fatalf("got %+v", d)
	}
	// An unclassified error is also a denial, never an allow.
	snap.Memberships = membershipsFunc(func(context.Context, identity.User, identity.Listed) ([]identity.Membership, error) {
		return nil, fmt.Errorf("boom")
	})
	_ = f.server.Swap(&snap)
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(aliceToken)))); d.code != 503 {
		t.Fatalf("got %+v", d)
	}
}

type membershipsFunc func(context.Context, identity.User, identity.Listed) ([]identity.Membership, error)

func (f membershipsFunc) Memberships(ctx context.Context, u identity.User, l identity.Listed) ([]identity.Membership, error) {
	return f(ctx, u, l)
}

func TestPanicIsADenial(t *testing.T) {
	f := start(t, sandboxConfig, "")
	snap := *f.server.current()
	snap.Authenticator = identity.AuthenticatorFunc(func(context.Context, identity.Credential) (*identity.Identity, bool, error) { panic("bug") })
	_ = f.server.Swap(&snap)
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(aliceToken)))); d.code != 500 {
		t.Fatalf("got %+v", d)
	}
}

// TestRejectionDetailStaysServerSide: the client cannot tell revoked from expired
// from unknown (no enumeration), the operator can.
func TestRejectionDetailStaysServerSide(t *testing.T) {
	f := start(t, sandboxConfig, "")
	seen := map[string]bool{}
	for _, tok := range []string{token("erin"), token("judy"), token("frank"), "kg-sandbox-nobody-token"} {
		d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(tok))))
		seen[d.reason+"|"+d.message] = true
	}
	if len(seen) != 1 {
		t.Fatalf("clients can tell rejections apart: %v", seen)
	}
	for _, r := range []string{`"reason":"revoked"`, `"reason":"expired"`, `"reason":"missing_scope"`, `"reason":"invalid_credential"`} {
		if !strings.Contains(f.logs.String(), r) {
			t.Errorf("the audit log lacks %s", r)
		}
	}
}

// TestAuthenticatorForAnotherAgentIsRefused: an authenticator that hands back an
// identity for another agent (a bug, or a source shared between gateways) is not
// trusted.
func TestAuthenticatorForAnotherAgentIsRefused(t *testing.T) {
	f := start(t, sandboxConfig, "")
	snap := *f.server.current()
	snap.Authenticator = identity.AuthenticatorFunc(func(_ context.Context, c identity.Credential) (*identity.Identity, bool, error) {
		return &identity.Identity{User: identity.User{ID: 1, Username: "alice"}, AccessType: c.Type, AgentID: 2}, true, nil
	})
	if err := f.server.Swap(&snap); err != nil {
		t.Fatal(err)
	}
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, pat(aliceToken)))); d.code != 401 || d.reason != "unauthorized" || d.message != "kubegate: Unauthorized" || !strings.Contains(f.logs.String(), `"reason":"wrong_agent"`) {
		t.Fatalf("got %+v", d)
	}
}
