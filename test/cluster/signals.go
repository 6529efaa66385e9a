package cluster

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// live is every cluster started and not yet stopped in this program. On SIGINT or
// SIGTERM they are stopped (children by PID, SIGTERM then SIGKILL) before the program
// goes on: a Ctrl-C during `go test` or `kubegate sandbox` leaves no process behind.
var live struct {
	mu       sync.Mutex
	clusters map[*Cluster]struct{}
	watching bool // a signal watcher is armed
}

func register(c *Cluster) {
	live.mu.Lock()
	defer live.mu.Unlock()
	if !live.watching {
		live.watching = true
		watchSignals()
	}
	if live.clusters == nil {
		live.clusters = map[*Cluster]struct{}{}
	}
	live.clusters[c] = struct{}{}
}

func unregister(c *Cluster) {
	live.mu.Lock()
	defer live.mu.Unlock()
	delete(live.clusters, c)
}

// watchSignals stops every live cluster on the first SIGINT or SIGTERM, then stops
// listening and sends the signal to this program again. If the program has its own
// handler (the sandbox's graceful shutdown), that handler sees the signal and decides;
// otherwise the default action ends the program as the signal intended, with the
// children already gone. Stop is safe to call concurrently, so a program's own handler
// calling Stop at the same time is fine.
func watchSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-ch
		live.mu.Lock()
		clusters := make([]*Cluster, 0, len(live.clusters))
		for c := range live.clusters {
			clusters = append(clusters, c)
		}
		live.watching = false // a program that survives the signal re-arms on its next Start
		live.mu.Unlock()

		var wg sync.WaitGroup
		for _, c := range clusters {
			wg.Go(func() { _ = c.Stop() })
		}
		wg.Wait()

		signal.Stop(ch)
		if self, err := os.FindProcess(os.Getpid()); err == nil {
			_ = self.Signal(sig)
		}
	}()
}
