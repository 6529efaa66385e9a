package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
)

// auditPolicy logs every request at Metadata level: who (user, impersonated user,
// groups, extras), what (verb, resource, namespace, name) and the response code,
// never bodies. RequestReceived is omitted: each request then yields one event
// (ResponseComplete, or ResponseStarted too for watches) instead of two.
// Policy format: https://kubernetes.io/docs/tasks/debug/debug-cluster/audit/
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
`

// writeAuditConfig writes the policy and returns kube-apiserver's audit flags.
func writeAuditConfig(workDir, logPath string) ([]string, error) {
	policy := filepath.Join(workDir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		return nil, err
	}
	return []string{
		"--audit-policy-file=" + policy,
		"--audit-log-path=" + logPath,
		"--audit-log-format=json",
		// blocking (the log backend's default, stated here because tests rely on it):
		// every event is written before the API server goes on, none is dropped.
		"--audit-log-mode=blocking",
	}, nil
}

var errNoAudit = errors.New("this cluster has no audit log: start it with Options{AuditLog: true}")

// AuditEvents reads every event written so far, oldest first. The API server writes
// the event of a request when it completes, which can be just after the client got
// its response: to look for one event, use WaitForAuditEvent. The API server
// rotates its log at 100 MB (--audit-log-maxsize's default, through lumberjack,
// which renames the full file to <name>-<UTC timestamp>.log beside it and keeps
// every backup): the backups are read first, in the order their names sort.
func (c *Cluster) AuditEvents() ([]auditv1.Event, error) {
	if c.AuditLogPath == "" {
		return nil, errNoAudit
	}
	ext := filepath.Ext(c.AuditLogPath)
	backups, err := filepath.Glob(strings.TrimSuffix(c.AuditLogPath, ext) + "-*" + ext)
	if err != nil {
		return nil, err
	}
	sort.Strings(backups)
	var events []auditv1.Event
	for _, path := range append(backups, c.AuditLogPath) {
		if events, err = readAuditFile(path, events); err != nil {
			return nil, err
		}
	}
	return events, nil
}

// readAuditFile appends the events of one log file to events.
func readAuditFile(path string, events []auditv1.Event) ([]auditv1.Event, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return events, nil // nothing logged yet
		}
		return nil, err
	}
	// A line without its newline may still be being written: leave it for next time.
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e auditv1.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		events = append(events, e)
	}
	return events, sc.Err()
}

// WaitForAuditEvent returns the first event for which match is true, reading the log
// again until one appears or ctx ends.
func (c *Cluster) WaitForAuditEvent(ctx context.Context, match func(*auditv1.Event) bool) (*auditv1.Event, error) {
	for {
		events, err := c.AuditEvents()
		if err != nil {
			return nil, err
		}
		for i := range events {
			if match(&events[i]) {
				return &events[i], nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no matching event among the %d in %s: %w", len(events), c.AuditLogPath, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
