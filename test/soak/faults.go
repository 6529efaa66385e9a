package soak

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"kubegate.dev/kubegate/test/stack"
)

// A FaultWindow is one injected fault: from Start (the fault begins) to End (the
// harness finished injecting it: the process is back, the last file is written).
type FaultWindow struct {
	Name   string
	Start  time.Time
	End    time.Time
	Detail string
	// Strict windows tolerate no failure at all: a reload or a config change, valid
	// or not, must not cost a single request.
	Strict bool
}

// A fault injects itself and says what it did.
type fault struct {
	name   string
	strict bool
	inject func(ctx context.Context, r *run) (string, error)
}

// Faults are the fault names Config.Faults may list, in the default order.
var Faults = []string{"authz-kill", "extproc-kill", "xds-kill-rotate", "apiserver-kill", "config-changes", "directory-reload", "policy-reload"}

var faultsByName = map[string]fault{
	"authz-kill":   {"authz-kill", false, func(ctx context.Context, r *run) (string, error) { return restart(ctx, r.st.Authz) }},
	"extproc-kill": {"extproc-kill", false, func(ctx context.Context, r *run) (string, error) { return restart(ctx, r.st.ExtProc) }},
	"xds-kill-rotate": {"xds-kill-rotate", false, func(ctx context.Context, r *run) (string, error) {
		// The agent token rotates while xds is down: the restarted xds serves the
		// other of the API server's two valid agent tokens.
		cur, err := os.ReadFile(r.st.TokenFile)
		if err != nil {
			return "", err
		}
		next := 0
		if string(cur) == r.st.Cluster.AgentTokens[0] {
			next = 1
		}
		r.st.XDS.Kill()
		if err := stack.WriteFileAtomic(r.st.TokenFile, []byte(r.st.Cluster.AgentTokens[next]), 0o600); err != nil {
			return "", err
		}
		r.upMu.Lock()
		r.rotations = append(r.rotations, rotation{at: time.Now(), token: next})
		r.upMu.Unlock()
		d, err := restartKilled(ctx, r.st.XDS)
		return d + ", agent token rotated", err
	}},
	"apiserver-kill": {"apiserver-kill", false, func(ctx context.Context, r *run) (string, error) {
		t := time.Now()
		err := r.st.Cluster.RestartAPIServer(ctx)
		return fmt.Sprintf("kube-apiserver killed (SIGKILL) and ready again in %s", time.Since(t).Round(time.Millisecond)), err
	}},
	"config-changes": {"config-changes", true, func(ctx context.Context, r *run) (string, error) {
		// A valid change (same grants, new order and comment) and an invalid one
		// (which, were it applied, would grant nobody anything) every Step.
		for i := range 4 {
			data := validConfigChange(r.files.agentOrig, i)
			if i%2 == 1 {
				data = invalidConfigChange(r.files.agentOrig, i)
			}
			if err := stack.WriteFileAtomic(r.files.agentConfig, data, 0o600); err != nil {
				return "", err
			}
			sleep(ctx, r.cfg.Step)
		}
		err := stack.WriteFileAtomic(r.files.agentConfig, r.files.agentOrig, 0o600)
		sleep(ctx, max(r.cfg.Step, settleReload)) // the last write's reload inside the window
		return fmt.Sprintf("2 valid and 2 invalid agent config changes and the original, %s apart", r.cfg.Step), err
	}},
	"directory-reload": {"directory-reload", true, func(ctx context.Context, r *run) (string, error) {
		// A valid reload, then an invalid directory that would make the outsider an
		// owner of a listed project were it applied, then the original.
		steps := [][]byte{
			append(append([]byte(nil), r.files.dirOrig...), "\n# soak: reloaded\n"...),
			invalidDirectory(r.files.dirOrig, r.data.Outsider, r.listedProject()),
			r.files.dirOrig,
		}
		for _, data := range steps {
			if err := stack.WriteFileAtomic(r.files.directory, data, 0o600); err != nil {
				return "", err
			}
			sleep(ctx, max(r.cfg.Step, settleReload))
		}
		return fmt.Sprintf("directory reloaded (valid, invalid granting the outsider, original), %s apart", max(r.cfg.Step, settleReload)), nil
	}},
	"policy-reload": {"policy-reload", true, func(ctx context.Context, r *run) (string, error) {
		// A valid rewrite, then a module that does not compile and, were it
		// applied, would no longer deny the secret; then the original.
		steps := [][]byte{
			append([]byte("# soak: rewritten\n"), r.files.policyOrig...),
			[]byte("package kubegate.operator.soak\n\nimport rego.v1\n\ndeny contains \"never\" if {\n\tinput.request.resource == \n}\n"),
			r.files.policyOrig,
		}
		for _, data := range steps {
			if err := stack.WriteFileAtomic(r.files.policyFile, data, 0o600); err != nil {
				return "", err
			}
			sleep(ctx, max(r.cfg.Step, settleReload))
		}
		return fmt.Sprintf("operator policy reloaded (valid, invalid without the deny, original), %s apart", max(r.cfg.Step, settleReload)), nil
	}},
}

