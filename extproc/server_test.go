package extproc

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/client-go/transport"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/test/testkit"
)

// stream opens a real gRPC Process stream to a processor served as kubegate
// extproc serves it (with its codec: pre-encoded answers).
func stream(t *testing.T) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	srv, err := NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return openStream(t, serve(t, srv, true))
}

// serve serves srv over real gRPC, with the processor's codec or without.
func serve(t *testing.T, srv *Server, preEncoded bool) extprocv3.ExternalProcessorClient {
	t.Helper()
	var opts []grpc.ServerOption
	if preEncoded {
		opts = srv.ServerOptions()
	}
	return extprocv3.NewExternalProcessorClient(testkit.ServeGRPCWith(t, opts, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) }))
}

func openStream(t *testing.T, c extprocv3.ExternalProcessorClient) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var userDecision = handoff.Decision{
	ID: "req-1", AccessAs: "user", User: "gitlab:user:alice",
	Groups: []string{"gitlab:user", "gitlab:project_role:1:guest", "gitlab:project_role:1:developer"},
	Extra: map[string][]string{
		"agent.gitlab.com/id": {"1"}, "agent.gitlab.com/username": {"alice"},
		"agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"42"},
	},
}

func metadata(t *testing.T, d handoff.Decision) *corev3.Metadata {
	t.Helper()
	s, err := d.Struct()
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: s}}
}

func headersRequest(md *corev3.Metadata, headers ...string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(headers); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: headers[i], RawValue: []byte(headers[i+1])})
	}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm}},
		MetadataContext: md,
	}
}

