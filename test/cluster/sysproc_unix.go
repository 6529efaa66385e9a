//go:build unix && !linux

package cluster

import "syscall"

// childSysProcAttr puts each child in its own process group. Only Linux has
// Pdeathsig: elsewhere a child outlives this program if it dies without Stop.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
