// Package soak runs kubegate for a while under mixed kubectl and client-go traffic
// while its parts are killed and restarted, its configuration changes and its files
// reload, and checks the claim "nothing fails open, nothing is lost" with figures.
//
// The test bed is the real one (test/stack): etcd, kube-apiserver with an audit log,
// kube-controller-manager and KWOK as the kubelet of one node, the kubegate binary's
// authz, extproc and xds services as processes, and the bootstrap `kubegate envoy
// render` produced run by the test data plane. The users are the large directory of
// test/realsize (1,000 users, 1,515 groups, 4,000 projects, 500 + 500 listed
// entries). Every request is recorded with a sequence number carried in its
// User-Agent, which the API server's audit log keeps, so the audit log is checked
// against the harness's record and an expected-outcome model (model.go) computed
// from the directory without kubegate.
//
// Run it with `make soak DURATION=10m`; a short run is TestSoakShort, inside `make test`.
package soak

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/realsize"
	"kubegate.dev/kubegate/test/stack"
)

// The objects the harness creates in the test cluster.
const (
	Namespace  = "soak"
	PodName    = "soak-app"
	PodPort    = 8080
	TickerName = "ticker"
	SecretName = "soak-secret"

	podReadme     = "soak pod working directory"
	podGreeting   = "hello from soak-app"
	logLinePrefix = "soak line "
)

// Config says how long and how hard to run, and which faults to inject.
type Config struct {
	Duration time.Duration // traffic time, warm-up included (faults permitting: the run lasts until every fault is done and recovered)
	WarmUp   time.Duration // before the first fault; resource slopes ignore it too
	Users    int           // member users in the traffic (from the large directory)
	Workers  int           // concurrent short-request workers
	Pause    time.Duration // each worker's pause between requests
	Watchers int           // long watches
	Follows  int           // long client-go logs -f
	Kubectl  bool          // real kubectl: get every 3 s and one logs -f
	Faults   []string      // fault names (Faults), in order; nil: all
	// GitLab adds the GitLab phase after the directory's faults, once: the faults
	// GitLabPhase names (nil: GitLabFaults), gitlab-switch first.
	GitLab      bool
	GitLabPhase []string
	// FaultEvery, if set, starts a fault this often, going round the list as many
	// times as the duration allows; otherwise each fault comes once, spread evenly.
	FaultEvery time.Duration
	// Grace extends each fault window: a request that started before the window's
	// end plus Grace may fail (closed) without counting against availability.
	Grace time.Duration
	// IncidentBudget is how many allowed requests may fail closed where no failure
	// is due (outside every window, or in a strict one) before availability fails.
	// The long run allows none; the CI run a few, because on a loaded shared
	// machine the gateway answers the odd 503/504 without any fault (an upstream
	// connection the API server closed as it was reused, a connect or ext_proc
	// timeout under CPU starvation): each is listed in the report either way.
	IncidentBudget int
	Step           time.Duration // between the writes of the config and reload faults
	Sample         time.Duration // resource sampling interval
	// Settle is dropped from the start of each process lifetime before fitting its
	// resources' slope (at least WarmUp).
	Settle time.Duration
	// Dir receives the report (report.txt, report.svg, records.csv) and, with
	// KeepLogs or after a failure, the stack's logs. Default: a temporary directory.
	Dir      string
	KeepLogs bool
	Binary   string // the kubegate binary (default: built)
	Logf     func(format string, args ...any)
	// Started, if set, is called with the stack once traffic is about to start (the
	// interrupt test reads the children's PIDs there).
	Started func(*stack.Stack)
}

// Short is the configuration of the CI run: about a minute and a quarter of
// traffic, few concurrent users, a reduced schedule with short windows — every
// kill -9, the config changes, and the GitLab source's 502s and disappearance (the
// reloads and GitLab's stall and 429 are in the long run).
func Short() Config {
	return Config{
		Faults:      []string{"authz-kill", "extproc-kill", "xds-kill-rotate", "apiserver-kill", "config-changes"},
		GitLabPhase: []string{"gitlab-switch", "gitlab-5xx", "gitlab-gone"},
		Duration:    30 * time.Second, WarmUp: 6 * time.Second, Users: 40, Workers: 3, Pause: 150 * time.Millisecond,
		Watchers: 2, Follows: 1, Kubectl: true, GitLab: true, Grace: 3 * time.Second, IncidentBudget: 3, Step: 1500 * time.Millisecond, Sample: time.Second,
	}
}

