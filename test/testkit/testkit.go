// Package testkit holds the few helpers several packages' tests share: a real gRPC
// server on loopback, and a check that no goroutine of a package outlives its calls.
package testkit

import (
	"bytes"
	"net"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ServeGRPC starts a real gRPC server on a loopback TCP port with the services
// register adds, and returns a client connection to it. Both are closed at cleanup.
func ServeGRPC(tb testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	tb.Helper()
	return ServeGRPCWith(tb, nil, register)
}

// ServeGRPCWith is ServeGRPC with server options (a service's own codec, say).
func ServeGRPCWith(tb testing.TB, opts []grpc.ServerOption, register func(*grpc.Server)) *grpc.ClientConn {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	register(gs)
	go func() { _ = gs.Serve(lis) }()
	tb.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// NoGoroutinesLeft fails when goroutines running code of pkg (an import path such as
// "kubegate.dev/kubegate/identity/gitlab"), other than tests' own, outlive the calls
// that started them. Stopping is asynchronous, so it polls for a while before
// failing; it asserts an outcome, not a duration.
func NoGoroutinesLeft(tb testing.TB, pkg string) {
	tb.Helper()
	marker := pkg + "."
	var dump bytes.Buffer
	for range 100 {
		dump.Reset()
		_ = pprof.Lookup("goroutine").WriteTo(&dump, 2)
		leaked := false
		for _, g := range strings.Split(dump.String(), "\n\n") {
			if strings.Contains(g, marker) && !strings.Contains(g, "testing.tRunner") {
				leaked = true
			}
		}
		if !leaked {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Errorf("goroutines of %s left behind:\n%s", pkg, dump.String())
}

// Goroutines counts the goroutines running code of pkg, other than tests' own (the
// same matching as NoGoroutinesLeft), and returns the dump it counted in.
func Goroutines(pkg string) (int, string) {
	marker := pkg + "."
	var dump bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&dump, 2)
	n := 0
	for _, g := range strings.Split(dump.String(), "\n\n") {
		if strings.Contains(g, marker) && !strings.Contains(g, "testing.tRunner") {
			n++
		}
	}
	return n, dump.String()
}

// GoroutinesBackTo fails when more than n goroutines of pkg still run, for code that
// keeps some for its lifetime (a server's accept loops) and must release the rest
// (n is a count taken with Goroutines before the calls). It polls for a while before
// failing, like NoGoroutinesLeft.
func GoroutinesBackTo(tb testing.TB, pkg string, n int) {
	tb.Helper()
	var got int
	var dump string
	for range 200 {
		if got, dump = Goroutines(pkg); got <= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Errorf("%d goroutines of %s run, %d before: left behind:\n%s", got, pkg, n, dump)
}
