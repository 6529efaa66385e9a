// Package multicluster proves one gateway in front of two real clusters (issue 14):
// two test API servers, each with its own agent identity and token; one kubegate
// authz, extproc and xds serving both agents from one gateway configuration; the
// bootstrap `kubegate envoy render --gateway-config` produces, run by the test
// data plane. Every refusal is checked against both clusters' audit logs.
package multicluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/dataplane"
	"kubegate.dev/kubegate/test/stack"
)

// agent is one cluster behind the gateway and what the test knows of it.
type agent struct {
	id        int64
	name      string
	config    string // its agent configuration file (rewritten by tests)
	cluster   *cluster.Cluster
	tokenFile string
}

// listedFor: agent 1 lists group-1/project-1 (alice is its maintainer), agent 2
// lists group-2 (grace is a developer of it; alice is not a member).
var listedFor = map[int64]string{
	1: "user_access:\n  access_as: {user: {}}\n  projects:\n    - id: group-1/project-1\n",
	2: "user_access:\n  access_as: {user: {}}\n  groups:\n    - id: group-2\n",
}

type env struct {
	dir        string
	agents     []*agent
	gatewayURL string // https://<addr>, without a path
	client     *http.Client
	authz      *stack.Service
	cfg        string // the gateway configuration
	bin        string
	addrs      map[string]string
	certDir    string
}

