package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfiltv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
)

// TestProcessingRequest: with the real kubegate authz in front, ext_proc receives
// request_headers (raw values, pseudo-headers, the credential already removed by
// ext_authz, end_of_stream for a GET), the ext_authz decision in metadata_context
// under the forwarded namespace, and the protocol configuration.
func TestProcessingRequest(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	proc := &processorDouble{}
	_, xds := realXDS(t, agentToken)
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: proc.serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})

	status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/pods", http.Header{"Authorization": {alicePAT()}, "X-Two": {"a", "b"}})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	reqs := proc.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d processing messages, want only request_headers (everything else SKIP/NONE)", len(reqs))
	}
	rh := reqs[0].GetRequestHeaders()
	if rh == nil || !rh.GetEndOfStream() {
		t.Fatalf("want request_headers with end_of_stream for a GET, got %v", reqs[0])
	}
	values := map[string][]string{}
	for _, h := range rh.GetHeaders().GetHeaders() {
		if h.GetValue() != "" {
			t.Errorf("%s travels in value, want raw_value", h.GetKey())
		}
		values[h.GetKey()] = append(values[h.GetKey()], string(h.GetRawValue()))
	}
	if values[":path"][0] != "/k8s-proxy/api/v1/pods" || !slices.Equal(values["x-two"], []string{"a", "b"}) {
		t.Errorf("headers %v: want the prefixed :path and both x-two lines", values)
	}
	if len(values["authorization"]) != 0 {
		t.Errorf("ext_proc saw authorization %q: ext_authz removes it first", values["authorization"])
	}
	d, err := handoff.FromMetadata(reqs[0].GetMetadataContext())
	if err != nil {
		t.Fatalf("metadata_context does not carry the decision: %v", err)
	}
	if d.User != "gitlab:user:alice" {
		t.Errorf("decision user %q", d.User)
	}
	pc := reqs[0].GetProtocolConfig()
	if pc.GetRequestBodyMode() != extprocfiltv3.ProcessingMode_NONE || pc.GetResponseBodyMode() != extprocfiltv3.ProcessingMode_NONE {
		t.Errorf("protocol_config %v", pc)
	}
}

func set(k, v string, appendLine *bool, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	o := &corev3.HeaderValueOption{Header: rawHeader(k, v), AppendAction: action}
	if appendLine != nil {
		//lint:ignore SA1019 the legacy append is what kubegate's processor sets and Envoy 1.40's ext_proc reads
		o.Append = wrapperspb.Bool(*appendLine)
	}
	return o
}

var yes, no = func() *bool { b := true; return &b }(), func() *bool { b := false; return &b }()

// TestHeaderMutationSemantics pins MutationUtils::applyHeaderMutations under
// kubegate's mutation_rules (only impersonate-.+, disallow_is_error): removals
// before sets; only the legacy append decides (default: overwrite) and
// append_action is ignored, whatever its value (mutation_utils.cc reads
// PROTOBUF_GET_WRAPPED_OR_DEFAULT(sh, append, false) only); raw_value is the value.
func TestHeaderMutationSemantics(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	var mutation *extprocv3.HeaderMutation
	proc := &processorDouble{answer: func(ctx context.Context, r *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		return continueWith(mutation)(ctx, r)
	}}
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: proc.serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	cl := client(t, c, true)

	tests := []struct {
		name   string
		client http.Header
		m      *extprocv3.HeaderMutation
		header string
		want   []string
	}{
		{
			name:   "remove_headers run before set_headers",
			client: http.Header{"Impersonate-Group": {"client-1", "client-2"}},
			m:      &extprocv3.HeaderMutation{RemoveHeaders: []string{"impersonate-group"}, SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "ours", yes, 0)}},
			header: "impersonate-group", want: []string{"ours"},
		},
		{
			name:   "legacy append true: one line per value",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "a", yes, 0), set("impersonate-group", "b", yes, 0), set("impersonate-group", "c", yes, 0)}},
			header: "impersonate-group", want: []string{"a", "b", "c"},
		},
		{
			name:   "legacy append false: overwrite, the client's lines are replaced",
			client: http.Header{"Impersonate-Group": {"client-1", "client-2"}},
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "ours", no, 0)}},
			header: "impersonate-group", want: []string{"ours"},
		},
		{
			name:   "append unset: overwrite, the last value wins",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "a", nil, 0), set("impersonate-group", "b", nil, 0)}},
			header: "impersonate-group", want: []string{"b"},
		},
		{
			name:   "APPEND_IF_EXISTS_OR_ADD is ignored: overwrite, the last value wins",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "a", nil, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD), set("impersonate-group", "b", nil, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)}},
			header: "impersonate-group", want: []string{"b"},
		},
		{
			name:   "ADD_IF_ABSENT is ignored: append true adds a line next to the client's",
			client: http.Header{"Impersonate-Uid": {"client"}},
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-uid", "ours", yes, corev3.HeaderValueOption_ADD_IF_ABSENT)}},
			header: "impersonate-uid", want: []string{"client", "ours"},
		},
		{
			name:   "ADD_IF_ABSENT is ignored: append unset overwrites the client's",
			client: http.Header{"Impersonate-Uid": {"client"}},
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-uid", "ours", nil, corev3.HeaderValueOption_ADD_IF_ABSENT)}},
			header: "impersonate-uid", want: []string{"ours"},
		},
		{
			name:   "OVERWRITE_IF_EXISTS is ignored: an absent header is set",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-uid", "x", nil, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS)}},
			header: "impersonate-uid", want: []string{"x"},
		},
		{
			name:   "OVERWRITE_IF_EXISTS_OR_ADD is ignored: append true still adds a line",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-group", "a", yes, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD), set("impersonate-group", "b", yes, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}},
			header: "impersonate-group", want: []string{"a", "b"},
		},
		{
			name: "value without raw_value sets an empty header",
			m: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
				Header: &corev3.HeaderValue{Key: "impersonate-user", Value: "alice"},
			}}},
			header: "impersonate-user", want: []string{""},
		},
		{
			name:   "a mutation the rules ignore without error is not possible here; allowed names pass",
			m:      &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-extra-agent.gitlab.com%2fid", "1", yes, 0)}},
			header: "impersonate-extra-agent.gitlab.com%2fid", want: []string{"1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mutation = tt.m
			status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", tt.client)
			if status != http.StatusOK {
				t.Fatalf("status %d: %s", status, body)
			}
			if got := obs.last(t).Values(tt.header); !slices.Equal(got, tt.want) {
				t.Errorf("%s = %q, want %q", tt.header, got, tt.want)
			}
		})
	}
}

