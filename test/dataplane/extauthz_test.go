package dataplane

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/envoy"
)

// TestCheckRequestIsBuiltLikeEnvoy pins CheckRequestUtils::createHttpCheck with
// encode_raw_headers: one header_map entry per header-map entry, lower-case keys,
// raw values, pseudo-headers first; repeated lines stay apart except for Envoy's
// inline headers (Authorization among them), which the codec folds with ",".
func TestCheckRequestIsBuiltLikeEnvoy(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	authz := &authzDouble{}
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	_, listenPort, _ := net.SplitHostPort(strings.TrimPrefix(dp.URL(), "https://"))

	for _, tt := range []struct {
		name     string
		h2       bool
		protocol string
	}{{"h2", true, "HTTP/2"}, {"http/1.1", false, "HTTP/1.1"}} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(authz.requests())
			status, _, body := do(t, client(t, c, tt.h2), "GET", dp.URL()+"/k8s-proxy/api/v1/pods?watch=1&labelSelector=a%3Db", http.Header{
				"Authorization":   {"Bearer one", "Bearer two"},
				"X-Multi":         {"first", "second"},
				"X-Raw":           {"a, b ,c"},
				"X-Forwarded-For": {"10.9.8.7"},
			})
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			reqs := authz.requests()
			if len(reqs) != before+1 {
				t.Fatalf("%d CheckRequests, want 1", len(reqs)-before)
			}
			a := reqs[len(reqs)-1].GetAttributes()
			h := a.GetRequest().GetHttp()
			if _, err := strconv.ParseUint(h.GetId(), 10, 64); err != nil {
				t.Errorf("id %q is not Envoy's numeric stream id", h.GetId())
			}
			want := map[string]string{"method": "GET", "path": "/k8s-proxy/api/v1/pods?watch=1&labelSelector=a%3Db",
				"host": "127.0.0.1:" + listenPort, "scheme": "https", "protocol": tt.protocol}
			got := map[string]string{"method": h.GetMethod(), "path": h.GetPath(), "host": h.GetHost(), "scheme": h.GetScheme(), "protocol": h.GetProtocol()}
			for k := range want {
				if got[k] != want[k] {
					t.Errorf("%s = %q, want %q", k, got[k], want[k])
				}
			}
			if len(h.GetHeaders()) != 0 {
				t.Errorf("headers map is set (%v); with encode_raw_headers only header_map is", h.GetHeaders())
			}
			var keys []string
			values := map[string][]string{}
			for _, hv := range h.GetHeaderMap().GetHeaders() {
				if hv.GetValue() != "" {
					t.Errorf("header %s uses value, want raw_value", hv.GetKey())
				}
				if hv.GetKey() != strings.ToLower(hv.GetKey()) {
					t.Errorf("header key %q is not lower-case", hv.GetKey())
				}
				keys = append(keys, hv.GetKey())
				values[hv.GetKey()] = append(values[hv.GetKey()], string(hv.GetRawValue()))
			}
			pseudo := slices.Clone(keys[:4])
			slices.Sort(pseudo)
			if !slices.Equal(pseudo, []string{":authority", ":method", ":path", ":scheme"}) {
				t.Errorf("the first entries are %q, want the four pseudo-headers", keys[:4])
			}
			for k, want := range map[string][]string{
				"x-multi":           {"first", "second"},       // not inline: separate entries
				"authorization":     {"Bearer one,Bearer two"}, // inline: folded by the codec
				"x-raw":             {"a, b ,c"},               // raw bytes, not split
				"x-forwarded-proto": {"https"},
				// use_remote_address: the peer (loopback: Envoy's own address) is appended.
				"x-forwarded-for":          {"10.9.8.7,127.0.0.1"},
				"x-envoy-external-address": {"127.0.0.1"},
			} {
				if !slices.Equal(values[k], want) {
					t.Errorf("header_map %s = %q, want %q", k, values[k], want)
				}
			}
			if len(values["x-request-id"]) != 1 {
				t.Errorf("x-request-id %q, want one generated id", values["x-request-id"])
			}
			src, dst := a.GetSource().GetAddress().GetSocketAddress(), a.GetDestination().GetAddress().GetSocketAddress()
			if src.GetAddress() != "127.0.0.1" || src.GetPortValue() == 0 {
				t.Errorf("source %v, want the client's loopback address and port", src)
			}
			if dst.GetAddress() != "127.0.0.1" || strconv.Itoa(int(dst.GetPortValue())) != listenPort {
				t.Errorf("destination %v, want the listener's address", dst)
			}
			if a.GetDestination().GetPrincipal() != "localhost" {
				t.Errorf("destination principal %q, want the listener certificate's first DNS SAN", a.GetDestination().GetPrincipal())
			}
		})
	}
}