// settleReload is long enough for authz to see a write (fsnotify at once, the
// stack's --reload-poll 2s otherwise) and load it.
const settleReload = 2500 * time.Millisecond

func restart(ctx context.Context, svc *stack.Service) (string, error) {
	svc.Kill()
	return restartKilled(ctx, svc)
}

func restartKilled(ctx context.Context, svc *stack.Service) (string, error) {
	t := time.Now()
	err := svc.Start(ctx)
	return fmt.Sprintf("kubegate %s killed (SIGKILL), serving again in %s", svc.Name, time.Since(t).Round(time.Millisecond)), err
}

// validConfigChange reorders the listed projects and adds a comment: different
// bytes, the same grants.
func validConfigChange(orig []byte, i int) []byte {
	lines := strings.Split(string(orig), "\n")
	var head, projects, tail []string
	state := 0
	for _, l := range lines {
		switch {
		case state == 0 && strings.TrimSpace(l) == "projects:":
			head = append(head, l)
			state = 1
		case state == 1 && strings.HasPrefix(strings.TrimSpace(l), "- id:"):
			projects = append(projects, l)
		case state == 1:
			state = 2
			tail = append(tail, l)
		case state == 0:
			head = append(head, l)
		default:
			tail = append(tail, l)
		}
	}
	for a, b := 0, len(projects)-1; a < b; a, b = a+1, b-1 {
		projects[a], projects[b] = projects[b], projects[a]
	}
	out := append(append(append([]string{fmt.Sprintf("# soak: valid change %d", i)}, head...), projects...), tail...)
	return []byte(strings.Join(out, "\n"))
}

// invalidConfigChange lists the first project twice and nothing else: refused as a duplicate (access.md §1). Applied, it would
// deny nearly everyone.
func invalidConfigChange(orig []byte, i int) []byte {
	first := ""
	for _, l := range strings.Split(string(orig), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "- id:") {
			first = strings.TrimSpace(l)
			break
		}
	}
	return fmt.Appendf(nil, "# soak: invalid change %d (duplicate entry)\nuser_access:\n  access_as:\n    user: {}\n  projects:\n    %s\n    %s\n", i, first, first)
}

// invalidDirectory adds a membership making outsider an owner of project, and a
// membership with a role GitLab does not have, which makes the file invalid.
func invalidDirectory(orig []byte, outsider, project string) []byte {
	s := strings.Replace(string(orig), "memberships:\n",
		fmt.Sprintf("memberships:\n  - {user: %s, project: %s, role: owner}\n  - {user: %s, project: %s, role: superuser}\n", outsider, project, outsider, project), 1)
	return []byte(s)
}