// Long is the configuration of `make soak`.
func Long(d time.Duration) Config {
	return Config{
		Duration: d, WarmUp: min(max(d/10, 20*time.Second), 2*time.Minute), Users: 300, Workers: 6, Pause: 100 * time.Millisecond,
		Watchers: 8, Follows: 3, Kubectl: true, GitLab: true, Grace: 5 * time.Second, Settle: 3 * time.Minute, Step: 3 * time.Second, Sample: 2 * time.Second, FaultEvery: time.Minute,
	}
}

// run is one soak run's state.
type run struct {
	cfg        Config
	dir        string
	st         *stack.Stack
	data       *realsize.Data
	model      *Model
	admin      *kubernetes.Clientset
	rec        Recorder
	streams    streams
	members    []string
	nonMembers []string
	kubeconfig string
	kubectlers map[string]bool // users whose requests come from kubectl

	clientsMu sync.Mutex
	clients   map[string]*kubernetes.Clientset

	files       files
	gitlab      *gitlabSource // the GitLab phase's source, once switched
	gitlabPhase atomic.Bool
	faults      []FaultWindow
	agentTokens atomic.Pointer[[]string]
	upMu        sync.Mutex
	upstream    []upstreamSeen // what the data plane sent the API server
	rotations   []rotation
	floorMu     sync.Mutex
	floor       []time.Duration // the same get, straight to the API server as the admin
	samples     []Sample
	begin       time.Time
	endAt       time.Time
}

// files are the watched inputs of kubegate authz, and their original contents.
type files struct {
	agentConfig, directory, policyDir, policyFile string
	agentOrig, dirOrig, policyOrig                []byte
}

// soakPolicy is the operator module of the run: RBAC lets every impersonated user
// read the soak secret, so only this module keeps it from them.
const soakPolicy = `# Soak operator module: nobody reads secrets in the soak namespace through the gateway.
package kubegate.operator.soak

import rego.v1

deny contains "soak: reading secrets through the gateway is not allowed" if {
	input.request.resource == "secrets"
	input.request.namespace == "soak"
}
`

// Run runs the soak and returns its report (also written to cfg.Dir). It stops
// every process it started, on success, failure and cancellation of ctx (a Ctrl-C
// of the program cancels it; the test cluster's own handler stops its processes
// too). An error means the run could not be carried out; the checks' verdicts are
// in the report.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Sample <= 0 {
		cfg.Sample = 2 * time.Second
	}
	r := &run{cfg: cfg, clients: map[string]*kubernetes.Clientset{}, kubectlers: map[string]bool{}}
	if r.dir = cfg.Dir; r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "kubegate-soak-"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	if err := r.prepare(); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "kubegate-soak-stack-")
	if err != nil {
		return nil, err
	}
	keep := cfg.KeepLogs
	defer func() {
		if keep || err != nil || (rep != nil && !rep.Passed()) {
			logs := filepath.Join(r.dir, "logs")
			_ = os.RemoveAll(logs)
			if rerr := os.Rename(filepath.Join(work, "stack", "logs"), logs); rerr == nil {
				_ = os.Rename(filepath.Join(work, "stack", "cluster", "audit.log"), filepath.Join(logs, "audit.log"))
			}
		}
		os.RemoveAll(work)
	}()
	cfg.Logf("starting the stack (directory: %d users, %d groups, %d projects)", len(r.model.users), r.data.Groups, r.data.Projects)
	r.st, err = stack.Start(ctx, stack.Options{
		WorkDir: filepath.Join(work, "stack"), AgentConfig: r.files.agentConfig, Directory: r.files.directory, PolicyDir: r.files.policyDir,
		Binary: cfg.Binary, Kubelet: true, Metrics: true, Logf: cfg.Logf, Observe: r.observe,
		// All traffic comes from 127.0.0.1: one client to the per-client rate limit,
		// which the soak is not about (test/dataplane tests it).
		RenderArgs: []string{"--client-rate-limit=1000000", "--client-rate-burst=1000000"},
	})
	if err != nil {
		return nil, fmt.Errorf("starting the stack: %w", err)
	}
	defer func() {
		if serr := r.st.Stop(); serr != nil && err == nil && ctx.Err() == nil {
			cfg.Logf("stopping the stack: %v", serr)
		}
	}()
	r.agentTokens.Store(&r.st.Cluster.AgentTokens)
	if err := r.onlyLoopback(); err != nil {
		return nil, err
	}
	if err := r.seed(ctx); err != nil {
		return nil, err
	}
	stopPod, err := r.startPod(ctx)
	if err != nil {
		return nil, err
	}
	defer stopPod()
	if cfg.Started != nil {
		cfg.Started(r.st)
	}
	if cfg.GitLab {
		// Filled now, so that switching to it later costs only authz's restart.
		if r.gitlab, err = r.startGitLab(); err != nil {
			return nil, err
		}
		defer r.gitlab.Close()
	}
	if err := r.traffic(ctx); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, errInterrupted
	}
	rep, err = r.check(ctx)
	if err != nil {
		return nil, err
	}
	if err := rep.write(r.dir); err != nil {
		return rep, err
	}
	cfg.Logf("report: %s", filepath.Join(r.dir, "report.txt"))
	return rep, nil
}

