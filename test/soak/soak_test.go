package soak

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/realsize"
	"kubegate.dev/kubegate/test/stack"
)

// TestSoakShort is the CI run of the harness: about a minute of mixed traffic from
// the large directory with every fault once (Short). The security checks are exact;
// availability is tolerant only inside fault windows (plus Short's grace). It also
// checks the run left no process behind.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole test bed for about two minutes")
	}
	cfg := Short()
	cfg.Binary = kubegateBinary(t)
	cfg.Dir = t.TempDir()
	cfg.Logf = t.Logf
	var pids []int
	cfg.Started = func(st *stack.Stack) { pids = stackPIDs(st) }
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Text())
	if !rep.Passed() {
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("kubegate-soak-failed-%d", time.Now().Unix()))
		if err := os.Rename(cfg.Dir, keep); err == nil {
			t.Logf("report and logs kept in %s", keep)
		}
		t.Fatalf("the soak found %d security, %d availability and %d stream/resource violations (report above)", len(rep.Security), len(rep.Availability), len(rep.Other))
	}
	// Not vacuous: every fault ran, every kind of traffic was sent and judged, the
	// audit log was read.
	if len(rep.Faults) != len(cfg.Faults)+len(cfg.GitLabPhase) {
		t.Errorf("%d faults injected, want %d", len(rep.Faults), len(cfg.Faults)+len(cfg.GitLabPhase))
	}
	byKind := map[string]KindStats{}
	for _, k := range rep.Kinds {
		byKind[k.Kind] = k
	}
	for _, kind := range []string{KindNonMember, KindBadToken, KindUnknown, KindImpersonate, KindPolicy} {
		if byKind[kind].Refused == 0 {
			t.Errorf("no %s request was refused as expected (%+v)", kind, byKind[kind])
		}
	}
	for _, kind := range []string{KindGet, KindList, KindLogs, KindExec, KindPortForward, KindWatch, KindFollow, KindKubectl, KindKubectlLogs, KindProbe} {
		if byKind[kind].OK == 0 {
			t.Errorf("no %s request succeeded (%+v)", kind, byKind[kind])
		}
	}
	if rep.Audit.Marked == 0 || rep.Audit.Kubectl == 0 {
		t.Errorf("the audit cross-check matched %d marked and %d kubectl requests; want some of each", rep.Audit.Marked, rep.Audit.Kubectl)
	}
	if rep.Streams.WatchEvents == 0 || rep.Streams.Lines == 0 {
		t.Errorf("watches saw %d updates, logs -f %d lines; want some of each", rep.Streams.WatchEvents, rep.Streams.Lines)
	}
	checked := 0
	for _, s := range rep.Resources {
		if s.Checked {
			checked++
		}
	}
	if checked < 8 { // RSS and fds of authz, extproc, xds; goroutines of authz and extproc
		t.Errorf("%d resource slopes checked, want 8: %+v", checked, rep.Resources)
	}
	for _, f := range []string{"report.txt", "report.svg", "records.csv", "samples.csv"} {
		if st, err := os.Stat(filepath.Join(cfg.Dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("the report's %s is missing or empty (%v)", f, err)
		}
	}
	assertGone(t, pids)
}

// TestFailureStopsEverything: a run that fails after the test bed is up (here, an
// unknown fault name, found when the schedule starts) stops every process it started.
func TestFailureStopsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole test bed")
	}
	cfg := Short()
	cfg.Dir, cfg.Logf, cfg.WarmUp, cfg.Faults, cfg.Binary = t.TempDir(), t.Logf, 0, []string{"no-such-fault"}, kubegateBinary(t)
	var pids []int
	cfg.Started = func(st *stack.Stack) { pids = stackPIDs(st) }
	_, err := Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `unknown fault "no-such-fault"`) {
		t.Fatalf("Run = %v, want the unknown fault's error", err)
	}
	if len(pids) < 7 {
		t.Fatalf("the stack reported %d processes, want etcd, kube-apiserver, kube-controller-manager, kwok, authz, extproc, xds", len(pids))
	}
	assertGone(t, pids)
}