// TestExtAuthzOKResponse applies an OK answer as Filter::onComplete does: headers
// set and removed (within decoder_header_mutation_rules), query parameters removed
// with the query re-serialized in QueryParamsMulti's sorted order, response headers
// added, and dynamic metadata stored under envoy.filters.http.ext_authz with
// ext_authz_duration added, which ext_proc then receives.
func TestExtAuthzOKResponse(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	decision, _ := structpb.NewStruct(map[string]any{"kubegate": map[string]any{"version": handoff.Version, "access_as": "agent"}})
	authz := &authzDouble{answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routed(&authv3.OkHttpResponse{
				HeadersToRemove:         []string{"authorization", "cookie", "x-csrf-token"},
				QueryParametersToRemove: []string{"gitlab-agent-id", "gitlab-csrf-token"},
				Headers: []*corev3.HeaderValueOption{
					// Allowed by the rules; set (append unset = override).
					{Header: &corev3.HeaderValue{Key: "gitlab-agent-id", Value: "from-authz"}},
					// Set, then removed: onComplete applies headers before headers_to_remove.
					{Header: &corev3.HeaderValue{Key: "x-csrf-token", Value: "set-then-removed"}},
				},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-authz-said", Value: "ok"}}},
			})},
			DynamicMetadata: decision,
		}, nil
	}}
	proc := &processorDouble{}
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: proc.serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})

	status, hdr, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/pods?watch=true&gitlab-agent-id=1&b=2&a=1&gitlab-csrf-token=x&a=0", http.Header{
		"Authorization": {"Bearer user"}, "Cookie": {"kubegate_session=s"},
	})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	u := obs.last(t)
	if u.Target != "/api/v1/pods?a=1&a=0&b=2&watch=true" {
		t.Errorf("target %q: want credential parameters removed and the rest sorted by name", u.Target)
	}
	if len(u.Values("cookie")) != 0 {
		t.Errorf("cookie reached the upstream: %q", u.Values("cookie"))
	}
	if got := u.Values("gitlab-agent-id"); !slices.Equal(got, []string{"from-authz"}) {
		t.Errorf("gitlab-agent-id %q, want the value ext_authz set", got)
	}
	if got := u.Values("x-csrf-token"); len(got) != 0 {
		t.Errorf("x-csrf-token %q: headers_to_remove must apply after headers", got)
	}
	if got := u.Values("authorization"); !slices.Equal(got, []string{"Bearer " + agentToken}) {
		t.Errorf("authorization %q", got)
	}
	if u.Header[0].Name != "host" {
		t.Errorf("first upstream header %q, want host (from :authority)", u.Header[0].Name)
	}
	if hdr.Get("x-authz-said") != "ok" {
		t.Errorf("response_headers_to_add missing downstream: %v", hdr)
	}
	md := proc.requests()[0].GetMetadataContext().GetFilterMetadata()[envoy.ExtAuthzMetadataNamespace]
	if md.GetFields()["kubegate"].GetStructValue().GetFields()["access_as"].GetStringValue() != "agent" {
		t.Errorf("ext_proc did not receive the decision under %s: %v", envoy.ExtAuthzMetadataNamespace, md)
	}
	if _, ok := md.GetFields()["ext_authz_duration"].GetKind().(*structpb.Value_NumberValue); !ok {
		t.Errorf("ext_authz_duration missing from the stored metadata: %v", md)
	}
}

