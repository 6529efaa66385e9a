package cluster

import "syscall"

// childSysProcAttr puts each child in its own process group, so a terminal's Ctrl-C
// reaches only this program (which then stops the children in order), and has the
// kernel SIGKILL the child if this program dies without stopping it (a crash, a test
// timeout, SIGKILL).
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