// prepare generates the directory, writes the watched files and builds the model.
func (r *run) prepare() error {
	var err error
	if r.data, err = realsize.Generate(realsize.Default()); err != nil {
		return err
	}
	if r.model, err = NewModel(r.data.Directory, r.data.AgentConfig); err != nil {
		return err
	}
	in := filepath.Join(r.dir, "inputs")
	r.files = files{
		agentConfig: filepath.Join(in, "agent-config.yaml"), directory: filepath.Join(in, "directory.yaml"),
		policyDir: filepath.Join(in, "policy"), agentOrig: r.data.AgentConfig, dirOrig: r.data.Directory, policyOrig: []byte(soakPolicy),
	}
	r.files.policyFile = filepath.Join(r.files.policyDir, "soak.rego")
	if err := os.MkdirAll(r.files.policyDir, 0o755); err != nil {
		return err
	}
	for path, data := range map[string][]byte{r.files.agentConfig: r.files.agentOrig, r.files.directory: r.files.dirOrig, r.files.policyFile: r.files.policyOrig} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}
	members := r.model.Members()
	r.nonMembers = r.model.NonMembers()
	if len(members) < 2 || len(r.nonMembers) == 0 {
		return fmt.Errorf("soak: the directory has %d members and %d non-members; need both", len(members), len(r.nonMembers))
	}
	n := min(max(r.cfg.Users, 2), len(members))
	// alice (243 groups) always, then every k-th member for a spread of sizes.
	r.members = []string{members[0]}
	for i := 1; len(r.members) < n && i < len(members); i++ {
		if i%max(len(members)/n, 1) == 0 {
			r.members = append(r.members, members[i])
		}
	}
	return nil
}

// upstreamSeen is one request the data plane sent upstream: when, and which agent
// token it carried (-1: neither of the API server's two, a credential leak).
type upstreamSeen struct {
	at    time.Time
	token int
}

// rotation is an agent-token rotation: from when the token file held token.
type rotation struct {
	at    time.Time
	token int
}

// observe sees every request the data plane sends upstream (test data plane).
func (r *run) observe(u stack.UpstreamRequest) {
	toks := r.agentTokens.Load()
	if toks == nil {
		return
	}
	seen := upstreamSeen{at: time.Now(), token: -1}
	if auth := u.Values("authorization"); len(auth) == 1 {
		for i, t := range *toks {
			if auth[0] == "Bearer "+t {
				seen.token = i
			}
		}
	}
	r.upMu.Lock()
	r.upstream = append(r.upstream, seen)
	r.upMu.Unlock()
}

// onlyLoopback refuses to send traffic anywhere but this machine.
func (r *run) onlyLoopback() error {
	addrs := []string{r.st.GatewayURL, r.st.Cluster.URL, "tcp://" + r.st.Authz.Addr, "tcp://" + r.st.ExtProc.Addr, "tcp://" + r.st.XDS.Addr}
	for _, a := range addrs {
		if err := loopbackURL(a); err != nil {
			return err
		}
	}
	return nil
}

// loopbackURL accepts a URL whose host is a loopback IP address.
func loopbackURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("soak: %q: %w", s, err)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("soak: %s is not a loopback address: the harness sends traffic only to this machine", s)
	}
	return nil
}

