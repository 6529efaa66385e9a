package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Identities in the API server's token file.
const (
	// AdminUser is in group system:masters: every right, bypassing RBAC.
	AdminUser = "kubegate-admin"
	// AgentUser is kubegate's agent identity (in production, the agent's service
	// account). It has no rights except impersonation via ImpersonatorClusterRole.
	AgentUser = "kubegate-agent"
)

// Options configure Start. The zero value is a usable cluster without
// kube-controller-manager and without an audit log.
type Options struct {
	// WorkDir holds certificates, the token file, kubeconfigs, etcd's data and logs.
	// Default: a new temporary directory, removed by Stop. A given directory is kept,
	// but its etcd data is replaced at each Start: every cluster starts empty.
	WorkDir string
	// LogDir receives one log file per process. Default: WorkDir/logs.
	LogDir string
	// ControllerManager runs kube-controller-manager with only the
	// clusterrole-aggregation and namespace controllers. Without it the built-in
	// view, edit and admin ClusterRoles stay empty (they are aggregated) and deleted
	// namespaces stay Terminating.
	ControllerManager bool
	// WorkloadControllers adds the deployment and replicaset controllers to
	// kube-controller-manager (with ControllerManager): a Deployment gets its
	// ReplicaSet and pods, and a restart or a scale rolls them as in a real
	// cluster. There is no scheduler: a pod runs only when its template names
	// KubeletNode.
	WorkloadControllers bool
	// Kubelet runs KWOK's kwok controller (test/tools/build.sh builds it) as the
	// kubelet of one simulated node, KubeletNode, which is Ready. A pod whose
	// spec.nodeName is KubeletNode becomes Running, and exec, logs, attach and
	// port-forward reach kwok's kubelet API through the API server; what they do is set
	// per pod with SimulatePod. Off by default: it adds kwok's start (about a second).
	Kubelet bool
	// AuditLog makes the API server record every request at Metadata level, one JSON
	// event per line, in Cluster.AuditLogPath (read it with AuditEvents).
	AuditLog bool
	// APIServerFlags are appended to kube-apiserver's command line; a flag given here
	// overrides the same flag set by Start.
	APIServerFlags []string
	// BinDir holds the etcd, kube-apiserver and kube-controller-manager binaries (and
	// kwok, if it is there). Default: the directory `test/tools/build.sh --print-dir`
	// names (which honours KUBEGATE_TOOLS_DIR); kwok's default is
	// `build.sh --print-kwok-dir`.
	BinDir string
	// ModuleRoot is the kubegate repository root (for build.sh and the shipped RBAC
	// manifest). Default: found by walking up from the current directory.
	ModuleRoot string
	// ReadyTimeout bounds each process's wait for readiness. Default: 2 minutes (a
	// busy 2-core machine can take many times the usual 3 s).
	ReadyTimeout time.Duration
	// Logf, if set, receives progress messages (StartForTest uses t.Logf).
	Logf func(format string, args ...any)
	// AgentUser names the agent identity (default AgentUser). Two clusters behind
	// one gateway get different names, so each audit log shows whose token came.
	AgentUser string
}

// Cluster is a running control plane. Its exported fields are read-only.
type Cluster struct {
	// URL is the API server's https URL on 127.0.0.1.
	URL string
	// CAPEM is the CA certificate that signed the API server's serving certificate;
	// CAFile is the same in a file.
	CAPEM  []byte
	CAFile string
	// AdminToken authenticates AdminUser (group system:masters).
	AdminToken string
	// AgentTokens are two distinct valid tokens of AgentUser, so a test can rotate the
	// agent's token while the gateway runs.
	AgentTokens []string
	// AgentUser is the agent identity's user name (Options.AgentUser, default AgentUser).
	AgentUser string
	// AuditLogPath is the API server's JSON audit log; "" unless Options.AuditLog.
	AuditLogPath string
	// LogDir holds one log file per process.
	LogDir string
	// WorkDir holds everything the cluster wrote.
	WorkDir string
	// AdminKubeconfig is a kubeconfig file for AdminUser (for kubectl while debugging).
	AdminKubeconfig string

	removeWorkDir bool // WorkDir was created by Start

	mu      sync.Mutex
	procs   []*process // in start order
	stopped bool

	// apiServer is how kube-apiserver was started, for RestartAPIServer.
	apiServer struct {
		bin, logPath string
		args         []string
		timeout      time.Duration
	}

	stopOnce sync.Once
	stopErr  error
}