// TestExtAuthzDenied: a denial is answered with the service's status, headers and
// body; without a denied_response the status is 403. Nothing reaches the upstream.
func TestExtAuthzDenied(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	var answer *authv3.CheckResponse
	authz := &authzDouble{answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) { return answer, nil }}
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	cl := client(t, c, true)

	tests := []struct {
		name       string
		resp       *authv3.CheckResponse
		wantStatus int
		wantBody   string
		wantHeader map[string][]string
	}{
		{
			name: "denied response",
			resp: &authv3.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated)},
				HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
					Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
					Headers: []*corev3.HeaderValueOption{
						{Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"}},
						{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer realm="kubegate"`}},
					},
					Body: `{"kind":"Status"}`,
				}},
			},
			wantStatus: 401, wantBody: `{"kind":"Status"}`,
			wantHeader: map[string][]string{"Content-Type": {"application/json"}, "Www-Authenticate": {`Bearer realm="kubegate"`}, "Server": {"envoy"}},
		},
		{
			name:       "no denied response: 403",
			resp:       &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}},
			wantStatus: 403, wantBody: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer = tt.resp
			status, hdr, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api/v1/pods", nil)
			if status != tt.wantStatus || body != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", status, body, tt.wantStatus, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if !slices.Equal(hdr.Values(k), v) {
					t.Errorf("header %s = %q, want %q", k, hdr.Values(k), v)
				}
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d denied requests reached the upstream", n)
	}
}

// TestExtAuthzFailsClosed: with failure_mode_allow false the filter answers
// status_on_error (the bootstrap's 503) when the service errs, hangs past
// grpc_service.timeout or cannot be reached; an error_response may set its own
// status; a mutation the rules or validate_mutations refuse is a 500
// (Filter::rejectResponse). The upstream never sees any of these requests.
func TestExtAuthzFailsClosed(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dead := func() string { // an address nothing listens on
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		return l.Addr().String()
	}()
	okWith := func(ok *authv3.OkHttpResponse) func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routed(proto.Clone(ok).(*authv3.OkHttpResponse))}}, nil
		}
	}
	tests := []struct {
		name       string
		answer     func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
		unreached  bool
		wantStatus int
		wantBody   string
	}{
		{name: "gRPC error", wantStatus: 503, answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return nil, status.Error(codes.Internal, "boom")
		}},
		{name: "hangs past the timeout", wantStatus: 503, answer: hang[*authv3.CheckRequest, *authv3.CheckResponse]},
		{name: "unreachable", wantStatus: 503, unreached: true},
		{name: "error_response with a status", wantStatus: 502, wantBody: "backend down", answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.Unavailable)}, HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_BadGateway}, Body: "backend down",
			}}}, nil
		}},
		{name: "error_response without a status: status_on_error", wantStatus: 503, answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
			return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.Unavailable)}, HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{}}}, nil
		}},
		{name: "removal outside the mutation rules", wantStatus: 500, answer: okWith(&authv3.OkHttpResponse{HeadersToRemove: []string{"x-other"}})},
		// Checker::isAllowed never lets :-headers or host be removed; with rules and
		// disallow_is_error that fails the request instead of being ignored.
		{name: "removing :path under the rules", wantStatus: 500, answer: okWith(&authv3.OkHttpResponse{HeadersToRemove: []string{":path"}})},
		{name: "header set outside the mutation rules", wantStatus: 500, answer: okWith(&authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "impersonate-group", Value: "system:masters"}}}})},
		{name: "invalid header value with validate_mutations", wantStatus: 500, answer: okWith(&authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "cookie", Value: "a\r\nb"}}}})},
		{name: "deprecated append on a response header list entry is fine, an unknown append_action is not", wantStatus: 500, answer: okWith(&authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "cookie", Value: "x"}, AppendAction: 99}}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := dead
			if !tt.unreached {
				addr = (&authzDouble{answer: tt.answer}).serve(t)
			}
			dp := start(t, render(t, c, setup{authz: addr, extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile,
				edit: func(o *envoy.Options) { o.AuthzTimeout = 200 * time.Millisecond }}), Options{})
			status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/pods", http.Header{"Cookie": {"c=1"}})
			if status != tt.wantStatus || body != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", status, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d failed requests reached the upstream", n)
	}
}

// TestLegacyAppendOnOKHeaders: with the legacy append set, ext_authz appends to an
// existing header with "," and leaves an absent one alone; append false overrides
// (external_auth.proto OkHttpResponse.headers).
func TestLegacyAppendOnOKHeaders(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	authz := &authzDouble{answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routed(&authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "cookie", Value: "added"}, Append: wrapperspb.Bool(true)},
				{Header: &corev3.HeaderValue{Key: "x-csrf-token", Value: "absent-stays-absent"}, Append: wrapperspb.Bool(true)},
				{Header: &corev3.HeaderValue{Key: "gitlab-agent-id", Value: "2"}, Append: wrapperspb.Bool(false)},
			},
		})}}, nil
	}}
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	status, _, body := do(t, client(t, c, false), "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Cookie": {"c=1"}, "Gitlab-Agent-Id": {"1"}})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	u := obs.last(t)
	for k, want := range map[string][]string{"cookie": {"c=1,added"}, "x-csrf-token": nil, "gitlab-agent-id": {"2"}} {
		if got := u.Values(k); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

// TestOKHeaderAppendActions pins how Envoy 1.40 applies OkHttpResponse.headers
// without the legacy append (ext_authz_grpc_impl.cc getAppendAction; ext_authz.cc
// Filter::onComplete): append_action decides, and its zero value
// APPEND_IF_EXISTS_OR_ADD adds a new line beside the client's — an entry with
// neither field is added, not set.
func TestOKHeaderAppendActions(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	var headers []*corev3.HeaderValueOption
	authz := &authzDouble{answer: func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routed(&authv3.OkHttpResponse{Headers: slices.Clone(headers)})}}, nil
	}}
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: authz.serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	opt := func(v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "cookie", Value: v}, AppendAction: a}
	}
	tests := []struct {
		name   string
		client []string
		opts   []*corev3.HeaderValueOption
		want   []string
	}{
		{name: "neither field: a new line beside the client's", client: []string{"c=1"}, opts: []*corev3.HeaderValueOption{opt("ours", 0)}, want: []string{"c=1", "ours"}},
		{name: "neither field, header absent: added", opts: []*corev3.HeaderValueOption{opt("ours", 0)}, want: []string{"ours"}},
		{name: "neither field twice: two lines", opts: []*corev3.HeaderValueOption{opt("a", 0), opt("b", 0)}, want: []string{"a", "b"}},
		{name: "OVERWRITE_IF_EXISTS_OR_ADD replaces the client's", client: []string{"c=1", "c=2"}, opts: []*corev3.HeaderValueOption{opt("ours", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}, want: []string{"ours"}},
		{name: "ADD_IF_ABSENT keeps the client's", client: []string{"c=1"}, opts: []*corev3.HeaderValueOption{opt("ours", corev3.HeaderValueOption_ADD_IF_ABSENT)}, want: []string{"c=1"}},
		{name: "OVERWRITE_IF_EXISTS on an absent header does nothing", opts: []*corev3.HeaderValueOption{opt("ours", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS)}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			headers = tt.opts
			h := http.Header{}
			for _, v := range tt.client {
				h.Add("Cookie", v)
			}
			status, _, body := do(t, client(t, c, false), "GET", dp.URL()+"/k8s-proxy/api", h)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			if got := obs.last(t).Values("cookie"); !slices.Equal(got, tt.want) {
				t.Errorf("cookie = %q, want %q", got, tt.want)
			}
		})
	}
}
