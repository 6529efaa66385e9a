package extauthz

import (
	"context"
	"log/slog"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/realsize"
)

// BenchmarkCheckRealSizeInProcess calls Server.Check directly (no gRPC) on the
// real-size data of test/realsize with a JSON audit log to a discarding writer: the
// server's own per-request work, for profiling (go test -cpuprofile). The
// process-level figures with ratios to a floor are test/perf's.
func BenchmarkCheckRealSizeInProcess(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	dir, err := directory.Parse("directory.yaml", data.Directory)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := policy.ParseAgentConfig("agent-config.yaml", data.AgentConfig)
	if err != nil {
		b.Fatal(err)
	}
	e, err := policy.NewEngine(context.Background(), agent, cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := NewServer(agent, &Snapshot{Engine: e, Authenticator: dir, Memberships: dir}, slog.New(slog.NewJSONHandler(discard{}, nil)), nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"allowed", checkRequest("GET", podsPath, pat(data.Token))},
		{"denied-403", checkRequest("GET", podsPath, pat(data.OutsiderToken))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if _, err := srv.Check(context.Background(), tc.req); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := srv.Check(context.Background(), tc.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
