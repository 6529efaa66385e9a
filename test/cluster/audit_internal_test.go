package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

// TestAuditEventsReadsRotatedLogs: after the API server rotated its log (lumberjack
// renames audit.log to audit-<UTC timestamp>.log), AuditEvents still returns every
// event, oldest first, and leaves a half-written last line for later.
func TestAuditEventsReadsRotatedLogs(t *testing.T) {
	dir := t.TempDir()
	event := func(id string) string {
		return `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"` + id + `","stage":"ResponseComplete"}` + "\n"
	}
	for name, body := range map[string]string{
		"audit-2026-12-01T22-00-00.000.log": event("first") + event("second"),
		"audit-2026-12-01T23-00-00.000.log": event("third"),
		"audit.log":                         event("fourth") + `{"kind":"Event","auditID":"half`,
		"audit-policy.yaml":                 "not an event log",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := &Cluster{AuditLogPath: filepath.Join(dir, "audit.log")}
	events, err := c.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range events {
		got = append(got, string(e.AuditID))
	}
	want := []string{"first", "second", "third", "fourth"}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %v, want %v", got, want)
		}
	}
}