// TestInterruptStopsEverything sends SIGINT (Ctrl-C) to the soak command while its
// traffic runs: it must exit with status 2 and leave none of its descendants
// (control plane, kubegate services, kubectl) running.
func TestInterruptStopsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole test bed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "soak")
	build := exec.Command("go", "build", "-o", bin, "./test/soak/cmd/soak")
	build.Dir = stack.ModuleRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the soak command: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-short", "-duration", "5m", "-dir", filepath.Join(dir, "report"), "-kubegate", kubegateBinary(t))
	cmd.Dir = stack.ModuleRoot()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	started := make(chan struct{})
	var log strings.Builder
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "warmed") {
				once = true
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-logDone:
		t.Fatalf("the soak command ended before its traffic started:\n%s", log.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("the soak command's traffic did not start within 5 minutes:\n%s", log.String())
	}
	time.Sleep(2 * time.Second) // kubectl and the streams are running
	pids := descendants(cmd.Process.Pid)
	if len(pids) < 8 {
		t.Fatalf("the soak command has %d descendants %v, want the control plane, kubegate's services and kubectl", len(pids), pids)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { <-logDone; exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("after SIGINT the soak command ended with %v, want exit status 2\n%s", err, log.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the soak command did not exit within 2 minutes of SIGINT:\n%s", log.String())
	}
	assertGone(t, pids)
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// kubegateBinary builds the kubegate binary once for the package's tests (each
// stack would otherwise build its own).
func kubegateBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubegate-soak-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "kubegate")
		cmd := exec.Command("go", "build", "-o", builtBin, "./cmd/kubegate")
		cmd.Dir = stack.ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building kubegate: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// stackPIDs lists every process of a running stack.
func stackPIDs(st *stack.Stack) []int {
	var pids []int
	for _, p := range st.Cluster.Processes() {
		pids = append(pids, p.PID)
	}
	for _, svc := range []*stack.Service{st.Authz, st.ExtProc, st.XDS} {
		pids = append(pids, svc.PID())
	}
	return pids
}

// descendants walks /proc for every process below pid (proc(5): field 4 of
// /proc/<pid>/stat is the parent's id).
func descendants(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 1 {
			parent[p], _ = strconv.Atoi(fields[1])
		}
	}
	var out []int
	frontier := []int{pid}
	for len(frontier) > 0 {
		next := frontier[0]
		frontier = frontier[1:]
		for p, pp := range parent {
			if pp == next {
				out = append(out, p)
				frontier = append(frontier, p)
			}
		}
	}
	return out
}

// assertGone fails for every pid still alive (zombies count as gone: they hold no
// resources, and their parent reaps them).
func assertGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if pid == 0 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] == "Z" {
			continue
		}
		t.Errorf("process %d is still running after the soak ended: %s", pid, strings.TrimSpace(s[:min(len(s), 120)]))
	}
}

func TestModel(t *testing.T) {
	dir := []byte(`users:
  - {id: 1, username: dev-on-parent}
  - {id: 2, username: reporter}
  - {id: 3, username: subgroup-only}
  - {id: 4, username: project-maintainer}
  - {id: 5, username: nobody}
groups:
  - {id: 1, path: top}
  - {id: 2, path: top/sub, parent: top}
  - {id: 3, path: other}
  - {id: 4, path: other/deep, parent: other}
projects:
  - {id: 1, path: top/sub/app}
  - {id: 2, path: elsewhere/tool}
memberships:
  - {user: dev-on-parent, group: top, role: developer}
  - {user: reporter, project: top/sub/app, role: reporter}
  - {user: subgroup-only, group: other/deep, role: owner}
  - {user: project-maintainer, project: top/sub/app, role: maintainer}
`)
	cfg := []byte("user_access:\n  access_as:\n    user: {}\n  projects:\n    - id: top/sub/app\n  groups:\n    - id: other\n")
	m, err := NewModel(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user string
		want bool
	}{
		{"dev-on-parent", true},      // Developer of an ancestor group of a listed project
		{"reporter", false},          // below Developer
		{"subgroup-only", false},     // a subgroup of a listed group does not count
		{"project-maintainer", true}, // direct on the listed project
		{"nobody", false},            // no membership at all
		{"not-in-directory", false},  // unknown
	} {
		t.Run(tc.user, func(t *testing.T) {
			if got := m.Qualifies(tc.user); got != tc.want {
				t.Errorf("Qualifies(%s) = %v, want %v", tc.user, got, tc.want)
			}
		})
	}
}