func roundTrip(t *testing.T, s extprocv3.ExternalProcessor_ProcessClient, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	t.Helper()
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// line renders one set_headers entry as "name: value (append)" for exact comparison.
func lines(m *extprocv3.HeaderMutation) []string {
	var out []string
	for _, o := range m.GetSetHeaders() {
		if o.GetHeader().GetValue() != "" {
			out = append(out, "VALUE FIELD USED: "+o.GetHeader().GetKey())
		}
		app := "overwrite"
		//lint:ignore SA1019 the legacy append is what kubegate sets and what Envoy 1.40's ext_proc reads (headers.go)
		if o.GetAppend().GetValue() {
			app = "append"
		}
		if o.GetAppendAction() != 0 {
			app += fmt.Sprintf(" action=%v", o.GetAppendAction())
		}
		out = append(out, fmt.Sprintf("%s: %s (%s)", o.GetHeader().GetKey(), o.GetHeader().GetRawValue(), app))
	}
	return out
}

func TestUserModeMutation(t *testing.T) {
	s := stream(t)
	resp := roundTrip(t, s, headersRequest(metadata(t, userDecision),
		":path", "/api/v1/pods", "impersonate-group", "system:masters", "Impersonate-User", "gitlab:user:alice", "impersonate-group", "x", "impersonate-extra-scopes", "all", "accept", "application/json"))
	hr := resp.GetRequestHeaders()
	if hr == nil || hr.GetResponse().GetStatus() != extprocv3.CommonResponse_CONTINUE {
		t.Fatalf("want CONTINUE on request headers, got %v", resp)
	}
	m := hr.GetResponse().GetHeaderMutation()
	if got, want := strings.Join(m.GetRemoveHeaders(), ","), "impersonate-group,impersonate-user,impersonate-extra-scopes"; got != want {
		t.Errorf("removed %s, want %s", got, want)
	}
	want := []string{
		"impersonate-user: gitlab:user:alice (overwrite)",
		"impersonate-group: gitlab:user (append)",
		"impersonate-group: gitlab:project_role:1:guest (append)",
		"impersonate-group: gitlab:project_role:1:developer (append)",
		"impersonate-extra-agent.gitlab.com%2Faccess_type: personal_access_token (append)",
		"impersonate-extra-agent.gitlab.com%2Fconfig_project_id: 42 (append)",
		"impersonate-extra-agent.gitlab.com%2Fid: 1 (append)",
		"impersonate-extra-agent.gitlab.com%2Fusername: alice (append)",
	}
	if got := lines(m); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("set headers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if hr.GetResponse().GetBodyMutation() != nil || hr.GetResponse().GetClearRouteCache() {
		t.Errorf("unexpected body mutation or route cache clearing")
	}
}

func TestAgentModeAddsNothing(t *testing.T) {
	s := stream(t)
	resp := roundTrip(t, s, headersRequest(metadata(t, handoff.Decision{ID: "r", AccessAs: "agent"}), "impersonate-group", "admin", "accept", "*/*"))
	m := resp.GetRequestHeaders().GetResponse().GetHeaderMutation()
	if len(m.GetSetHeaders()) != 0 || strings.Join(m.GetRemoveHeaders(), ",") != "impersonate-group" {
		t.Fatalf("agent mode mutation %v", m)
	}
}

// TestImpersonateUserMustMatch: kubegate authz sets Impersonate-User itself in user
// mode (so a request ext_proc never acts on cannot run as the agent); the processor
// refuses a request whose Impersonate-User lines are not exactly the decision's
// user, and an agent-mode request that has one at all.
func TestImpersonateUserMustMatch(t *testing.T) {
	agent := handoff.Decision{ID: "r", AccessAs: "agent"}
	tests := []struct {
		name    string
		d       handoff.Decision
		headers []string
		allowed bool
	}{
		{name: "user mode, the decision's user", d: userDecision, headers: []string{"impersonate-user", "gitlab:user:alice"}, allowed: true},
		{name: "user mode, header name in another case", d: userDecision, headers: []string{"Impersonate-User", "gitlab:user:alice"}, allowed: true},
		{name: "user mode, missing", d: userDecision},
		{name: "user mode, another user", d: userDecision, headers: []string{"impersonate-user", "gitlab:user:bob"}},
		{name: "user mode, two lines", d: userDecision, headers: []string{"impersonate-user", "gitlab:user:alice", "impersonate-user", "system:admin"}},
		{name: "user mode, empty", d: userDecision, headers: []string{"impersonate-user", ""}},
		{name: "agent mode, none", d: agent, allowed: true},
		{name: "agent mode, set", d: agent, headers: []string{"impersonate-user", "gitlab:user:alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := roundTrip(t, stream(t), headersRequest(metadata(t, tt.d), append([]string{":path", "/api"}, tt.headers...)...))
			ir := resp.GetImmediateResponse()
			if tt.allowed {
				if ir != nil || resp.GetRequestHeaders().GetResponse().GetStatus() != extprocv3.CommonResponse_CONTINUE {
					t.Fatalf("want CONTINUE, got %v", resp)
				}
				return
			}
			if ir == nil || ir.GetStatus().GetCode() != http.StatusForbidden || ir.GetDetails() != "kubegate_identity_mismatch" ||
				!strings.HasPrefix(string(ir.GetBody()), "kubegate: the identity the gateway's authorization service set does not match") {
				t.Fatalf("want a 403 identity_mismatch denial, got %v", resp)
			}
		})
	}
}

// TestFailClosed: without a valid decision the request is answered by the processor,
// never continued.
func TestFailClosed(t *testing.T) {
	good, _ := userDecision.Struct()
	inner := good.Fields[handoff.Key].GetStructValue()
	with := func(field string, v *structpb.Value) *corev3.Metadata {
		fields := map[string]*structpb.Value{}
		for k, x := range inner.Fields {
			fields[k] = x
		}
		if v == nil {
			delete(fields, field)
		} else {
			fields[field] = v
		}
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: {Fields: map[string]*structpb.Value{
			handoff.Key: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
		}}}}
	}
	tests := []struct {
		name string
		md   *corev3.Metadata
	}{
		{"no metadata", nil},
		{"other namespace only", &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": good}}},
		{"namespace without kubegate key", &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: {Fields: map[string]*structpb.Value{}}}}},
		{"kubegate key not a struct", &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: {Fields: map[string]*structpb.Value{handoff.Key: structpb.NewStringValue("allow")}}}}},
		{"no version", with("version", nil)},
		{"version 1 (one Value per group)", with("version", structpb.NewNumberValue(1))},
		{"version 2 (groups written whole)", with("version", structpb.NewNumberValue(2))},
		{"future version", with("version", structpb.NewNumberValue(4))},
		{"unknown access mode", with("access_as", structpb.NewStringValue("admin"))},
		{"user mode without identity", with("identity", nil)},
		{"identity not a string", with("identity", structpb.NewListValue(&structpb.ListValue{}))},
		{"identity without groups", with("identity", structpb.NewStringValue(handoff.EncodeIdentity("gitlab:user:alice", nil, nil)))},
		{"identity with trailing data", with("identity", structpb.NewStringValue(handoff.EncodeIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil)+"1:system:masters"))},
		{"identity truncated", with("identity", structpb.NewStringValue(handoff.EncodeIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil)[:12]))},
		{"identity in the version 2 form", with("identity", structpb.NewStringValue("17:gitlab:user:alice2;11:gitlab:user14:system:masters0;"))},
		{"identity with a group sharing more than the previous one has", with("identity", structpb.NewStringValue("17:gitlab:user:alice2;0;11:gitlab:user12;8::masters0;"))},
		{"identity with a shared prefix not the longest", with("identity", structpb.NewStringValue("17:gitlab:user:alice2;0;11:gitlab:user0;11:gitlab:user0;"))},
		{"version 1 groups field", with("groups", structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewStringValue("system:masters")}}))},
		{"unknown field", with("allow_all", structpb.NewBoolValue(true))},
		{"agent mode with identity", func() *corev3.Metadata {
			md := with("access_as", structpb.NewStringValue("agent"))
			return md
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := stream(t)
			resp := roundTrip(t, s, headersRequest(tt.md, "accept", "*/*"))
			ir := resp.GetImmediateResponse()
			if ir == nil || resp.GetRequestHeaders() != nil {
				t.Fatalf("want an immediate response, got %v", resp)
			}
			// A plain-text body and no headers: Envoy checks immediate-response
			// headers against mutation_rules, which allow only impersonate-*, and
			// labels the body text/plain (see denial).
			if int(ir.GetStatus().GetCode()) != http.StatusForbidden || !strings.HasPrefix(string(ir.GetBody()), "kubegate: the request carries no authorization decision") || ir.GetHeaders() != nil {
				t.Fatalf("immediate response %v is not a plain-text 403 without headers", ir)
			}
		})
	}
}

