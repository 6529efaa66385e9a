package perf

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"kubegate.dev/kubegate/test/testkit"
)

// floorFlag makes the test binary serve a no-op floor instead of running tests:
// `perf.test -perf-floor=authz|extproc ADDR`. The floor is a separate process like
// the measured service, so both are measured the same way.
const floorFlag = "-perf-floor="

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && strings.HasPrefix(os.Args[1], floorFlag) {
		if err := serveFloor(strings.TrimPrefix(os.Args[1], floorFlag), os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	cleanupEnv()
	os.Exit(code)
}

func serveFloor(kind, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	switch kind {
	case "authz":
		authv3.RegisterAuthorizationServer(gs, testkit.NoopAuthz{})
	case "extproc":
		extprocv3.RegisterExternalProcessorServer(gs, testkit.NoopProcessor{})
	default:
		return fmt.Errorf("unknown floor %q", kind)
	}
	return gs.Serve(lis)
}

// startFloor runs the no-op server of kind (authz or extproc) as a process.
func startFloor(tb testing.TB, dir, kind string) *server {
	tb.Helper()
	addr := freeAddr(tb)
	return start(tb, dir, "floor-"+kind, addr, []string{os.Args[0], floorFlag + kind, addr})
}
