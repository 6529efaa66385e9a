// Package perf measures kubegate's two services at realistic size (the data of
// test/realsize: 1,000 users, 1,000 listed entries, a user with 243 impersonated
// groups) as separate processes, each against a no-op floor server run the same way
// in the same run. Server CPU per call is read from the server process's own
// accounting (/proc/<pid>/stat), so the load generator's share does not blur it;
// latency and throughput come from test/loadgen. Figures are reported as ratios,
// never asserted (`make bench`).
package perf

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"kubegate.dev/kubegate/test/cluster"
)

// server is one measured service process.
type server struct {
	child   *cluster.Child
	addr    string
	conn    *grpc.ClientConn
	started time.Time // when the process was started
	healthy time.Time // when its health service first answered SERVING
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat: 100 on
// every Linux architecture Go supports (sysconf(_SC_CLK_TCK)).
const clockTick = 10 * time.Millisecond

// cpu is the process's user + system CPU time so far, all threads included
// (proc(5): utime and stime, fields 14 and 15 of /proc/<pid>/stat).
func (s *server) cpu(tb testing.TB) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.child.PID()))
	if err != nil {
		tb.Fatalf("server CPU: %v (this harness needs Linux /proc)", err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: split after it.
	rest := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, err1 := strconv.ParseInt(rest[11], 10, 64) // field 14 overall
	stime, err2 := strconv.ParseInt(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("server CPU: cannot parse %q", b)
	}
	return time.Duration(utime+stime) * clockTick
}

// rss is the process's resident set size (VmRSS in /proc/<pid>/status).
func (s *server) rss(tb testing.TB) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.child.PID()))
	if err != nil {
		tb.Fatalf("server RSS: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("server RSS: %q", v)
			}
			return kb * 1024
		}
	}
	tb.Fatal("server RSS: no VmRSS line")
	return 0
}

// start runs a service process that serves gRPC on addr, and waits until its gRPC
// health service answers SERVING. Its output (the JSON audit log, for kubegate) goes
// to a file in dir, as it would in production.
func start(tb testing.TB, dir, name, addr string, argv []string) *server {
	tb.Helper()
	s := &server{addr: addr, started: time.Now()}
	var err error
	s.child, err = cluster.StartChild(name, argv[0], argv[1:], filepath.Join(dir, name+".log"))
	if err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	tb.Cleanup(s.child.Stop)
	// Reconnect quickly: gRPC's default backoff waits a second after the first
	// refused connection (before the process listens), which would be measured as
	// start-up time (google.golang.org/grpc/backoff: BaseDelay 1s).
	s.conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1.5, MaxDelay: 10 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.conn.Close() })
	health := healthpb.NewHealthClient(s.conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			s.healthy = time.Now()
			return s
		}
		if s.child.Exited() || time.Now().After(deadline) {
			tb.Fatalf("%s did not become healthy (%s): %v\n%s", name, s.child.ExitDescription(), err, s.child.LogTail(30))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// freeAddr is a loopback address nobody listens on yet.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