// TestModelAgreesWithRealsize: the large directory's documented facts hold in the
// model (alice qualifies, the outsider does not).
func TestModelAgreesWithRealsize(t *testing.T) {
	d, err := realsize.Generate(realsize.Default())
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewModel(d.Directory, d.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Qualifies(d.User) || m.Qualifies(d.Outsider) {
		t.Errorf("Qualifies(%s) = %v, Qualifies(%s) = %v; want true, false", d.User, m.Qualifies(d.User), d.Outsider, m.Qualifies(d.Outsider))
	}
	if len(m.Members()) < 100 || len(m.NonMembers()) == 0 {
		t.Errorf("%d members, %d non-members: the traffic needs many of the first and some of the second", len(m.Members()), len(m.NonMembers()))
	}
}

// TestFaultInputsAreJudgedAsIntended: the config and reload faults' valid inputs
// load with kubegate's own loaders and grant the same, and the invalid ones are
// refused — otherwise the strict windows would test nothing.
func TestFaultInputsAreJudgedAsIntended(t *testing.T) {
	d, err := realsize.Generate(realsize.Default())
	if err != nil {
		t.Fatal(err)
	}
	orig, err := policy.ParseAgentConfig("orig.yaml", d.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	r := &run{files: files{agentOrig: d.AgentConfig}}
	t.Run("valid config change", func(t *testing.T) {
		got, err := policy.ParseAgentConfig("valid.yaml", validConfigChange(d.AgentConfig, 0))
		if err != nil {
			t.Fatal(err)
		}
		if len(got.UserAccess.Projects) != len(orig.UserAccess.Projects) || len(got.UserAccess.Groups) != len(orig.UserAccess.Groups) {
			t.Errorf("the valid change lists %d projects and %d groups, want %d and %d", len(got.UserAccess.Projects), len(got.UserAccess.Groups), len(orig.UserAccess.Projects), len(orig.UserAccess.Groups))
		}
	})
	t.Run("invalid config change", func(t *testing.T) {
		if _, err := policy.ParseAgentConfig("invalid.yaml", invalidConfigChange(d.AgentConfig, 1)); err == nil {
			t.Error("the invalid config change was accepted")
		}
	})
	t.Run("invalid directory", func(t *testing.T) {
		if _, err := directory.Parse("invalid.yaml", invalidDirectory(d.Directory, d.Outsider, r.listedProject())); err == nil {
			t.Error("the invalid directory was accepted")
		}
	})
	t.Run("valid directory reload", func(t *testing.T) {
		if _, err := directory.Parse("valid.yaml", append(append([]byte(nil), d.Directory...), "\n# soak: reloaded\n"...)); err != nil {
			t.Error(err)
		}
	})
	t.Run("policies", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			module string
			valid  bool
		}{
			{"soak module", soakPolicy, true},
			{"rewritten", "# soak: rewritten\n" + soakPolicy, true},
			{"broken", "package kubegate.operator.soak\n\nimport rego.v1\n\ndeny contains \"never\" if {\n\tinput.request.resource == \n}\n", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dir := t.TempDir()
				if err := os.WriteFile(filepath.Join(dir, "soak.rego"), []byte(tc.module), 0o600); err != nil {
					t.Fatal(err)
				}
				// kubegate authz's reload: read the modules, then build the engine
				// (which parses and compiles them).
				mods, err := policy.LoadModules(dir)
				if err == nil {
					_, err = policy.NewEngine(t.Context(), policy.Agent{ID: stack.AgentID, ConfigProjectID: stack.ConfigProjectID}, orig, mods)
				}
				if (err == nil) != tc.valid {
					t.Errorf("loading the module: %v, want valid=%v", err, tc.valid)
				}
			})
		}
	})
}