// seed creates the soak namespace, its RBAC (every impersonated user, group
// gitlab:user, may read pods, logs, ConfigMaps and the secret, exec and
// port-forward), the ticker ConfigMap and the secret.
func (r *run) seed(ctx context.Context) error {
	var err error
	if r.admin, err = kubernetes.NewForConfig(r.st.Cluster.AdminConfig()); err != nil {
		return err
	}
	steps := []func() error{
		func() error {
			_, err := r.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := r.admin.CoreV1().ServiceAccounts(Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := r.admin.RbacV1().Roles(Namespace).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: "soak-user"},
				Rules: []rbacv1.PolicyRule{
					{APIGroups: []string{""}, Resources: []string{"pods", "pods/log", "configmaps", "secrets"}, Verbs: []string{"get", "list", "watch"}},
					{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward"}, Verbs: []string{"get", "create"}},
				},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := r.admin.RbacV1().RoleBindings(Namespace).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "soak-users"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "soak-user"},
				Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "gitlab:user"}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := r.admin.CoreV1().ConfigMaps(Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: TickerName}, Data: map[string]string{"n": "0"}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := r.admin.CoreV1().Secrets(Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: SecretName}, StringData: map[string]string{"k": "only the admin reads this"}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("seeding the soak namespace: %w", err)
		}
	}
	// kubectl users: the first members, in a kubeconfig of their own.
	var users []stack.KubeconfigUser
	for _, u := range r.members[:min(2, len(r.members))] {
		users = append(users, stack.KubeconfigUser{Name: u, Token: r.data.Tokens[u]})
		r.kubectlers[u] = true
	}
	r.kubeconfig = filepath.Join(r.dir, "inputs", "kubeconfig")
	return r.st.WriteKubeconfig(r.kubeconfig, users...)
}

// startPod runs the soak pod on the KWOK node: exec in a directory, a log that
// grows by a numbered line every 250 ms, port 8080 forwarded to a local server.
func (r *run) startPod(ctx context.Context) (func(), error) {
	podDir := filepath.Join(r.dir, "inputs", "pod")
	if err := os.MkdirAll(podDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(podDir, "README"), []byte(podReadme+"\n"), 0o644); err != nil {
		return nil, err
	}
	logs := filepath.Join(podDir, "container.log")
	if err := os.WriteFile(logs, nil, 0o644); err != nil {
		return nil, err
	}
	srv, addr, err := greetingServer()
	if err != nil {
		return nil, err
	}
	if err := r.st.Cluster.SimulatePod(ctx, Namespace, PodName, cluster.PodSimulation{
		ExecWorkDir: podDir, LogsFile: logs, PortForward: map[int32]string{PodPort: addr},
	}); err != nil {
		srv.Close()
		return nil, err
	}
	if _, err := r.admin.CoreV1().Pods(Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: PodName},
		Spec: corev1.PodSpec{NodeName: cluster.KubeletNode, Containers: []corev1.Container{{
			Name: "app", Image: "app:1", Ports: []corev1.ContainerPort{{ContainerPort: PodPort}},
		}}},
	}, metav1.CreateOptions{}); err != nil {
		srv.Close()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = r.st.Cluster.WaitPodRunning(wctx, Namespace, PodName)
	cancel()
	if err != nil {
		srv.Close()
		return nil, err
	}
	lctx, stopLogs := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 1; lctx.Err() == nil; n++ {
			_ = cluster.AppendContainerLog(logs, logLinePrefix+strconv.Itoa(n))
			sleep(lctx, 250*time.Millisecond)
		}
	})
	return func() { stopLogs(); wg.Wait(); srv.Close() }, nil
}

// traffic runs every client, the fault schedule and the sampler for the run.
func (r *run) traffic(ctx context.Context) error {
	tctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	r.begin = time.Now()
	// Warm every member's decision once, so memory measures steady state rather
	// than the decision cache filling.
	for _, u := range r.members {
		r.do(tctx, u, r.data.Tokens[u], KindGet, 0, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			_, err := cs.CoreV1().Pods(Namespace).Get(ctx, PodName, metav1.GetOptions{})
			return err
		})
	}
	r.cfg.Logf("warmed %d members in %s; traffic for %s", len(r.members), time.Since(r.begin).Round(time.Millisecond), r.cfg.Duration)
	wg.Go(func() { r.sampler(tctx) })
	wg.Go(func() { r.ticker(tctx, 500*time.Millisecond) })
	wg.Go(func() { r.probe(tctx, r.members[0]) })
	wg.Go(func() { r.floorProbe(tctx) })
	for i := range r.cfg.Workers {
		wg.Go(func() { r.worker(tctx, i) })
	}
	for i := range r.cfg.Watchers {
		wg.Go(func() { r.watcher(tctx, r.members[(i+1)%len(r.members)]) })
	}
	for i := range r.cfg.Follows {
		wg.Go(func() { r.follower(tctx, r.members[(i+2)%len(r.members)]) })
	}
	if r.cfg.Kubectl {
		for u := range r.kubectlers {
			wg.Go(func() { r.kubectl(tctx, u) })
			break
		}
	}
	ferr := r.schedule(tctx)
	stop()
	wg.Wait()
	r.endAt = time.Now()
	if ctx.Err() != nil {
		return errInterrupted
	}
	return ferr
}