// TestExtProcFailsClosed: every way the processor can fail ends the request
// without reaching the upstream, with Envoy's status for it: status_on_error (the
// bootstrap's 503) for a refused mutation (handleErrorResponse), a gRPC error, an
// unreachable service or a spurious message; 504 for message_timeout
// (onMessageTimeout uses GatewayTimeout, not status_on_error).
func TestExtProcFailsClosed(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	dead := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		return l.Addr().String()
	}()
	mutate := func(m *extprocv3.HeaderMutation) func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		return continueWith(m)
	}
	many := &extprocv3.HeaderMutation{}
	for i := range 30 {
		many.SetHeaders = append(many.SetHeaders, set("impersonate-group", fmt.Sprint("g", i), yes, 0))
	}
	tests := []struct {
		name       string
		answer     func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error)
		unreached  bool
		maxHeaders uint32
		wantStatus int
	}{
		{name: "sets Authorization", wantStatus: 503, answer: mutate(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("authorization", "Bearer x", nil, 0)}})},
		{name: "removes Cookie", wantStatus: 503, answer: mutate(&extprocv3.HeaderMutation{RemoveHeaders: []string{"cookie"}})},
		{name: "sets :path", wantStatus: 503, answer: mutate(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set(":path", "/api", nil, 0)}})},
		{name: "invalid header name", wantStatus: 503, answer: mutate(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-user\n", "x", nil, 0)}})},
		{name: "both value and raw_value", wantStatus: 503, answer: mutate(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "impersonate-user", Value: "a", RawValue: []byte("b")}}}})},
		{name: "result above max_headers_count", maxHeaders: 20, wantStatus: 503, answer: mutate(many)},
		{name: "gRPC error", wantStatus: 503, answer: func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
			return nil, status.Error(codes.PermissionDenied, "no")
		}},
		{name: "unreachable", wantStatus: 503, unreached: true},
		{name: "spurious message", wantStatus: 503, answer: func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
			return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}, nil
		}},
		{name: "hangs past message_timeout", wantStatus: 504, answer: hang[*extprocv3.ProcessingRequest, *extprocv3.ProcessingResponse]},
		{name: "asks for more time, which max_message_timeout 0 refuses", wantStatus: 504, answer: func(ctx context.Context, _ *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
			return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(time.Minute)}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := dead
			if !tt.unreached {
				addr = (&processorDouble{answer: tt.answer}).serve(t)
			}
			dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: addr, xds: xds, apiserver: rec.url(), caFile: rec.caFile,
				edit: func(o *envoy.Options) {
					o.ExtProcTimeout = 200 * time.Millisecond
					if tt.maxHeaders > 0 {
						o.MaxHeadersCount = tt.maxHeaders
					}
				}}), Options{})
			status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Cookie": {"c=1"}})
			if status != tt.wantStatus {
				t.Errorf("got %d %q, want %d", status, body, tt.wantStatus)
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d failed requests reached the upstream", n)
	}
}

