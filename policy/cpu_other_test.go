//go:build !linux

package policy

import "time"

// threadCPU is not measured outside Linux (see cpu_linux_test.go).
func threadCPU() time.Duration { return 0 }