func start(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts two API servers")
	}
	ctx := context.Background()
	e := &env{dir: t.TempDir(), addrs: map[string]string{}}
	e.agents = []*agent{{id: 1, name: "alpha"}, {id: 2, name: "beta"}}

	var g errgroup.Group
	g.Go(func() error {
		e.bin = filepath.Join(e.dir, "kubegate")
		cmd := exec.Command("go", "build", "-o", e.bin, "./cmd/kubegate")
		cmd.Dir = stack.ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building kubegate: %v\n%s", err, out)
		}
		return nil
	})
	for _, a := range e.agents {
		g.Go(func() error {
			c, err := cluster.Start(ctx, cluster.Options{
				WorkDir: filepath.Join(e.dir, a.name), AuditLog: true, ModuleRoot: stack.ModuleRoot(),
				AgentUser: "kubegate-agent-" + a.name, Logf: t.Logf,
			})
			if err != nil {
				return fmt.Errorf("cluster %s: %w", a.name, err)
			}
			a.cluster = c
			return nil
		})
	}
	err := g.Wait()
	t.Cleanup(func() {
		for _, a := range e.agents {
			if a.cluster != nil {
				_ = a.cluster.Stop()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}

	var gw strings.Builder
	gw.WriteString("agents:\n")
	for _, a := range e.agents {
		a.config = filepath.Join(e.dir, a.name+"-config.yaml")
		a.tokenFile = filepath.Join(e.dir, a.name+"-token")
		write(t, a.config, listedFor[a.id])
		write(t, a.tokenFile, a.cluster.AgentTokens[0])
		fmt.Fprintf(&gw, "  - id: %d\n    name: %s\n    config_project_id: %d\n    agent_config: {file: %s}\n    upstream: {server: %q, ca_file: %s, token_file: %s}\n",
			a.id, a.name, 100+a.id, a.config, a.cluster.URL, a.cluster.CAFile, a.tokenFile)
		grantView(t, a.cluster)
	}
	e.cfg = filepath.Join(e.dir, "gateway.yaml")
	write(t, e.cfg, gw.String())

	for _, name := range []string{"authz", "extproc", "xds", "gateway"} {
		e.addrs[name] = freeAddr(t)
	}
	logs := filepath.Join(e.dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	directory := filepath.Join(stack.ModuleRoot(), "deploy", "sandbox", "directory.yaml")
	e.authz = &stack.Service{Name: "authz", Bin: e.bin, Addr: e.addrs["authz"], Health: "envoy.service.auth.v3.Authorization", LogDir: logs,
		Args: []string{"authz", "--listen", e.addrs["authz"], "--gateway-config", e.cfg, "--directory", directory, "--reload-poll", "1s"}}
	extproc := &stack.Service{Name: "extproc", Bin: e.bin, Addr: e.addrs["extproc"], Health: "envoy.service.ext_proc.v3.ExternalProcessor", LogDir: logs,
		Args: []string{"extproc", "--listen", e.addrs["extproc"]}}
	xds := &stack.Service{Name: "xds", Bin: e.bin, Addr: e.addrs["xds"], LogDir: logs,
		Args: []string{"xds", "--listen", e.addrs["xds"], "--gateway-config", e.cfg, "--poll-interval", "1s"}}
	for _, s := range []*stack.Service{e.authz, extproc, xds} {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
	}

	e.certDir = filepath.Join(e.dir, "gateway-tls")
	if _, err := devcert.Ensure(e.certDir, []string{"127.0.0.1", "localhost"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(e.dir, "envoy.yaml")
	render := exec.Command(e.bin, "envoy", "render", "-o", bootstrap, "--listen", e.addrs["gateway"], "--admin", "",
		"--tls-cert", filepath.Join(e.certDir, devcert.CertFile), "--tls-key", filepath.Join(e.certDir, devcert.KeyFile),
		"--gateway-config", e.cfg, "--authz", e.addrs["authz"], "--extproc", e.addrs["extproc"], "--xds", e.addrs["xds"])
	if out, err := render.CombinedOutput(); err != nil {
		t.Fatalf("kubegate envoy render --gateway-config: %v\n%s", err, out)
	}
	y, err := os.ReadFile(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	accessLog, err := os.Create(filepath.Join(logs, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accessLog.Close() })
	dp, err := dataplane.Start(ctx, y, dataplane.Options{AccessLog: accessLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })

	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(e.certDir, devcert.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	e.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	e.gatewayURL = "https://" + e.addrs["gateway"]
	waitFor(t, "the gateway to serve alice on agent 1", func() bool {
		return e.get(t, 1, "alice", "/api/v1/namespaces/default/configmaps").code == http.StatusOK
	})
	return e
}

// grantView lets every GitLab user (the impersonated group gitlab:user) read
// configmaps, so that the cluster's RBAC says yes to whatever the gateway lets by.
func grantView(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "gitlab-read"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps", "namespaces"}, Verbs: []string{"get", "list"}}}}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "gitlab-read"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "gitlab-read"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "gitlab:user"}}}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

type response struct {
	code   int
	header http.Header
	body   string
}

// get sends GET <path> through the gateway under /k8s-proxy/ as user with a
// pat:<agentID>: credential, plus extra header name/value pairs.
func (e *env) get(t *testing.T, agentID int64, user, path string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.gatewayURL+contract.ProxyPath+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", fmt.Sprintf("Bearer pat:%d:kg-sandbox-%s-token", agentID, user))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// marked makes a request findable in the audit logs: a configmap name no other
// request uses.
func marked(t *testing.T) string {
	return "mark-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
}

// auditFor returns the audit events of c that name the configmap mark.
func auditFor(t *testing.T, c *cluster.Cluster, mark string) []auditv1.Event {
	t.Helper()
	events, err := c.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	var out []auditv1.Event
	for _, ev := range events {
		if ev.ObjectRef != nil && ev.ObjectRef.Name == mark {
			out = append(out, ev)
		}
	}
	return out
}

// waitAudit waits until c has logged the request for mark (the audit log is
// written asynchronously) and returns its events.
func waitAudit(t *testing.T, c *cluster.Cluster, mark string) []auditv1.Event {
	t.Helper()
	var evs []auditv1.Event
	waitFor(t, "the audit event of "+mark, func() bool { evs = auditFor(t, c, mark); return len(evs) > 0 })
	return evs
}

// TestTwoClusters starts the two clusters and the gateway once and runs each
// scenario against them, in an order where each leaves the next a known state.
func TestTwoClusters(t *testing.T) {
	e := start(t)
	t.Run("each agent reaches only its cluster", func(t *testing.T) { eachAgentReachesOnlyItsCluster(t, e) })
	t.Run("a client cannot choose the cluster", func(t *testing.T) { clientCannotChooseTheCluster(t, e) })
	t.Run("an unknown agent is unauthorized", func(t *testing.T) { unknownAgentIsUnauthorized(t, e) })
	t.Run("agent list, a context per agent, kubectl", func(t *testing.T) { agentListAndKubectl(t, e) })
	t.Run("one agent's bad config leaves the other serving", func(t *testing.T) { badConfigLeavesTheOtherServing(t, e) })
	t.Run("an agent whose config cannot load at start-up is refused, the other serves", func(t *testing.T) { badConfigAtStartUp(t, e) })
}

// eachAgentReachesOnlyItsCluster: alice is allowed on agent 1 and refused on
// agent 2; grace the other way round. Each allowed request reaches only its own
// cluster, carrying only that cluster's agent identity; a refused one reaches
// neither.
func eachAgentReachesOnlyItsCluster(t *testing.T, e *env) {
	tests := []struct {
		name    string
		agent   int64
		user    string
		allowed bool
	}{
		{"alice on agent 1", 1, "alice", true},
		{"alice on agent 2", 2, "alice", false},
		{"grace on agent 2", 2, "grace", true},
		{"grace on agent 1", 1, "grace", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark := marked(t)
			r := e.get(t, tt.agent, tt.user, "/api/v1/namespaces/default/configmaps/"+mark)
			if tt.allowed {
				// The cluster answers (404: no such configmap) as the user.
				if r.code != http.StatusNotFound || r.header.Get(contract.HeaderError) != "" {
					t.Fatalf("got %d %q (%s), want the cluster's 404", r.code, r.header.Get(contract.HeaderError), r.body)
				}
				own := e.agents[tt.agent-1]
				for _, ev := range waitAudit(t, own.cluster, mark) {
					if ev.User.Username != own.cluster.AgentUser || ev.ImpersonatedUser == nil || ev.ImpersonatedUser.Username != "gitlab:user:"+tt.user {
						t.Errorf("cluster %s logged user %q impersonating %v; want %s as gitlab:user:%s", own.name, ev.User.Username, ev.ImpersonatedUser, own.cluster.AgentUser, tt.user)
					}
				}
			} else if r.code != http.StatusForbidden || r.header.Get(contract.HeaderError) == "" {
				t.Fatalf("got %d %q (%s), want kubegate's 403", r.code, r.header.Get(contract.HeaderError), r.body)
			}
			time.Sleep(time.Second) // let the audit logs catch up before looking for absence
			for _, a := range e.agents {
				if a.id == tt.agent && tt.allowed {
					continue
				}
				if evs := auditFor(t, a.cluster, mark); len(evs) > 0 {
					t.Errorf("cluster %s saw the request: %+v", a.name, evs[0].User)
				}
			}
		})
	}
}

// clientCannotChooseTheCluster: whatever a client sends to name a cluster, the
// request goes where its verified credential's agent points, or nowhere.
func clientCannotChooseTheCluster(t *testing.T, e *env) {
	tests := []struct {
		name    string
		headers []string
	}{
		{"the routing header naming agent 2's cluster", []string{contract.HeaderUpstream, contract.UpstreamCluster(2)}},
		{"the routing header twice", []string{contract.HeaderUpstream, contract.UpstreamCluster(2), contract.HeaderUpstream, contract.UpstreamCluster(2)}},
		{"the routing header naming kubegate xds", []string{contract.HeaderUpstream, "kubegate_xds"}},
		{"the agent id header naming agent 2", []string{"Gitlab-Agent-Id", "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark := marked(t)
			r := e.get(t, 1, "alice", "/api/v1/namespaces/default/configmaps/"+mark, tt.headers...)
			if r.code == http.StatusNotFound && r.header.Get(contract.HeaderError) == "" {
				// Served: it must have been by cluster 1, as alice.
				waitAudit(t, e.agents[0].cluster, mark)
			} else if r.header.Get(contract.HeaderError) == "" {
				t.Fatalf("got %d without kubegate's error header (%s): someone else answered", r.code, r.body)
			}
			time.Sleep(time.Second)
			if evs := auditFor(t, e.agents[1].cluster, mark); len(evs) > 0 {
				t.Fatalf("cluster beta saw alice's agent-1 request: %+v", evs[0].User)
			}
		})
	}
}

// unknownAgentIsUnauthorized: an agent id the gateway does not serve is a 401
// that reads exactly like an invalid token (no enumeration of agents).
func unknownAgentIsUnauthorized(t *testing.T, e *env) {
	unknown := e.get(t, 3, "alice", "/api/v1/namespaces")
	req, _ := http.NewRequest(http.MethodGet, e.gatewayURL+contract.ProxyPath+"/api/v1/namespaces", nil)
	req.Header.Set("Authorization", "Bearer pat:1:not-a-token")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if unknown.code != http.StatusUnauthorized || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unknown agent %d, bad token %d; want 401 both", unknown.code, resp.StatusCode)
	}
	if unknown.body != string(b) || unknown.header.Get(contract.HeaderError) != resp.Header.Get(contract.HeaderError) {
		t.Fatalf("an unknown agent reads differently from a bad token:\n%s %s\n%s %s", unknown.header.Get(contract.HeaderError), unknown.body, resp.Header.Get(contract.HeaderError), b)
	}
}

// badConfigLeavesTheOtherServing: agent 2's configuration turns
// invalid; agent 2 keeps its last good one, agent 1 is untouched.
func badConfigLeavesTheOtherServing(t *testing.T, e *env) {
	write(t, e.agents[1].config, "user_access:\n  access_as: {agent: {}, user: {}}\n")
	time.Sleep(3 * time.Second) // several reload polls
	if r := e.get(t, 1, "alice", "/api/v1/namespaces/default/configmaps"); r.code != http.StatusOK {
		t.Fatalf("agent 1 after agent 2's bad config: %d %s", r.code, r.body)
	}
	if r := e.get(t, 2, "grace", "/api/v1/namespaces/default/configmaps"); r.code != http.StatusOK {
		t.Fatalf("agent 2 lost its last good config: %d %s", r.code, r.body)
	}
	log, err := os.ReadFile(e.authz.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "reload failed") && !strings.Contains(string(log), "reload") {
		t.Errorf("authz did not log the failed reload:\n%s", tail(string(log), 20))
	}
}

// badConfigAtStartUp: authz restarts while agent 2's configuration is broken
// (left so by the scenario before): it serves agent 1 and refuses agent 2 with a
// 503 until the file is fixed, then serves both without a restart.
func badConfigAtStartUp(t *testing.T, e *env) {
	e.authz.Stop()
	if err := e.authz.Start(context.Background()); err != nil {
		t.Fatalf("authz did not start with one agent's configuration broken: %v", err)
	}
	if r := e.get(t, 1, "alice", "/api/v1/namespaces/default/configmaps"); r.code != http.StatusOK {
		t.Fatalf("agent 1: %d %s", r.code, r.body)
	}
	mark := marked(t)
	r := e.get(t, 2, "grace", "/api/v1/namespaces/default/configmaps/"+mark)
	if r.code != http.StatusServiceUnavailable || r.header.Get(contract.HeaderError) == "" {
		t.Fatalf("agent 2 with no good configuration: %d %q %s; want kubegate's 503", r.code, r.header.Get(contract.HeaderError), r.body)
	}
	time.Sleep(time.Second)
	if evs := auditFor(t, e.agents[1].cluster, mark); len(evs) > 0 {
		t.Fatalf("cluster beta saw a request for an agent without configuration: %+v", evs[0].User)
	}
	write(t, e.agents[1].config, listedFor[2])
	waitFor(t, "agent 2 to serve after its configuration is fixed", func() bool {
		return e.get(t, 2, "grace", "/api/v1/namespaces/default/configmaps").code == http.StatusOK
	})
}

// agentListAndKubectl: the agent list shows each user the agents they can reach,
// update-kubeconfig --all-agents writes a context for each, and real kubectl
// reaches each agent's own cluster through them.
func agentListAndKubectl(t *testing.T, e *env) {
	ca := filepath.Join(e.certDir, devcert.CAFile)
	for _, tc := range []struct {
		user      string
		agent     int64 // the agent id the credential names
		reachable string
		contexts  []string
	}{
		{"alice", 1, "alpha", []string{"kubegate-127.0.0.1:" + e.gatewayPort() + "-alpha-agent-1"}},
		{"grace", 2, "beta", []string{"kubegate-127.0.0.1:" + e.gatewayPort() + "-beta-agent-2"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			dir := t.TempDir()
			tokenFile, kubeconfig := filepath.Join(dir, "token"), filepath.Join(dir, "kubeconfig")
			write(t, tokenFile, "kg-sandbox-"+tc.user+"-token")
			run := func(args ...string) string {
				t.Helper()
				out, err := exec.Command(e.bin, args...).CombinedOutput()
				if err != nil {
					t.Fatalf("kubegate %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				return string(out)
			}
			run("update-kubeconfig", "--server", e.gatewayURL, "--ca", ca, "--agent", strconv.FormatInt(tc.agent, 10),
				"--token-file", tokenFile, "--kubeconfig", kubeconfig, "--use-context")
			out := run("agent", "list", "--gateway", e.gatewayURL, "--gateway-kubeconfig", kubeconfig, "-o", "json")
			if !strings.Contains(out, `"name": "`+tc.reachable+`"`) || strings.Count(out, `"id":`) != 1 {
				t.Fatalf("%s's agent list, want only %s:\n%s", tc.user, tc.reachable, out)
			}
			run("update-kubeconfig", "--server", e.gatewayURL, "--ca", ca, "--agent", strconv.FormatInt(tc.agent, 10),
				"--token-file", tokenFile, "--kubeconfig", kubeconfig, "--all-agents")
			for _, ctxName := range tc.contexts {
				mark := marked(t)
				kc := exec.Command("kubectl", "--kubeconfig", kubeconfig, "--context", ctxName, "get", "configmap", mark, "-n", "default")
				if out, err := kc.CombinedOutput(); err == nil || !strings.Contains(string(out), "NotFound") {
					t.Fatalf("kubectl --context %s: want the cluster's NotFound, got %v\n%s", ctxName, err, out)
				}
				own := e.agents[tc.agent-1]
				for _, ev := range waitAudit(t, own.cluster, mark) {
					if ev.User.Username != own.cluster.AgentUser {
						t.Errorf("cluster %s logged %s", own.name, ev.User.Username)
					}
				}
			}
		})
	}
}

func (e *env) gatewayPort() string {
	_, port, _ := net.SplitHostPort(e.addrs["gateway"])
	return port
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := stack.WriteFileAtomic(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
