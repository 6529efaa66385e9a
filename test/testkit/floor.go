package testkit

import (
	"context"
	"errors"
	"io"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// NoopAuthz is the benchmarks' ext_authz floor: a Check service that allows
// everything at once, served over the same kind of gRPC connection as kubegate's.
type NoopAuthz struct {
	authv3.UnimplementedAuthorizationServer
}

func (NoopAuthz) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}

// NoopProcessor is the benchmarks' ext_proc floor: it continues every message
// without a mutation.
type NoopProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (NoopProcessor) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		if _, err := s.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}); err != nil {
			return err
		}
	}
}
