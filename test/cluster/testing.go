package cluster

import (
	"fmt"
	"strings"
	"testing"
)

// StartForTest starts a cluster for t (or fails it with Start's error, which says
// what to do, such as running `make tools`) and stops it when t ends. When t failed,
// it first logs where the logs are and the end of each process's log, and keeps a
// work directory it created so the logs can still be read.
func StartForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("starting the test cluster: %v", err)
	}
	t.Cleanup(func() {
		failed := t.Failed()
		if failed {
			t.Log(c.failureReport())
		}
		if err := c.shutdown(failed); err != nil {
			t.Errorf("stopping the test cluster: %v", err)
		}
	})
	return c
}

// failureReport says where everything is and shows the end of each process's log.
func (c *Cluster) failureReport() string {
	var b strings.Builder
	fmt.Fprintf(&b, "test cluster kept for inspection: work dir %s, logs in %s", c.WorkDir, c.LogDir)
	if c.AuditLogPath != "" {
		fmt.Fprintf(&b, ", audit log %s", c.AuditLogPath)
	}
	fmt.Fprintf(&b, ", kubectl --kubeconfig %s", c.AdminKubeconfig)
	for _, p := range c.Processes() {
		fmt.Fprintf(&b, "\n--- last %d lines of %s (pid %d) ---\n%s", tailLines, p.LogPath, p.PID, tailFile(p.LogPath, tailLines))
	}
	return b.String()
}
