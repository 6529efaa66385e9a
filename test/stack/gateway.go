package stack

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/dataplane"
)

// UpstreamRequest is a request as the data plane sent it to the API server.
type UpstreamRequest = dataplane.UpstreamRequest

// Data plane names, for banners and logs.
const (
	DataPlaneEnvoy = "envoy"
	DataPlaneTest  = "test data plane"
)

// startDataPlane runs the rendered bootstrap: with Envoy when asked and available,
// otherwise with the test data plane.
func startDataPlane(ctx context.Context, s *Stack, opts Options) (gateway, string, error) {
	bootstrap, err := os.ReadFile(s.Bootstrap)
	if err != nil {
		return nil, "", err
	}
	if opts.UseEnvoy {
		if bin, err := exec.LookPath("envoy"); err == nil {
			gw, err := startEnvoy(ctx, bin, s)
			return gw, DataPlaneEnvoy, err
		}
	}
	accessLog, err := os.OpenFile(filepath.Join(s.WorkDir, "logs", "access.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, "", err
	}
	dpLog, err := os.OpenFile(filepath.Join(s.WorkDir, "logs", "dataplane.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		accessLog.Close()
		return nil, "", err
	}
	var observe func(dataplane.UpstreamRequest)
	if opts.Observe != nil {
		observe = opts.Observe
	}
	dp, err := dataplane.Start(ctx, bootstrap, dataplane.Options{
		OnUpstreamRequest: observe,
		AccessLog:         accessLog,
		Logger:            slog.New(slog.NewJSONHandler(dpLog, nil)),
	})
	if err != nil {
		accessLog.Close()
		dpLog.Close()
		return nil, "", err
	}
	return closers{dp, accessLog, dpLog}, DataPlaneTest, nil
}

type closers []io.Closer

func (c closers) Close() error {
	var first error
	for _, x := range c {
		if err := x.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// envoyGateway is a real Envoy running the bootstrap.
type envoyGateway struct{ child *cluster.Child }

func (e envoyGateway) Close() error { e.child.Stop(); return nil }

func startEnvoy(ctx context.Context, bin string, s *Stack) (gateway, error) {
	child, err := cluster.StartChild("envoy", bin, []string{"-c", s.Bootstrap, "--log-level", "warn"}, filepath.Join(s.WorkDir, "logs", "envoy.log"))
	if err != nil {
		return nil, err
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(s.GatewayURL, "https://"), contract.ProxyPath)
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return envoyGateway{child}, nil
		}
		select {
		case <-child.Done():
			return nil, fmt.Errorf("envoy exited: %s\n%s", child.ExitDescription(), child.LogTail(30))
		case <-ctx.Done():
			child.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			child.Stop()
			return nil, fmt.Errorf("envoy is not listening on %s after a minute\n%s", addr, child.LogTail(30))
		}
	}
}

// Recorder keeps every request the data plane sends upstream: give its Add as
// Options.Observe, then search with Matching (a test's "nothing reached the API
// server" half).
type Recorder struct {
	mu   sync.Mutex
	reqs []UpstreamRequest
}

// Add records one request.
func (r *Recorder) Add(u UpstreamRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, u)
}

// Matching returns the recorded requests whose target contains s.
func (r *Recorder) Matching(s string) []UpstreamRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []UpstreamRequest
	for _, u := range r.reqs {
		if strings.Contains(u.Target, s) {
			out = append(out, u)
		}
	}
	return out
}
