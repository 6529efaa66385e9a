package policy

import (
	"syscall"
	"time"
)

// rusageThread is RUSAGE_THREAD (getrusage(2), Linux): the calling thread only.
const rusageThread = 1

// threadCPU is the CPU time the calling OS thread has used (user + system): a
// benchmark locked to its thread measures its own work, not the time it waited
// for a core on a loaded machine.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