// Process describes one child of the cluster.
type Process struct {
	Name    string
	PID     int
	LogPath string
}

// Start starts etcd, kube-apiserver (and kube-controller-manager if asked), applies
// the shipped impersonation ClusterRole and binds it to AgentUser, and returns once
// all of it is ready. On any failure everything started so far is stopped. The caller
// must call Stop; a SIGINT or SIGTERM also stops the cluster.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	begin := time.Now()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 2 * time.Minute
	}
	if opts.ModuleRoot == "" {
		if wd, err := os.Getwd(); err == nil {
			opts.ModuleRoot = findModuleRoot(wd)
		}
	}
	bins, err := findBinaries(opts.BinDir, opts.ModuleRoot, opts.ControllerManager, opts.Kubelet)
	if err != nil {
		return nil, err
	}
	manifest, err := readImpersonatorManifest(opts.ModuleRoot)
	if err != nil {
		return nil, err
	}

	c := &Cluster{AgentUser: AgentUser, WorkDir: opts.WorkDir}
	if opts.AgentUser != "" {
		c.AgentUser = opts.AgentUser
	}
	if c.WorkDir == "" {
		if c.WorkDir, err = os.MkdirTemp("", "kubegate-cluster-"); err != nil {
			return nil, fmt.Errorf("creating the cluster's work directory: %w", err)
		}
		c.removeWorkDir = true
	}
	register(c)
	if err := c.start(ctx, opts, bins, manifest, logf); err != nil {
		// The error already says which process failed and shows its log; Stop's own
		// report ("had died before Stop") would repeat it.
		_ = c.shutdown(false)
		return nil, err
	}
	logf("test cluster ready in %s: %s (work dir %s)", time.Since(begin).Round(time.Millisecond), c.URL, c.WorkDir)
	return c, nil
}

func (c *Cluster) start(ctx context.Context, opts Options, bins binaries, manifest []byte, logf func(string, ...any)) error {
	var err error
	if c.WorkDir, err = filepath.Abs(c.WorkDir); err != nil {
		return err
	}
	c.LogDir = opts.LogDir
	if c.LogDir == "" {
		c.LogDir = filepath.Join(c.WorkDir, "logs")
	}
	for _, dir := range []string{c.WorkDir, c.LogDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating the cluster's directories: %w", err)
		}
	}

	pki, err := writePKI(filepath.Join(c.WorkDir, "pki"))
	if err != nil {
		return fmt.Errorf("writing certificates: %w", err)
	}
	c.CAPEM, c.CAFile = pki.caPEM, pki.caFile
	tokenFile, err := c.writeTokenFile()
	if err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	var auditArgs []string
	if opts.AuditLog {
		c.AuditLogPath = filepath.Join(c.WorkDir, "audit.log")
		if auditArgs, err = writeAuditConfig(c.WorkDir, c.AuditLogPath); err != nil {
			return fmt.Errorf("writing the audit policy: %w", err)
		}
	}

	t := time.Now()
	etcdURL, err := c.startEtcd(ctx, opts, bins.etcd)
	if err != nil {
		return err
	}
	logf("etcd ready in %s", time.Since(t).Round(time.Millisecond))

	t = time.Now()
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--cert-dir=" + filepath.Join(c.WorkDir, "pki"),
		"--authorization-mode=RBAC",
		"--token-auth-file=" + tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPublic,
		"--service-account-signing-key-file=" + pki.saPrivate,
		"--service-cluster-ip-range=10.0.0.0/24",
		// Without it the API server exits: it refuses 127.0.0.1 as its own endpoint
		// (testbed.md).
		"--endpoint-reconciler-type=none",
	}
	apiArgs = append(apiArgs, auditArgs...)
	if opts.Kubelet {
		apiArgs = append(apiArgs, kubeletAPIServerFlags(pki)...)
	}
	if err := c.startAPIServer(ctx, opts, bins.apiServer, apiArgs); err != nil {
		return err
	}
	logf("kube-apiserver ready in %s", time.Since(t).Round(time.Millisecond))
	c.AdminKubeconfig = filepath.Join(c.WorkDir, "admin.kubeconfig")
	if err := c.writeKubeconfig(c.AdminKubeconfig, AdminUser, c.AdminToken); err != nil {
		return fmt.Errorf("writing the admin kubeconfig: %w", err)
	}

	t = time.Now()
	if err := c.applyAgentRBAC(ctx, manifest, opts.ReadyTimeout); err != nil {
		return err
	}
	logf("agent impersonation RBAC applied and effective in %s", time.Since(t).Round(time.Millisecond))

	if opts.ControllerManager {
		t = time.Now()
		if err := c.startControllerManager(ctx, opts, bins.controllerManager); err != nil {
			return err
		}
		logf("kube-controller-manager ready (view/edit/admin aggregated) in %s", time.Since(t).Round(time.Millisecond))
	}

	if opts.Kubelet {
		t = time.Now()
		if err := c.startKubelet(ctx, opts, bins.kwok, pki); err != nil {
			return err
		}
		logf("kwok ready (node %s Ready, kubelet API on TLS) in %s", KubeletNode, time.Since(t).Round(time.Millisecond))
	}
	return nil
}

