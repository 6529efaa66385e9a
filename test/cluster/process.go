package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL. kube-apiserver and
// etcd shut down in about a second on this kind of machine.
const stopGrace = 10 * time.Second

// process is one control-plane child whose output goes to its own log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string

	done    chan struct{} // closed once the process has been waited for
	waitErr error         // valid after done is closed

	stopOnce sync.Once
}

// startProcess starts bin with args, logging stdout and stderr to logPath.
func startProcess(name, bin string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logFile, "### %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childSysProcAttr()
	if err := spawn(cmd); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the child's process id.
func (p *process) PID() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, then SIGKILL after the grace period. It returns
// once the process has been reaped, so its PID is gone. Safe to call concurrently and
// more than once (a signal handler and Stop may race).
func (p *process) stop() {
	p.stopOnce.Do(func() {
		if p.exited() {
			return
		}
		// os.Process signals through a pidfd on Linux, so a recycled PID can never be hit.
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(stopGrace):
		}
		_ = p.cmd.Process.Kill()
	})
	<-p.done
}

// kill ends the process with SIGKILL at once (a crash, not a shutdown) and returns
// once it has been reaped.
func (p *process) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill() // pidfd-based on Linux, like stop's signals
	}
	<-p.done
}

// exitDescription says how the process ended, for error messages.
func (p *process) exitDescription() string {
	if p.waitErr == nil {
		return "exited with status 0"
	}
	return p.waitErr.Error()
}

// logTail returns the last n lines of the process's log file.
func (p *process) logTail(n int) string { return tailFile(p.logPath, n) }

// tailFile returns the last n lines of a file (reading at most its last 64 KiB).
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return fmt.Sprintf("(cannot read %s: %v)", path, err)
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// spawn starts cmd from one OS thread that never exits. Pdeathsig is delivered when
// the thread that forked the child ends, not the process (prctl(2): "the parent in
// this case is considered to be the thread that created this process";
// go.dev/issue/27505), and the Go runtime ends a thread when a goroutine that locked
// it exits. A goroutine locked to its thread for the life of the program makes
// Pdeathsig mean "when this program dies".
func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.requests = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must outlive every child
			for r := range spawner.requests {
				r.result <- r.cmd.Start()
			}
		}()
	})
	r := spawnRequest{cmd: cmd, result: make(chan error, 1)}
	spawner.requests <- r
	return <-r.result
}

var spawner struct {
	once     sync.Once
	requests chan spawnRequest
}

type spawnRequest struct {
	cmd    *exec.Cmd
	result chan error
}

// errStopped is returned by Start when the cluster was stopped (for example by
// SIGINT) while it was starting.
var errStopped = errors.New("the cluster was stopped while starting")
