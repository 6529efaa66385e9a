package dataplane

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"kubegate.dev/kubegate/contract"
)

// authzDouble is an Authorization service whose answer a test chooses, to drive
// the ext_authz filter through each branch of ext_authz_grpc_impl.cc and
// ext_authz.cc (OK with mutations, denied, error_response, gRPC errors, hangs).
// It records every CheckRequest it receives.
type authzDouble struct {
	authv3.UnimplementedAuthorizationServer
	answer func(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)

	mu   sync.Mutex
	reqs []*authv3.CheckRequest
}

func (a *authzDouble) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	a.mu.Lock()
	a.reqs = append(a.reqs, proto.Clone(req).(*authv3.CheckRequest))
	a.mu.Unlock()
	if a.answer == nil {
		return allow(), nil
	}
	return a.answer(ctx, req)
}

func (a *authzDouble) requests() []*authv3.CheckRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*authv3.CheckRequest(nil), a.reqs...)
}

func (a *authzDouble) serve(t testing.TB) string {
	return serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, a) })
}

// allow is kubegate authz's OK answer: it routes to the sandbox agent's cluster
// (contract.HeaderUpstream, set on every OK answer).
func allow() *authv3.CheckResponse {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: routed(&authv3.OkHttpResponse{})}}
}

// routed adds kubegate authz's choice of the sandbox agent's cluster to ok.
func routed(ok *authv3.OkHttpResponse) *authv3.OkHttpResponse {
	return routedTo(ok, apiCluster)
}

func routedTo(ok *authv3.OkHttpResponse, cluster string) *authv3.OkHttpResponse {
	ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: contract.HeaderUpstream, Value: cluster},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	})
	return ok
}

// processorDouble is an ExternalProcessor whose answer to the request-headers
// message a test chooses, to drive the ext_proc filter through ext_proc.cc and
// mutation_utils.cc (mutations with each append form, forbidden mutations,
// immediate responses, spurious messages, clean closes, hangs). It records every
// ProcessingRequest.
type processorDouble struct {
	extprocv3.UnimplementedExternalProcessorServer
	// answer returns the response to send; nil response with nil error closes the
	// stream cleanly without answering; an error ends the stream with that status.
	answer func(ctx context.Context, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error)

	mu   sync.Mutex
	reqs []*extprocv3.ProcessingRequest
}

func (p *processorDouble) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.reqs = append(p.reqs, proto.Clone(req).(*extprocv3.ProcessingRequest))
		p.mu.Unlock()
		answer := p.answer
		if answer == nil {
			answer = continueWith(nil)
		}
		resp, err := answer(st.Context(), req)
		if err != nil {
			return err
		}
		if resp == nil {
			return nil
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

func (p *processorDouble) requests() []*extprocv3.ProcessingRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*extprocv3.ProcessingRequest(nil), p.reqs...)
}

func (p *processorDouble) serve(t testing.TB) string {
	return serveGRPC(t, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, p) })
}

// continueWith answers the request headers with CONTINUE and a header mutation.
func continueWith(m *extprocv3.HeaderMutation) func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	return func(context.Context, *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: m},
		}}}, nil
	}
}

// hang never answers until the stream ends.
func hang[Req, Resp any](ctx context.Context, _ Req) (Resp, error) {
	<-ctx.Done()
	var zero Resp
	return zero, ctx.Err()
}

func rawHeader(k, v string) *corev3.HeaderValue {
	return &corev3.HeaderValue{Key: k, RawValue: []byte(v)}
}
