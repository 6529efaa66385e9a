// Package stack starts kubegate's whole local path for end-to-end tests and the
// sandbox: a real kube-apiserver (test/cluster), the real kubegate binary's authz,
// extproc and xds services as processes, the bootstrap rendered by `kubegate envoy
// render`, and a data plane running it (Envoy itself when an `envoy` binary is on
// PATH and asked for, otherwise the test data plane of test/dataplane).
package stack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/projected"
)

// Agent and config project ids the sandbox data uses.
const (
	AgentID         = 1
	ConfigProjectID = 1
)

// Options configure a stack. Zero values pick the sandbox's defaults.
type Options struct {
	WorkDir     string // default: a new temporary directory, removed by Stop
	AgentConfig string // default deploy/sandbox/agent-config.yaml
	Directory   string // default deploy/sandbox/directory.yaml
	PolicyDir   string // operator Rego modules (optional)
	Binary      string // kubegate binary; default: built into WorkDir
	// GatewayAddr is the data plane's listen address; default 127.0.0.1:<free port>.
	GatewayAddr string
	// ExtraHosts are added to the gateway certificate (127.0.0.1 and localhost always are).
	ExtraHosts []string
	// UseEnvoy runs a real Envoy when one is on PATH.
	UseEnvoy bool
	// Kubelet runs KWOK as the kubelet of one simulated node (cluster.Options.Kubelet),
	// so pods bound to cluster.KubeletNode run and exec, logs, attach, cp and
	// port-forward work end to end.
	Kubelet bool
	// Logf receives progress messages.
	Logf func(format string, args ...any)
	// Observe, if set, sees every request the data plane sends upstream (test data
	// plane only).
	Observe func(UpstreamRequest)
	// RenderArgs are extra `kubegate envoy render` flags (say a higher
	// --client-rate-limit for a load test from one address).
	RenderArgs []string
	// Mesh runs what the chart's mesh.mode=istio hands Istio's proxy instead of
	// the rendered bootstrap: envoy.MeshResources' listener and clusters, the agent
	// token read through file-based SDS from a projected-volume-like directory
	// (MeshTokenDir, RotateMeshToken), and no kubegate xds.
	Mesh bool
	// AuthzArgs are extra `kubegate authz` flags (say --identity-source gitlab ...).
	AuthzArgs []string
	// Metrics serves authz's and extproc's Prometheus /metrics on a free loopback
	// port each (Service.MetricsAddr): goroutines, resident memory, open files.
	Metrics bool
	// Browser turns on the browser half: authz's browser listener (login, sessions,
	// the Dashboard) with a session key written into WorkDir, its public URL the
	// gateway's, and the data plane's route to it (envoy render --browser).
	Browser bool
}

// Stack is a running local gateway in front of a real API server.
type Stack struct {
	Cluster *cluster.Cluster
	// GatewayURL is https://<addr>/k8s-proxy, what a kubeconfig's server points at.
	GatewayURL string
	// GatewayCA is the CA file that signed the gateway's certificate.
	GatewayCA string
	// TokenFile is the agent token file kubegate xds serves (rewrite it to rotate).
	TokenFile string
	// MeshTokenDir is, with Options.Mesh, the directory the data plane reads the
	// agent token from (token, ca.crt, token-sds.yaml, kubelet-style).
	MeshTokenDir string
	WorkDir      string
	Binary       string
	Bootstrap    string // the rendered Envoy bootstrap file
	// Authz, ExtProc and XDS are the kubegate services; each can be stopped and
	// started again (fail-closed tests).
	Authz, ExtProc, XDS *Service
	// DataPlane is "envoy" or "test data plane".
	DataPlane string
	// PublicURL is https://<gateway addr>, the gateway's origin; DashboardURL is
	// where a browser opens the Dashboard (with Options.Browser).
	PublicURL, DashboardURL string
	// BrowserAddr is authz's browser listener (with Options.Browser); SessionKeyFile
	// its session key (rewrite it to rotate).
	BrowserAddr, SessionKeyFile string

	opts     Options
	gateway  gateway
	removeWD bool
	stopOnce sync.Once
}

type gateway interface{ Close() error }