// listedProject is the first project the agent config lists.
func (r *run) listedProject() string {
	for _, l := range strings.Split(string(r.files.agentOrig), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "- id:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// schedule injects the faults one after another after the warm-up, spread over the
// run, each in its own window with a quiet gap after it, and returns once the
// duration has passed and the last window plus its grace is over.
func (r *run) schedule(ctx context.Context) error {
	names := r.cfg.Faults
	if names == nil {
		names = Faults
	}
	var list []fault
	for _, n := range names {
		f, ok := faultsByName[n]
		if !ok {
			return fmt.Errorf("soak: unknown fault %q (known: %s)", n, strings.Join(Faults, ", "))
		}
		list = append(list, f)
	}
	sleep(ctx, r.cfg.WarmUp)
	span := r.cfg.Duration - r.cfg.WarmUp
	slot := span / time.Duration(max(len(list), 1))
	if r.cfg.FaultEvery > 0 {
		// Round after round until the duration is used up.
		slot = r.cfg.FaultEvery
		rounds := max(int(span/(slot*time.Duration(len(list)))), 1)
		list = slices.Repeat(list, rounds)
	}
	if r.cfg.GitLab {
		phase := r.cfg.GitLabPhase
		if phase == nil {
			phase = GitLabFaults
		}
		for _, n := range phase {
			f, ok := faultsByName[n]
			if !ok || !slices.Contains(GitLabFaults, n) {
				return fmt.Errorf("soak: unknown GitLab fault %q (known: %s)", n, strings.Join(GitLabFaults, ", "))
			}
			list = append(list, f)
		}
	}
	gap := max(r.cfg.Grace+time.Second, slot/3)
	next := time.Now()
	for i, f := range list {
		if ctx.Err() != nil {
			return nil
		}
		sleep(ctx, time.Until(next))
		w := FaultWindow{Name: f.name, Start: time.Now(), Strict: f.strict}
		r.cfg.Logf("fault %d/%d: %s", i+1, len(list), f.name)
		detail, err := f.inject(ctx, r)
		w.End, w.Detail = time.Now(), detail
		r.faults = append(r.faults, w)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("injecting %s: %w", f.name, err)
		}
		next = w.Start.Add(slot)
		if after := w.End.Add(gap); after.After(next) {
			next = after
		}
	}
	sleep(ctx, max(time.Until(r.begin.Add(r.cfg.Duration)), time.Until(next)))
	return nil
}

// Sample is one reading of a kubegate process's resources.
type Sample struct {
	At         time.Time
	Service    string
	PID        int
	RSS        int64 // bytes (VmRSS)
	Threads    int
	FDs        int
	Goroutines int // from its Prometheus go_goroutines; -1 without a metrics endpoint
}

// sampler reads every kubegate process's resources each Sample interval.
func (r *run) sampler(ctx context.Context) {
	client := &http.Client{Timeout: 2 * time.Second}
	for ctx.Err() == nil {
		for _, svc := range []*stack.Service{r.st.Authz, r.st.ExtProc, r.st.XDS} {
			pid := svc.PID()
			if pid == 0 {
				continue
			}
			s, err := readProc(pid)
			if err != nil {
				continue // restarting
			}
			s.At, s.Service, s.Goroutines = time.Now(), svc.Name, -1
			if svc.MetricsAddr != "" {
				if g, err := goroutines(client, svc.MetricsAddr); err == nil {
					s.Goroutines = g
				}
			}
			r.samples = append(r.samples, s)
		}
		sleep(ctx, r.cfg.Sample)
	}
}

// readProc reads VmRSS and Threads from /proc/<pid>/status and counts /proc/<pid>/fd
// (proc(5)).
func readProc(pid int) (Sample, error) {
	s := Sample{PID: pid}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.TrimSpace(v)
		switch k {
		case "VmRSS":
			kb, _ := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
			s.RSS = kb * 1024
		case "Threads":
			s.Threads, _ = strconv.Atoi(v)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	return s, nil
}

// goroutines reads go_goroutines from a Prometheus text endpoint.
func goroutines(c *http.Client, addr string) (int, error) {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no go_goroutines in %s/metrics", addr)
}

// greetingServer is the pod's port 8080: a local HTTP server on loopback.
func greetingServer() (*http.Server, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		body := podGreeting + " (through kubectl port-forward and kubegate)\n"
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	})}
	go func() { _ = srv.Serve(l) }()
	return srv, l.Addr().String(), nil
}
