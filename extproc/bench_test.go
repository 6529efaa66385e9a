package extproc

import (
	"context"
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/test/loadgen"
	"kubegate.dev/kubegate/test/testkit"
)

func client(b *testing.B, srv extprocv3.ExternalProcessorServer) extprocv3.ExternalProcessorClient {
	return extprocv3.NewExternalProcessorClient(testkit.ServeGRPC(b, func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) }))
}

// oneRequest is what Envoy does per HTTP request with kubegate's processing mode:
// open a stream, send request_headers, read the answer, close.
func oneRequest(c extprocv3.ExternalProcessorClient, req *extprocv3.ProcessingRequest) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Process(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(req); err != nil {
		return err
	}
	resp, err := s.Recv()
	if err != nil {
		return err
	}
	if resp.GetImmediateResponse() != nil {
		// A denial is not the path being measured.
		return fmt.Errorf("the processor denied the request: %s", resp.GetImmediateResponse().GetBody())
	}
	return s.CloseSend()
}

// BenchmarkStreamRoundTrip measures one ext_proc stream per request against the
// no-op processor in the same run, at 1 and 8 concurrent callers.
func BenchmarkStreamRoundTrip(b *testing.B) {
	srv, err := NewServer(nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	kg, floor := client(b, srv), client(b, testkit.NoopProcessor{})
	d := userDecision
	for i := 0; i < 20; i++ { // a user with ~25 groups
		d.Groups = append(d.Groups, fmt.Sprintf("gitlab:project_role:%d:developer", 100+i))
	}
	s, err := d.Struct()
	if err != nil {
		b.Fatal(err)
	}
	// Impersonate-User as kubegate authz sets it in user mode (see package handoff).
	req := headersRequest(nil, ":path", "/api/v1/pods", "accept", "application/json", "user-agent", "kubectl/v1.32", "impersonate-user", d.User)
	req.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: s}}
	for _, callers := range []int{1, 8} {
		var base loadgen.Result
		b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
			base = loadgen.Run(b, callers, func() error { return oneRequest(floor, req) })
		})
		b.Run(fmt.Sprintf("c=%d/kubegate", callers), func(b *testing.B) {
			loadgen.Run(b, callers, func() error { return oneRequest(kg, req) }).Compare(b, base)
		})
	}
}