// ModuleRoot is the repository root (where go.mod is).
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func (o *Options) defaults() error {
	root := ModuleRoot()
	if o.AgentConfig == "" {
		o.AgentConfig = filepath.Join(root, "deploy", "sandbox", "agent-config.yaml")
	}
	if o.Directory == "" {
		o.Directory = filepath.Join(root, "deploy", "sandbox", "directory.yaml")
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Browser && o.Mesh {
		return errors.New("stack: Options.Browser with Options.Mesh: the mesh resources have no browser route")
	}
	return nil
}

// WriteSessionKey writes a new random session key file for kubegate authz's
// --session-key-file (one base64 line of 32 bytes, the format it reads).
func WriteSessionKey(path string) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	return WriteFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
}

// Start brings the whole path up; on any failure what was started is stopped.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	s := &Stack{opts: opts, WorkDir: opts.WorkDir}
	if s.WorkDir == "" {
		if s.WorkDir, err = os.MkdirTemp("", "kubegate-stack-"); err != nil {
			return nil, err
		}
		s.removeWD = true
	}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := os.MkdirAll(filepath.Join(s.WorkDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if s.Binary, err = binary(ctx, opts, s.WorkDir); err != nil {
		return nil, err
	}
	if opts.Kubelet {
		opts.Logf("starting etcd, kube-apiserver, kube-controller-manager and kwok")
	} else {
		opts.Logf("starting etcd, kube-apiserver and kube-controller-manager")
	}
	s.Cluster, err = cluster.Start(ctx, cluster.Options{
		WorkDir: filepath.Join(s.WorkDir, "cluster"), ControllerManager: true, AuditLog: true, Kubelet: opts.Kubelet, Logf: opts.Logf,
		// The Dashboard restarts and scales Deployments: let them roll.
		WorkloadControllers: opts.Browser,
		ModuleRoot:          ModuleRoot(),
	})
	if err != nil {
		return nil, err
	}
	s.TokenFile = filepath.Join(s.WorkDir, "agent-token")
	if err := WriteFileAtomic(s.TokenFile, []byte(s.Cluster.AgentTokens[0]), 0o600); err != nil {
		return nil, err
	}
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	gwAddr := opts.GatewayAddr
	if gwAddr == "" {
		p, err := freePorts(1)
		if err != nil {
			return nil, err
		}
		gwAddr = loopback(p[0])
	}
	s.PublicURL = "https://" + gwAddr
	s.GatewayURL = s.PublicURL + contract.ProxyPath
	authzAddr, extprocAddr, xdsAddr := loopback(ports[0]), loopback(ports[1]), loopback(ports[2])
	var authzMetrics, extprocMetrics, browserArgs []string
	if opts.Metrics {
		authzMetrics = []string{"--metrics-listen", loopback(ports[3])}
		extprocMetrics = []string{"--metrics-listen", loopback(ports[4])}
	}
	if opts.Browser {
		s.BrowserAddr = loopback(ports[5])
		s.DashboardURL = s.PublicURL + contract.DashboardPath
		s.SessionKeyFile = filepath.Join(s.WorkDir, "session.keys")
		if err := WriteSessionKey(s.SessionKeyFile); err != nil {
			return nil, err
		}
		browserArgs = []string{"--browser-listen", s.BrowserAddr, "--public-url", s.PublicURL, "--session-key-file", s.SessionKeyFile}
	}
	logs := filepath.Join(s.WorkDir, "logs")
	authzArgs := []string{"authz", "--listen", authzAddr, "--agent-id", strconv.Itoa(AgentID), "--config-project-id", strconv.Itoa(ConfigProjectID),
		"--agent-config", opts.AgentConfig, "--directory", opts.Directory, "--reload-poll", "2s"}
	for _, more := range [][]string{policyArgs(opts.PolicyDir), authzMetrics, browserArgs, opts.AuthzArgs} {
		authzArgs = append(authzArgs, more...)
	}
	s.Authz = &Service{Name: "authz", Bin: s.Binary, Addr: authzAddr, Health: "envoy.service.auth.v3.Authorization", LogDir: logs, Args: authzArgs}
	s.ExtProc = &Service{Name: "extproc", Bin: s.Binary, Addr: extprocAddr, Health: "envoy.service.ext_proc.v3.ExternalProcessor", LogDir: logs,
		Args: append([]string{"extproc", "--listen", extprocAddr}, extprocMetrics...)}
	if opts.Metrics {
		s.Authz.MetricsAddr, s.ExtProc.MetricsAddr = loopback(ports[3]), loopback(ports[4])
	}
	s.XDS = &Service{Name: "xds", Bin: s.Binary, Addr: xdsAddr, LogDir: logs,
		Args: []string{"xds", "--listen", xdsAddr, "--agent-id", strconv.Itoa(AgentID), "--token-file", s.TokenFile, "--poll-interval", "1s"}}
	services := []*Service{s.Authz, s.ExtProc, s.XDS}
	if opts.Mesh {
		services, s.XDS = services[:2], nil
	}
	for _, svc := range services {
		opts.Logf("starting kubegate %s on %s", svc.Name, svc.Addr)
		if err := svc.Start(ctx); err != nil {
			return nil, err
		}
	}

	certDir := filepath.Join(s.WorkDir, "gateway-tls")
	hosts := append([]string{"127.0.0.1", "localhost"}, opts.ExtraHosts...)
	if _, err := devcert.Ensure(certDir, hosts, time.Now()); err != nil {
		return nil, err
	}
	s.GatewayCA = filepath.Join(certDir, devcert.CAFile)
	s.Bootstrap = filepath.Join(s.WorkDir, "envoy.yaml")
	if opts.Mesh {
		if err := s.writeMeshBootstrap(gwAddr, certDir, authzAddr, extprocAddr); err != nil {
			return nil, err
		}
	} else if err := s.renderBootstrap(ctx, gwAddr, certDir, authzAddr, extprocAddr, xdsAddr); err != nil {
		return nil, err
	}
	if s.gateway, s.DataPlane, err = startDataPlane(ctx, s, opts); err != nil {
		return nil, err
	}
	opts.Logf("gateway (%s) listening on %s", s.DataPlane, s.GatewayURL)
	return s, nil
}

func (s *Stack) renderBootstrap(ctx context.Context, gwAddr, certDir, authzAddr, extprocAddr, xdsAddr string) error {
	render := exec.CommandContext(ctx, s.Binary, "envoy", "render", "-o", s.Bootstrap,
		"--listen", gwAddr, "--admin", "",
		"--tls-cert", filepath.Join(certDir, devcert.CertFile), "--tls-key", filepath.Join(certDir, devcert.KeyFile),
		"--agent-id", strconv.Itoa(AgentID), "--apiserver", s.Cluster.URL, "--apiserver-ca", s.Cluster.CAFile,
		"--authz", authzAddr, "--extproc", extprocAddr, "--xds", xdsAddr)
	if s.BrowserAddr != "" {
		render.Args = append(render.Args, "--browser", s.BrowserAddr)
	}
	render.Args = append(render.Args, s.opts.RenderArgs...)
	if out, err := render.CombinedOutput(); err != nil {
		return fmt.Errorf("kubegate envoy render: %v\n%s", err, out)
	}
	return nil
}

// writeMeshBootstrap writes envoy.MeshResources' listener and clusters as the
// bootstrap (what istiod would hand the proxy from the chart's EnvoyFilter) and
// the token directory they read.
func (s *Stack) writeMeshBootstrap(gwAddr, certDir, authzAddr, extprocAddr string) error {
	if len(s.opts.RenderArgs) > 0 {
		return errors.New("stack: Options.RenderArgs do not apply with Options.Mesh (the mesh listener is envoy.MeshResources with kubegate's defaults)")
	}
	s.MeshTokenDir = filepath.Join(s.WorkDir, "mesh-token")
	if err := os.MkdirAll(s.MeshTokenDir, 0o755); err != nil {
		return err
	}
	if err := s.RotateMeshToken(s.Cluster.AgentTokens[0]); err != nil {
		return err
	}
	o := envoy.DefaultOptions()
	o.Admin = ""
	var err error
	for _, a := range []struct {
		to   *envoy.Addr
		from string
	}{{&o.Listen, gwAddr}, {&o.Authz, authzAddr}, {&o.ExtProc, extprocAddr}} {
		if *a.to, err = envoy.ParseAddr(a.from); err != nil {
			return err
		}
	}
	o.TLSCertFile, o.TLSKeyFile = filepath.Join(certDir, devcert.CertFile), filepath.Join(certDir, devcert.KeyFile)
	o.AgentID = AgentID
	o.APIServer, o.APIServerCA = s.Cluster.URL, filepath.Join(s.MeshTokenDir, envoy.CAFile)
	o.TokenSDSDir = s.MeshTokenDir
	m, err := envoy.MeshResources(o)
	if err != nil {
		return err
	}
	y, err := envoy.MarshalYAML(m.Bootstrap())
	if err != nil {
		return err
	}
	return WriteFileAtomic(s.Bootstrap, y, 0o644)
}

// RotateMeshToken replaces the agent token in MeshTokenDir as the kubelet
// rotates a projected token (a new ..data, one rename), with the cluster CA and
// the SDS response beside it.
func (s *Stack) RotateMeshToken(token string) error {
	r, err := envoy.TokenSDS(s.MeshTokenDir, AgentID)
	if err != nil {
		return err
	}
	sdsFile, err := envoy.MarshalYAML(r)
	if err != nil {
		return err
	}
	return projected.Write(s.MeshTokenDir, map[string][]byte{
		envoy.TokenFile:    []byte(token),
		envoy.CAFile:       s.Cluster.CAPEM,
		envoy.TokenSDSFile: sdsFile,
	})
}

func policyArgs(dir string) []string {
	if dir == "" {
		return nil
	}
	return []string{"--policy", dir}
}

// binary returns the kubegate binary to run, building it when none is given.
func binary(ctx context.Context, opts Options, workDir string) (string, error) {
	if opts.Binary != "" {
		return opts.Binary, nil
	}
	out := filepath.Join(workDir, "kubegate")
	opts.Logf("building kubegate")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/kubegate")
	cmd.Dir = ModuleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building kubegate: %v\n%s", err, b)
	}
	return out, nil
}