// TestImmediateResponse: Envoy answers with the processor's status and body; its
// headers pass the same mutation rules as any mutation, and a refused one stops
// the rest (sendImmediateResponse logs the error and keeps what was applied). With
// kubegate's rules (impersonate-* only) that drops Content-Type and
// X-Kubegate-Error, and Envoy's local reply then says text/plain.
func TestImmediateResponse(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	tests := []struct {
		name       string
		ir         *extprocv3.ImmediateResponse
		wantStatus int
		wantBody   string
		wantHeader map[string]string
	}{
		{
			name: "status, body, allowed header",
			ir: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}, Body: []byte(`{"kind":"Status"}`),
				Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("impersonate-debug", "seen", nil, 0)}}},
			wantStatus: 403, wantBody: `{"kind":"Status"}`,
			wantHeader: map[string]string{"Impersonate-Debug": "seen", "Content-Type": "text/plain"},
		},
		{
			name: "headers outside the rules are dropped",
			ir: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}, Body: []byte("denied"),
				Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
					set("content-type", "application/json", nil, 0), set("impersonate-after", "x", nil, 0),
				}}},
			wantStatus: 403, wantBody: "denied",
			wantHeader: map[string]string{"Content-Type": "text/plain", "Impersonate-After": ""},
		},
		{
			name:       "no status: 200",
			ir:         &extprocv3.ImmediateResponse{Body: []byte("hi")},
			wantStatus: 200, wantBody: "hi",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := &processorDouble{answer: func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
				return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: tt.ir}}, nil
			}}
			dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: proc.serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
			status, hdr, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil)
			if status != tt.wantStatus || body != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", status, body, tt.wantStatus, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if hdr.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, hdr.Get(k), v)
				}
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d answered requests reached the upstream", n)
	}
}

// TestProcessorClosingCleanlyLetsTheRequestThrough pins an Envoy behaviour that
// matters for kubegate: a processor that ends the stream with OK before answering
// is onGrpcClose, and the request continues unchanged whatever failure_mode_allow
// says (ext_proc/client_impl.cc onRemoteClose → ext_proc.cc Filter::onGrpcClose).
// With an ext_authz that sets nothing, the request reaches the upstream with no
// Impersonate-* header at all: as the agent.
func TestProcessorClosingCleanlyLetsTheRequestThrough(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: closingProcessor().serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := obs.last(t).Values("impersonate-user"); len(got) != 0 {
		t.Errorf("impersonate-user %q", got)
	}
}

// closingProcessor ends every stream with gRPC OK before answering.
func closingProcessor() *processorDouble {
	return &processorDouble{answer: func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		return nil, nil
	}}
}

// TestSkippedExtProcNeverActsAsTheAgent: with the real kubegate authz in user mode
// and a processor that closes its stream cleanly (so Envoy continues without its
// mutation), the request still carries the Impersonate-User kubegate authz set —
// the user, without groups or extras — and never goes upstream as the agent.
func TestSkippedExtProcNeverActsAsTheAgent(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: closingProcessor().serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	u := obs.last(t)
	if got := u.Values("impersonate-user"); !slices.Equal(got, []string{"gitlab:user:alice"}) {
		t.Errorf("impersonate-user %q, want exactly the user kubegate authz set", got)
	}
	for _, h := range u.Header {
		if strings.HasPrefix(h.Name, "impersonate-") && h.Name != "impersonate-user" {
			t.Errorf("%s: %q reached the upstream although ext_proc never answered", h.Name, h.Value)
		}
	}
	if got := u.Values("authorization"); !slices.Equal(got, []string{"Bearer " + agentToken}) {
		t.Errorf("authorization %q, want the agent token", got)
	}
}

// TestKubegateExtprocDenialThroughEnvoy runs kubegate extproc's own denial (a
// request without an ext_authz decision) through the stand-in: Envoy checks the
// immediate response's headers against mutation_rules (ext_proc.cc
// sendImmediateResponse, immediate_response_use_filter_mutation_rule) and labels
// the body text/plain, so kubegate extproc sends a plain-text message and no
// headers — and client-go, as kubectl, shows that message as the error.
func TestKubegateExtprocDenialThroughEnvoy(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	// An ext_authz that allows without a decision, as a misconfigured one would.
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	status, hdr, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil)
	if status != http.StatusForbidden || !strings.HasPrefix(body, "kubegate: the request carries no authorization decision") {
		t.Fatalf("got %d %q, want kubegate extproc's plain-text 403", status, body)
	}
	if hdr.Get("Content-Type") != "text/plain" {
		t.Errorf("content-type %q, want Envoy's text/plain", hdr.Get("Content-Type"))
	}

	ca, err := os.ReadFile(filepath.Join(c.dir, devcert.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: dp.URL() + "/k8s-proxy", BearerToken: "pat:1:x", TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cs.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{})
	// kubectl prints such an error as "Error from server (Forbidden): <message>".
	if !apierrors.IsForbidden(err) || !strings.HasPrefix(string(apierrors.ReasonForError(err))+": "+err.Error(), "Forbidden: kubegate: the request carries no authorization decision from the gateway") {
		t.Errorf("client-go error %v, want Forbidden with kubegate's message", err)
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d denied requests reached the upstream", n)
	}
}
