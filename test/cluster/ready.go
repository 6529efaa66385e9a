package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// readyCheck returns nil once the process serves what the cluster needs.
type readyCheck func(ctx context.Context) error

// tailLines is how much of a process log an error message shows.
const tailLines = 40

// waitReady polls check until it succeeds, the process exits, the timeout passes or
// ctx ends. Every failure names the process and shows the end of its log, which is
// where the reason always is (a bad flag, a port in use, etcd unreachable).
func waitReady(ctx context.Context, p *process, check readyCheck, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited before it was ready (%s); last lines of %s:\n%s",
				p.name, p.exitDescription(), p.logPath, p.logTail(tailLines))
		}
		attemptCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(attemptCtx)
		cancel()
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (last check: %v); last lines of %s:\n%s",
				p.name, timeout, last, p.logPath, p.logTail(tailLines))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be ready: %w", p.name, ctx.Err())
		case <-p.done:
		case <-tick.C:
		}
	}
}

// etcdHealthy checks etcd's /health endpoint ({"health":"true",...}).
func etcdHealthy(clientURL string) readyCheck {
	client := &http.Client{}
	return func(ctx context.Context) error {
		body, err := get(ctx, client, clientURL+"/health", "")
		if err != nil {
			return err
		}
		var h struct {
			Health string `json:"health"`
		}
		if err := json.Unmarshal(body, &h); err != nil || h.Health != "true" {
			return fmt.Errorf("etcd /health answered %q", strings.TrimSpace(string(body)))
		}
		return nil
	}
}

// apiServerReady checks /readyz with the admin token, verifying the serving
// certificate against our CA (so a wrong certificate fails here, not in a test).
func (c *Cluster) apiServerReady() readyCheck {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return func(ctx context.Context) error {
		_, err := get(ctx, client, c.URL+"/readyz", c.AdminToken)
		return err
	}
}

// aggregatedRolesFilled is kube-controller-manager's readiness as far as the tests
// care: the aggregated built-in ClusterRoles have rules (testbed.md: they stay empty
// without the clusterrole-aggregation-controller).
func (c *Cluster) aggregatedRolesFilled() readyCheck {
	var client kubernetes.Interface
	return func(ctx context.Context) error {
		if client == nil {
			cs, err := kubernetes.NewForConfig(c.AdminConfig())
			if err != nil {
				return err
			}
			client = cs
		}
		for _, name := range []string{"view", "edit", "admin"} {
			role, err := client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(role.Rules) == 0 {
				return fmt.Errorf("ClusterRole %s has no rules yet", name)
			}
		}
		return nil
	}
}

func get(ctx context.Context, client *http.Client, url, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, firstLines(string(body), 15))
	}
	return body, nil
}

// firstLines keeps error messages short (a failing /readyz lists every check).
func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var failing []string
	for _, l := range lines {
		if strings.HasPrefix(l, "[-]") { // /readyz marks failing checks with [-]
			failing = append(failing, l)
		}
	}
	if len(failing) > 0 {
		lines = failing
	}
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