// Stop stops everything, children by PID. Safe to call more than once.
func (s *Stack) Stop() error {
	var errs []error
	s.stopOnce.Do(func() {
		if s.gateway != nil {
			errs = append(errs, s.gateway.Close())
		}
		for _, svc := range []*Service{s.Authz, s.ExtProc, s.XDS} {
			if svc != nil {
				svc.Stop()
			}
		}
		if s.Cluster != nil {
			errs = append(errs, s.Cluster.Stop())
		}
		if s.removeWD {
			errs = append(errs, os.RemoveAll(s.WorkDir))
		}
	})
	return errors.Join(errs...)
}

// Service is one kubegate service process.
type Service struct {
	Name, Bin, Addr string
	Args            []string
	// Health is the gRPC health service name to wait for ("" for the overall status).
	Health string
	LogDir string
	// MetricsAddr serves the process's Prometheus /metrics ("" when off).
	MetricsAddr string

	mu    sync.Mutex
	child *cluster.Child
}

// Start starts the process and waits until its gRPC health check says SERVING.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.child != nil && !s.child.Exited() {
		return nil
	}
	child, err := cluster.StartChild(s.Name, s.Bin, s.Args, filepath.Join(s.LogDir, s.Name+".log"))
	if err != nil {
		return err
	}
	s.child = child
	if err := waitServing(ctx, s.Addr, s.Health, child); err != nil {
		child.Stop()
		return fmt.Errorf("kubegate %s: %w\n%s", s.Name, err, child.LogTail(30))
	}
	return nil
}

// Stop stops the process (SIGTERM, then SIGKILL) and waits for it.
func (s *Service) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.child != nil {
		s.child.Stop()
	}
}

// Kill crashes the process (SIGKILL, no graceful shutdown) and waits for it; Start
// brings it back.
func (s *Service) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.child != nil {
		s.child.Kill()
	}
}

// PID is the running process's id (0 when none was started).
func (s *Service) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.child == nil || s.child.Exited() {
		return 0
	}
	return s.child.PID()
}

// LogPath is the service's log file.
func (s *Service) LogPath() string { return filepath.Join(s.LogDir, s.Name+".log") }

func waitServing(ctx context.Context, addr, service string, child *cluster.Child) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-child.Done():
			return fmt.Errorf("exited before serving (%s)", child.ExitDescription())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving on %s after 2 minutes (last: %v %v)", addr, resp, err)
		}
	}
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WriteFileAtomic replaces path through a rename, as kubelet and editors do.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
