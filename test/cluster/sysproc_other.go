//go:build !unix

package cluster

import "syscall"

// childSysProcAttr: no process groups or parent-death signal on this platform.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
