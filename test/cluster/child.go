package cluster

// Child is a process started the way the test bed starts its own control plane: in
// its own process group, killed by the kernel if this program dies (Pdeathsig, from
// the long-lived spawner thread), output to a log file, stopped by PID with SIGTERM
// then SIGKILL. Other test tooling (test/stack) uses it for the kubegate services.
type Child struct{ p *process }

// StartChild starts bin with args, its stdout and stderr appended to logPath.
func StartChild(name, bin string, args []string, logPath string) (*Child, error) {
	p, err := startProcess(name, bin, args, logPath)
	if err != nil {
		return nil, err
	}
	return &Child{p: p}, nil
}

// PID is the child's process id.
func (c *Child) PID() int { return c.p.PID() }

// Stop sends SIGTERM, then SIGKILL after a grace period, and returns once the child
// has been reaped. Safe to call more than once.
func (c *Child) Stop() { c.p.stop() }

// Kill sends SIGKILL at once (a crash: the child gets no chance to shut down) and
// returns once the child has been reaped.
func (c *Child) Kill() { c.p.kill() }

// Exited reports whether the child has ended; Done is closed when it does.
func (c *Child) Exited() bool          { return c.p.exited() }
func (c *Child) Done() <-chan struct{} { return c.p.done }

// ExitDescription says how the child ended (valid once Done is closed).
func (c *Child) ExitDescription() string { return c.p.exitDescription() }

// LogTail returns the last n lines of the child's log.
func (c *Child) LogTail(n int) string { return c.p.logTail(n) }

// LogPath is the child's log file.
func (c *Child) LogPath() string { return c.p.logPath }