// startEtcd starts etcd with its own fresh data dir and returns its client URL.
func (c *Cluster) startEtcd(ctx context.Context, opts Options, bin string) (string, error) {
	dataDir := filepath.Join(c.WorkDir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return "", fmt.Errorf("removing the previous etcd data: %w", err)
	}
	var clientURL string
	err := c.startWithFreePorts(ctx, 2, func(ports []int) (*process, readyCheck, error) {
		clientURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		args := []string{
			"--name=kubegate-testbed",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubegate-testbed=" + peerURL,
			// Test data needs no durability; fsync is the slowest part of etcd on a
			// shared disk.
			"--unsafe-no-fsync",
		}
		p, err := startProcess(etcdBinary, bin, args, filepath.Join(c.LogDir, "etcd.log"))
		return p, etcdHealthy(clientURL), err
	}, opts.ReadyTimeout)
	return clientURL, err
}

func (c *Cluster) startAPIServer(ctx context.Context, opts Options, bin string, args []string) error {
	return c.startWithFreePorts(ctx, 1, func(ports []int) (*process, readyCheck, error) {
		c.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
		all := append(append([]string{"--secure-port=" + strconv.Itoa(ports[0])}, args...), opts.APIServerFlags...)
		logPath := filepath.Join(c.LogDir, "kube-apiserver.log")
		c.mu.Lock()
		c.apiServer.bin, c.apiServer.logPath, c.apiServer.args, c.apiServer.timeout = bin, logPath, all, opts.ReadyTimeout
		c.mu.Unlock()
		p, err := startProcess(apiServerBinary, bin, all, logPath)
		return p, c.apiServerReady(), err
	}, opts.ReadyTimeout)
}

func (c *Cluster) startControllerManager(ctx context.Context, opts Options, bin string) error {
	controllers := "clusterrole-aggregation-controller,namespace-controller"
	if opts.WorkloadControllers {
		controllers += ",deployment-controller,replicaset-controller"
	}
	args := []string{
		"--kubeconfig=" + c.AdminKubeconfig,
		"--controllers=" + controllers,
		"--leader-elect=false",
		// No serving endpoint: readiness is the aggregated roles being filled, which
		// is what the tests need, so no port or certificate is needed either.
		"--secure-port=0",
	}
	p, err := startProcess(controllerManagerBinary, bin, args, filepath.Join(c.LogDir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	if err := c.adopt(p); err != nil {
		return err
	}
	return waitReady(ctx, p, c.aggregatedRolesFilled(), opts.ReadyTimeout)
}

// startWithFreePorts picks n free loopback ports, starts a process on them and waits
// until it is ready. Another program can take a port between our probe and the
// child's bind; then the child exits with "address already in use" and we retry
// with new ports.
func (c *Cluster) startWithFreePorts(ctx context.Context, n int, start func(ports []int) (*process, readyCheck, error), timeout time.Duration) error {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(n)
		if err != nil {
			return err
		}
		p, ready, err := start(ports)
		if err != nil {
			return err
		}
		if err := c.adopt(p); err != nil {
			return err
		}
		err = waitReady(ctx, p, ready, timeout)
		if err == nil {
			return nil
		}
		if attempt == attempts || !p.exited() || !strings.Contains(p.logTail(50), "address already in use") {
			return err
		}
		c.forget(p)
	}
}

// RestartAPIServer crashes kube-apiserver (SIGKILL: no graceful shutdown, as when
// the machine or its container dies) and starts it again with the same flags on the
// same port, returning once it is ready. etcd, kube-controller-manager and kwok keep
// running and reconnect on their own; the audit log is appended to (the API server's
// log backend opens it in append mode). Fault-injection tests use it.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	c.mu.Lock()
	var old *process
	for _, p := range c.procs {
		if p.name == apiServerBinary {
			old = p
		}
	}
	stopped, spec := c.stopped, c.apiServer
	c.mu.Unlock()
	if stopped {
		return errStopped
	}
	if old == nil || spec.bin == "" {
		return errors.New("restarting kube-apiserver: this cluster has none running")
	}
	old.kill()
	c.forget(old)
	p, err := startProcess(apiServerBinary, spec.bin, spec.args, spec.logPath)
	if err != nil {
		return err
	}
	if err := c.adopt(p); err != nil {
		return err
	}
	return waitReady(ctx, p, c.apiServerReady(), spec.timeout)
}

