package cluster_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"kubegate.dev/kubegate/test/cluster"
)

// helperEnv makes the test binary act as a program that starts a cluster, prints
// its processes and waits to be killed (see TestMain).
const helperEnv = "KUBEGATE_CLUSTER_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

type helperReport struct {
	WorkDir   string
	Processes []cluster.Process
}

// runHelper is a program using the package the way the sandbox will: Start, then
// run until interrupted, with no signal handling of its own.
func runHelper() int {
	c, err := cluster.Start(context.Background(), cluster.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(helperReport{WorkDir: c.WorkDir, Processes: c.Processes()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	time.Sleep(time.Hour) // until a signal ends this program
	return 1
}

// TestStopLeavesNoProcess: after Stop, every child's PID is gone and the temporary
// work directory is removed; a second Stop is harmless.
func TestStopLeavesNoProcess(t *testing.T) {
	c, err := cluster.Start(t.Context(), cluster.Options{ControllerManager: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	procs := c.Processes()
	if len(procs) != 3 {
		t.Errorf("processes = %+v, want etcd, kube-apiserver and kube-controller-manager", procs)
	}
	for _, p := range procs {
		if !processAlive(p.PID) {
			t.Errorf("%s (pid %d) is not running before Stop", p.Name, p.PID)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	for _, p := range procs {
		if processAlive(p.PID) {
			t.Errorf("%s (pid %d) still runs after Stop", p.Name, p.PID)
		}
	}
	if _, err := os.Stat(c.WorkDir); !os.IsNotExist(err) {
		t.Errorf("work dir %s still exists after Stop (stat: %v)", c.WorkDir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestFailedStartLeavesNoProcess: when a process cannot start, Start's error names
// it and shows its log, and the processes already started (etcd) are stopped.
func TestFailedStartLeavesNoProcess(t *testing.T) {
	workDir := t.TempDir()
	_, err := cluster.Start(t.Context(), cluster.Options{
		WorkDir:        workDir,
		APIServerFlags: []string{"--no-such-flag=1"},
	})
	if err == nil {
		t.Fatal("Start succeeded with an unknown kube-apiserver flag")
	}
	for _, want := range []string{"kube-apiserver exited before it was ready", "no-such-flag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	if kids := liveChildren(t); len(kids) > 0 {
		t.Errorf("processes left after the failed Start: %v", kids)
	}
}

// liveChildren lists this process's live children as "pid comm".
func liveChildren(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	var kids []string
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // ended meanwhile
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		var state byte
		var ppid int
		if i < 0 {
			continue
		}
		if _, err := fmt.Sscanf(s[i+2:], "%c %d", &state, &ppid); err != nil {
			continue
		}
		if ppid == self && processAlive(pid) {
			kids = append(kids, fmt.Sprintf("%d %s", pid, s[strings.IndexByte(s, '(')+1:i]))
		}
	}
	return kids
}

// TestProgramEndLeavesNoProcess runs a program that started a cluster and ends it the
// ways a sandbox or test run ends: Ctrl-C (SIGINT; the package stops the children
// and re-raises the signal), SIGTERM, and SIGKILL (nothing runs in the program; the
// kernel's parent-death signal kills the children).
func TestProgramEndLeavesNoProcess(t *testing.T) {
	tests := []struct {
		name         string
		signal       syscall.Signal
		wantDirGone  bool // the program had the chance to clean up its work dir
		wantSignaled bool // the program ended by that signal (re-raised after stopping)
	}{
		{name: "SIGINT", signal: syscall.SIGINT, wantDirGone: true, wantSignaled: true},
		{name: "SIGTERM", signal: syscall.SIGTERM, wantDirGone: true, wantSignaled: true},
		{name: "SIGKILL", signal: syscall.SIGKILL, wantSignaled: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			helper, report := startHelper(t)
			t.Cleanup(func() { os.RemoveAll(report.WorkDir) })
			for _, p := range report.Processes {
				if !processAlive(p.PID) {
					t.Fatalf("%s (pid %d) is not running before %s", p.Name, p.PID, tt.name)
				}
			}

			if err := helper.Process.Signal(tt.signal); err != nil {
				t.Fatal(err)
			}
			err := helper.Wait()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) {
				t.Fatalf("helper ended with %v, want it killed by %s", err, tt.name)
			}
			ws := exitErr.Sys().(syscall.WaitStatus)
			if tt.wantSignaled && (!ws.Signaled() || ws.Signal() != tt.signal) {
				t.Errorf("helper ended with %v, want it killed by %s", err, tt.name)
			}

			// After SIGKILL the children die asynchronously (the kernel sends them
			// SIGKILL as the helper exits): allow them a moment.
			deadline := time.Now().Add(30 * time.Second)
			for _, p := range report.Processes {
				for processAlive(p.PID) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if processAlive(p.PID) {
					t.Errorf("%s (pid %d) survived %s sent to the program that started it", p.Name, p.PID, tt.name)
					syscall.Kill(p.PID, syscall.SIGKILL) // a process this test started, through the helper
				}
			}
			if _, err := os.Stat(report.WorkDir); tt.wantDirGone && !os.IsNotExist(err) {
				t.Errorf("work dir %s still exists (stat: %v)", report.WorkDir, err)
			}
		})
	}
}

// startHelper runs this test binary as the helper program and reads its report.
func startHelper(t *testing.T) (*exec.Cmd, helperReport) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	type result struct {
		report helperReport
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		var r helperReport
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(line, &r)
		}
		ch <- result{r, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper did not report its cluster (%v); its stderr:\n%s", r.err, stderr.String())
		}
		if len(r.report.Processes) == 0 {
			t.Fatalf("helper reported no processes")
		}
		return cmd, r.report
	case <-time.After(5 * time.Minute):
		t.Fatalf("helper did not start its cluster in 5 minutes; its stderr:\n%s", stderr.String())
	}
	panic("unreachable")
}

// processAlive reports whether pid is a live process. A zombie (dead, not yet reaped
// by whoever inherited it) counts as gone: it runs nothing and holds no port.
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Format: pid (comm) state ...; comm may contain spaces, so cut at the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	state := s[i+2]
	return state != 'Z' && state != 'X'
}