func TestOtherPhasesContinue(t *testing.T) {
	s := stream(t)
	for _, req := range []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
		{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x")}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{}}},
		{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}},
		{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}},
	} {
		resp := roundTrip(t, s, req)
		if resp.GetImmediateResponse() != nil || resp.GetResponse() == nil {
			t.Fatalf("phase %T: got %v", req.GetRequest(), resp)
		}
		if c := commonOf(resp); c != nil && (c.GetHeaderMutation() != nil || c.GetBodyMutation() != nil) {
			t.Fatalf("phase %T mutated: %v", req.GetRequest(), resp)
		}
	}
	if resp := roundTrip(t, s, &extprocv3.ProcessingRequest{}); resp.GetImmediateResponse() == nil {
		t.Fatalf("an empty message must be refused, got %v", resp)
	}
}

func commonOf(r *extprocv3.ProcessingResponse) *extprocv3.CommonResponse {
	switch x := r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return x.ResponseHeaders.GetResponse()
	case *extprocv3.ProcessingResponse_RequestBody:
		return x.RequestBody.GetResponse()
	case *extprocv3.ProcessingResponse_ResponseBody:
		return x.ResponseBody.GetResponse()
	}
	return nil
}

// TestEscapeExtraKeyMatchesClientGo compares with client-go's own impersonating
// round tripper, the encoding the API server is written to decode.
func TestEscapeExtraKeyMatchesClientGo(t *testing.T) {
	keys := []string{"agent.gitlab.com/id", "agent.gitlab.com/config_project_id", "scopes", "a b", "100%", "ünï", "x:y=z", "a~b|c"}
	extra := map[string][]string{}
	for _, k := range keys {
		extra[k] = []string{"v"}
	}
	var seen http.Header
	rt := transport.NewImpersonatingRoundTripper(transport.ImpersonationConfig{UserName: "u", Extra: extra},
		roundTripFunc(func(r *http.Request) (*http.Response, error) {
			seen = r.Header
			return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
		}))
	req, _ := http.NewRequest("GET", "https://x/", nil)
	if _, err := rt.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		name := http.CanonicalHeaderKey("Impersonate-Extra-" + EscapeExtraKey(k))
		if seen.Get(name) != "v" {
			t.Errorf("key %q: %q is not what client-go sends (%v)", k, name, seen)
		}
	}
	if got := EscapeExtraKey("agent.gitlab.com/id"); got != "agent.gitlab.com%2Fid" {
		t.Fatalf("got %s", got)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