// forget drops a process that exited during a start attempt we retry.
func (c *Cluster) forget(p *process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = slices.DeleteFunc(c.procs, func(q *process) bool { return q == p })
}

// adopt records p as part of the cluster, or stops it at once if the cluster was
// stopped meanwhile (a signal during Start).
func (c *Cluster) adopt(p *process) error {
	c.mu.Lock()
	stopped := c.stopped
	if !stopped {
		c.procs = append(c.procs, p)
	}
	c.mu.Unlock()
	if stopped {
		p.stop()
		return errStopped
	}
	return nil
}

// freePorts asks the kernel for n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeTokenFile writes the static token file (--token-auth-file): token,user,uid,"groups".
func (c *Cluster) writeTokenFile() (string, error) {
	c.AdminToken = randomToken()
	c.AgentTokens = []string{randomToken(), randomToken()}
	var b strings.Builder
	fmt.Fprintf(&b, "%s,%s,%s,\"system:masters\"\n", c.AdminToken, AdminUser, AdminUser)
	for _, tok := range c.AgentTokens {
		// No groups: the API server adds only system:authenticated.
		fmt.Fprintf(&b, "%s,%s,%s\n", tok, c.AgentUser, c.AgentUser)
	}
	path := filepath.Join(c.WorkDir, "tokens.csv")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // never fails (crypto/rand documentation)
	return hex.EncodeToString(b)
}

// AdminConfig is a client-go configuration for AdminUser. Each call returns a new
// copy, so callers may modify it (for example to set Impersonate).
func (c *Cluster) AdminConfig() *rest.Config { return c.restConfig(c.AdminToken) }

// AgentConfig is a client-go configuration for AgentUser with AgentTokens[0].
func (c *Cluster) AgentConfig() *rest.Config { return c.restConfig(c.AgentTokens[0]) }

func (c *Cluster) restConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: bytes.Clone(c.CAPEM)},
		// No client-side rate limit: tests and benchmarks must measure the server, not
		// client-go's default 5 requests/s token bucket (QPS < 0 disables it).
		QPS:       -1,
		UserAgent: "kubegate-test-bed",
	}
}

func (c *Cluster) writeKubeconfig(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubegate-test-bed"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.CAPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[user] = &clientcmdapi.Context{Cluster: "kubegate-test-bed", AuthInfo: user}
	cfg.CurrentContext = user
	return clientcmd.WriteToFile(*cfg, path)
}

// Processes lists the cluster's children in start order.
func (c *Cluster) Processes() []Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Process, 0, len(c.procs))
	for _, p := range c.procs {
		out = append(out, Process{Name: p.name, PID: p.PID(), LogPath: p.logPath})
	}
	return out
}

// Stop stops every process (reverse start order; SIGTERM, then SIGKILL after a grace
// period), waits until each is reaped, and removes WorkDir if Start created it. It
// reports a process that had died before Stop. Safe to call more than once and
// concurrently.
func (c *Cluster) Stop() error { return c.shutdown(false) }

// shutdown is Stop, optionally keeping the work directory (for a failed test's logs).
func (c *Cluster) shutdown(keepWorkDir bool) error {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopped = true
		procs := c.procs
		c.mu.Unlock()

		var errs []error
		for i := len(procs) - 1; i >= 0; i-- {
			p := procs[i]
			if p.exited() {
				errs = append(errs, fmt.Errorf("%s (pid %d) had died before Stop: %s; see %s",
					p.name, p.PID(), p.exitDescription(), p.logPath))
				continue
			}
			p.stop()
		}
		unregister(c)
		if c.removeWorkDir && !keepWorkDir {
			if err := os.RemoveAll(c.WorkDir); err != nil {
				errs = append(errs, fmt.Errorf("removing the cluster's work directory: %w", err))
			}
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}