func TestStatusOf(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 200},
		{"forbidden", apierrors.NewForbidden(gr, "p", errors.New("no")), 403},
		{"unauthorized", apierrors.NewUnauthorized("no"), 401},
		{"unavailable", apierrors.NewServiceUnavailable("later"), 503},
		{"wrapped", fmt.Errorf("exec: %w", apierrors.NewForbidden(gr, "p", errors.New("no"))), 403},
		{"kubectl", &httpError{code: 503, body: "x"}, 503},
		{"upgrade text", errors.New("unable to upgrade connection: 503 Service Unavailable"), 503},
		{"cut", errors.New("unexpected EOF"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := statusOf(tc.err); got != tc.want {
				t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestMarkers(t *testing.T) {
	for _, tc := range []struct {
		ua   string
		seq  int64
		want bool
	}{
		{marker(42), 42, true},
		{marker(7) + " extra", 7, true},
		{"kubectl/v1.32.0 (linux/amd64)", 0, false},
		{uaPrefix + "x", 0, false},
	} {
		t.Run(tc.ua, func(t *testing.T) {
			seq, ok := seqOf(tc.ua)
			if ok != tc.want || seq != tc.seq {
				t.Errorf("seqOf(%q) = %d, %v; want %d, %v", tc.ua, seq, ok, tc.seq, tc.want)
			}
		})
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"https://127.0.0.1:8443/k8s-proxy", true},
		{"https://[::1]:6443", true},
		{"tcp://127.0.0.1:9001", true},
		{"https://10.0.0.1:6443", false},
		{"https://localhost:6443", false}, // a name could resolve anywhere
		{"https://example.com", false},
	} {
		t.Run(tc.url, func(t *testing.T) {
			if err := loopbackURL(tc.url); (err == nil) != tc.ok {
				t.Errorf("loopbackURL(%s) = %v, want ok=%v", tc.url, err, tc.ok)
			}
		})
	}
}

// TestSlopes: a restart's drop does not read as a trend, a leak does, warm-up and
// each lifetime's settling time are left out.
func TestSlopes(t *testing.T) {
	t0 := time.Unix(0, 0)
	var flat, leak []Sample
	for i := range 120 {
		at := t0.Add(time.Duration(i) * time.Second)
		pid := 1
		if i >= 60 {
			pid = 2 // restarted: starts lower again
		}
		flat = append(flat, Sample{At: at, Service: "authz", PID: pid, RSS: int64(100<<20 - (pid-1)*40<<20 + (i%3)<<20), FDs: 14, Goroutines: 15})
		leak = append(leak, Sample{At: at, Service: "authz", PID: 1, RSS: int64(100<<20 + i<<20), FDs: 14 + i, Goroutines: 15 + 2*i})
	}
	for _, tc := range []struct {
		name    string
		samples []Sample
		wantOK  map[string]bool
	}{
		{"flat with a restart", flat, map[string]bool{"rss-bytes": true, "open-fds": true, "goroutines": true}},
		{"leaking", leak, map[string]bool{"rss-bytes": false, "open-fds": false, "goroutines": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := slopes(tc.samples, t0.Add(10*time.Second), 5*time.Second, t0.Add(120*time.Second))
			seen := 0
			for _, s := range got {
				if want, ok := tc.wantOK[s.Metric]; ok {
					seen++
					if s.OK() != want {
						t.Errorf("%s: growth %.0f, bound %.0f: OK() = %v, want %v", s.Metric, s.Growth, s.Bound, s.OK(), want)
					}
				}
			}
			if seen != len(tc.wantOK) {
				t.Errorf("got %d of the %d checked metrics: %+v", seen, len(tc.wantOK), got)
			}
		})
	}
}

// TestReport: a violation fails the report and is named in its text; the plot is
// well-formed SVG with one shaded window per fault and panel.
func TestReport(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rep := &Report{Start: t0, End: t0.Add(time.Minute), Config: Short(),
		Faults: []FaultResult{{FaultWindow: FaultWindow{Name: "authz-kill", Start: t0.Add(10 * time.Second), End: t0.Add(12 * time.Second)}}},
		Records: []Record{
			{Seq: 1, Kind: KindGet, Start: t0.Add(time.Second), End: t0.Add(time.Second + 5*time.Millisecond), Code: 200},
			{Seq: 2, Kind: KindGet, Start: t0.Add(11 * time.Second), End: t0.Add(11 * time.Second), Code: 503},
		},
		Samples: []Sample{{At: t0.Add(time.Second), Service: "authz", RSS: 50 << 20}, {At: t0.Add(2 * time.Second), Service: "authz", RSS: 51 << 20}},
	}
	if !rep.Passed() || !strings.HasPrefix(rep.Text(), "kubegate soak: PASSED") {
		t.Fatalf("a report without violations: Passed() = %v, text starts %q", rep.Passed(), rep.Text()[:30])
	}
	rep.Security = []string{"deny-policy #7 as alice: refused by design, yet it succeeded"}
	if rep.Passed() || !strings.Contains(rep.Text(), "SECURITY violations: 1\n  deny-policy #7") {
		t.Errorf("a security violation: Passed() = %v, text:\n%s", rep.Passed(), rep.Text())
	}
	svg := rep.SVG()
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("the plot is not well-formed XML: %v\n%s", err, svg)
		}
	}
	if n := strings.Count(svg, `fill="#fdd"`); n != 3 {
		t.Errorf("%d shaded fault windows, want 3 (one per panel)", n)
	}
}
