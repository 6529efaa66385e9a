package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/internal/batchlog"
)

// serviceFlags are shared by the long-running gRPC services.
type serviceFlags struct {
	listen        string
	metricsListen string
	logLevel      string
	configFile    string
	shutdownGrace time.Duration
	// allowNonLoopback permits a --listen address other clients could reach.
	allowNonLoopback bool
	logFlush         time.Duration
	streamWorkers    int              // 0: workersPerCPU × GOMAXPROCS
	logWriter        *batchlog.Writer // set by logger; closeLog flushes it
}

func (s *serviceFlags) add(f *pflag.FlagSet, defaultListen string) {
	f.StringVar(&s.listen, "listen", defaultListen, "ADDR to serve gRPC on: host:port or unix:///path")
	f.StringVar(&s.metricsListen, "metrics-listen", "", "host:port to serve Prometheus /metrics and /healthz on (empty: off)")
	f.StringVar(&s.logLevel, "log-level", "info", "log level: debug, info, warn or error (logs are JSON on stderr)")
	f.DurationVar(&s.logFlush, "log-flush-interval", 50*time.Millisecond, "write info and debug lines (authz's one per decision) in batches at most this late; warnings and errors, and everything before them, are written at once, and all at shutdown. A kill -9 loses at most this much. 0 writes every line at once")
	f.StringVar(&s.configFile, "config", "", "YAML file of flag values (keys are flag names without --); flags given on the command line win")
	f.DurationVar(&s.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight calls may take to finish")
	f.BoolVar(&s.allowNonLoopback, "allow-non-loopback", false, allowNonLoopbackUsage)
	f.IntVar(&s.streamWorkers, "stream-workers", 0, fmt.Sprintf("gRPC workers: long-lived goroutines that run calls and keep their grown stacks; a call arriving when all are busy runs on a new goroutine instead, whose stack grows again. 0: %d per CPU (GOMAXPROCS); about Envoy's concurrent calls is right", workersPerCPU))
}

// workersPerCPU sizes the default worker pool (--stream-workers 0). Envoy holds one
// ext_proc stream and one Check per request in flight, so the calls in flight are
// the concurrent requests, not the cores: with one worker per core, at 8 concurrent
// requests on 2 cores three calls in four ran on a new goroutine, and growing its
// stack (runtime.copystack) was 16% of ext_proc's CPU; with 16 per core, 2%. An idle
// worker costs a small stack.
const workersPerCPU = 16

// workers is the worker pool's size.
func (s *serviceFlags) workers() (int, error) {
	switch {
	case s.streamWorkers < 0:
		return 0, fmt.Errorf("--stream-workers %d: give 0 (%d per CPU) or a positive number of workers", s.streamWorkers, workersPerCPU)
	case s.streamWorkers == 0:
		return workersPerCPU * runtime.GOMAXPROCS(0), nil
	}
	return s.streamWorkers, nil
}

func (s *serviceFlags) logger(w *os.File, service string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(s.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", s.logLevel)
	}
	if s.logFlush < 0 {
		return nil, fmt.Errorf("--log-flush-interval %v: must not be negative (0 writes every line at once)", s.logFlush)
	}
	s.logWriter = batchlog.New(w, s.logFlush)
	h := batchlog.Handler(slog.NewJSONHandler(s.logWriter, &slog.HandlerOptions{Level: level}), s.logWriter)
	return slog.New(h).With("service", service), nil
}

// closeLog writes the log lines still batched; call it when the service stops.
func (s *serviceFlags) closeLog() {
	if s.logWriter != nil {
		_ = s.logWriter.Close()
	}
}

// applyConfigFile sets every flag named in a YAML config file that was not given on
// the command line, so flags win over the file.
func applyConfigFile(cmd *cobra.Command, file string) error {
	if file == "" {
		return nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(data, &values); err != nil {
		return fmt.Errorf("--config %s: %w", file, err)
	}
	for key, v := range values {
		f := cmd.Flags().Lookup(key)
		if f == nil || key == "config" {
			return fmt.Errorf("--config %s: %q is not a flag of kubegate %s (see --help)", file, key, cmd.Name())
		}
		if f.Changed {
			continue
		}
		var text string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			text = strings.Join(parts, ",")
		case float64: // YAML numbers arrive as float64 through JSON
			text = fmt.Sprint(int64(x))
			if float64(int64(x)) != x {
				text = fmt.Sprint(x)
			}
		default:
			text = fmt.Sprint(x)
		}
		if err := f.Value.Set(text); err != nil {
			return fmt.Errorf("--config %s: %s: %w", file, key, err)
		}
	}
	return nil
}

// grpcService runs one gRPC server with the health service and a metrics endpoint
// until ctx ends, then stops gracefully: health turns NOT_SERVING first so Envoy's
// health checks steer away, then in-flight calls get the grace period.
type grpcService struct {
	name     string
	flags    *serviceFlags
	log      *slog.Logger
	registry *prometheus.Registry
	register func(*grpc.Server)
	// options are the service's own gRPC server options (extproc's codec).
	options []grpc.ServerOption
	// serviceNames are reported SERVING by the health service (plus "").
	serviceNames []string
	// private says why --listen must be reachable by Envoy alone.
	private string
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func (s *grpcService) run(ctx context.Context) error {
	addr, err := envoy.ParseAddr(s.flags.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	if err := checkPrivateListen(addr, s.flags.allowNonLoopback, s.private); err != nil {
		return err
	}
	lis, err := listenAddr(addr)
	if err != nil {
		return err
	}
	// Stream workers: without them gRPC starts a goroutine per call, whose stack
	// starts small and is grown (copied) again on every call as the pipeline goes
	// deep; a fixed set of workers keeps grown stacks. When all are busy gRPC
	// still starts a goroutine, so no call waits for a worker (server.go,
	// serveStreams). workersPerCPU says how many.
	workers, err := s.flags.workers()
	if err != nil {
		return err
	}
	opts := append([]grpc.ServerOption{grpc.NumStreamWorkers(uint32(workers))}, s.options...)
	g := grpc.NewServer(opts...)
	s.register(g)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	for _, n := range append([]string{""}, s.serviceNames...) {
		hs.SetServingStatus(n, healthpb.HealthCheckResponse_SERVING)
	}

	errs := make(chan error, 2)
	go func() { errs <- g.Serve(lis) }()
	var metricsSrv *http.Server
	if s.flags.metricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		metricsSrv = &http.Server{Addr: s.flags.metricsListen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		ml, err := net.Listen("tcp", s.flags.metricsListen)
		if err != nil {
			g.Stop()
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		go func() { errs <- metricsSrv.Serve(ml) }()
	}
	s.log.Info("serving", "listen", addr.String(), "metrics", s.flags.metricsListen)

	select {
	case err := <-errs:
		g.Stop()
		if metricsSrv != nil {
			metricsSrv.Close()
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "grace", s.flags.shutdownGrace.String())
	hs.Shutdown() // every service NOT_SERVING
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.flags.shutdownGrace):
		s.log.Warn("grace period over; closing remaining calls")
		g.Stop()
	}
	if metricsSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = metricsSrv.Shutdown(shutdownCtx)
	}
	if addr.Path != "" {
		_ = os.Remove(addr.Path)
	}
	return nil
}
