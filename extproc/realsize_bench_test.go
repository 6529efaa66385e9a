package extproc

import (
	"context"
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
)

// realSizeDecision has the real-size shape of test/realsize's user under test: 243
// groups (gitlab:user and the roles of 50 projects and groups) and the four extras.
func realSizeDecision() handoff.Decision {
	d := userDecision
	d.Groups = []string{"gitlab:user"}
	roles := []string{"guest", "planner", "reporter", "developer", "maintainer", "owner"}
	for i := 0; len(d.Groups) < 243; i++ {
		kind := "project"
		if i%2 == 1 {
			kind = "group"
		}
		for _, r := range roles[:4+i%3] {
			if len(d.Groups) < 243 {
				d.Groups = append(d.Groups, fmt.Sprintf("gitlab:%s_role:%d:%s", kind, 1000+37*i, r))
			}
		}
	}
	return d
}

// BenchmarkRequestHeadersRealSize runs the processor's work for one request_headers
// message with the real-size decision, without the transport but with the codec's
// marshalling: warm (the answer for this identity is kept), cold (built and encoded
// again: a user's first request), and plain (a server without the processor's
// codec, marshalling the kept message per request). For profiling (go test
// -cpuprofile); the process-level figures with ratios to a floor are test/perf's.
func BenchmarkRequestHeadersRealSize(b *testing.B) {
	d := realSizeDecision()
	s, err := d.Struct()
	if err != nil {
		b.Fatal(err)
	}
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: s}}
	req := headersRequest(md, ":path", "/api/v1/pods", "accept", "application/json", "user-agent", "kubectl/v1.32", "impersonate-user", d.User)
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		preEncoded bool
		cold       bool
	}{{"warm", true, false}, {"cold", true, true}, {"plain-codec", false, false}} {
		b.Run(tc.name, func(b *testing.B) {
			srv, err := NewServer(nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			c := codec{proto: encoding.GetCodecV2(grpcproto.Name)}
			if tc.preEncoded {
				srv.ServerOptions()
			}
			b.ReportAllocs()
			for b.Loop() {
				if tc.cold {
					srv.responses.InvalidateAll()
				}
				resp := srv.handle(ctx, req)
				if p, ok := resp.(*extprocv3.ProcessingResponse); ok && p.GetImmediateResponse() != nil {
					b.Fatal(p)
				}
				data, err := c.Marshal(resp)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
