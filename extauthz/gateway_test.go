package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/agentconfig"
	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

// The gateway of these tests serves three agents over the sandbox directory:
// alpha (1) lets group-1/project-1's developers in as themselves, beta (2) lets
// group-2's developers in as the agent, and gamma (3) has an agent configuration
// that does not validate.
const (
	alphaConfig = "user_access:\n  access_as: {user: {}}\n  projects: [{id: group-1/project-1}]\n"
	betaConfig  = "user_access:\n  access_as: {agent: {}}\n  groups: [{id: group-2}]\n"
	badConfig   = "user_access:\n  projects: [{id: \"\"}]\n"
)

var gatewayAgents = []AgentSpec{
	{Agent: policy.Agent{ID: 1, ConfigProjectID: 11}, Name: "alpha"},
	{Agent: policy.Agent{ID: 2, ConfigProjectID: 12}, Name: "beta"},
	{Agent: policy.Agent{ID: 3, ConfigProjectID: 13}, Name: "gamma"},
}

type gatewayFixture struct {
	fixture
	reg *prometheus.Registry
}

func startGateway(t *testing.T, configs map[int64]string) *gatewayFixture {
	t.Helper()
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	backend := &counting{dir: dir}
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	cache, err := policy.NewDecisionCache(policy.DefaultCacheBytes)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewGateway(gatewayAgents, &Shared{Authenticator: backend, Memberships: backend},
		GatewayOptions{Log: slog.New(slog.NewJSONHandler(logs, nil)), Registerer: reg, EngineOptions: []policy.Option{policy.WithDecisionCache(cache)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range gatewayAgents {
		if doc, ok := configs[a.Agent.ID]; ok {
			_ = srv.LoadAgentConfig(context.Background(), a.Agent.ID, agentconfig.Version{Name: a.Name + ".yaml", Data: []byte(doc)})
		}
	}
	return &gatewayFixture{fixture: fixture{client: serve(t, srv), server: srv, backend: backend, logs: logs}, reg: reg}
}

func threeAgents(t *testing.T) *gatewayFixture {
	return startGateway(t, map[int64]string{1: alphaConfig, 2: betaConfig, 3: badConfig})
}

func patFor(agentID, tok string) hdr { return bearer("pat:" + agentID + ":" + tok) }

// TestGatewayRoutesByCredentialAgent: the credential's agent picks the agent's
// user_access and the cluster; what one agent grants says nothing about another,
// and a client's own upstream header changes nothing.
func TestGatewayRoutesByCredentialAgent(t *testing.T) {
	f := threeAgents(t)
	tests := []struct {
		name     string
		headers  []hdr
		wantCode int    // 0: allowed
		upstream string // when allowed
		accessAs string
	}{
		{name: "alice on alpha", headers: []hdr{patFor("1", aliceToken)}, upstream: "kubegate_apiserver_1", accessAs: "user"},
		{name: "alice on beta is not a member", headers: []hdr{patFor("2", aliceToken)}, wantCode: 403},
		{name: "grace on beta", headers: []hdr{patFor("2", token("grace"))}, upstream: "kubegate_apiserver_2", accessAs: "agent"},
		{name: "grace on alpha is not a member", headers: []hdr{patFor("1", token("grace"))}, wantCode: 403},
		{name: "alice naming beta's cluster herself", headers: []hdr{patFor("1", aliceToken), {"x-kubegate-upstream", "kubegate_apiserver_2"}}, upstream: "kubegate_apiserver_1", accessAs: "user"},
		{name: "alice asking beta with alpha's cluster header", headers: []hdr{patFor("2", aliceToken), {"x-kubegate-upstream", "kubegate_apiserver_1"}}, wantCode: 403},
		{name: "grace with two upstream headers", headers: []hdr{patFor("2", token("grace")), {"x-kubegate-upstream", "kubegate_apiserver_1"}, {"x-kubegate-upstream", "kubegate_apiserver_3"}}, upstream: "kubegate_apiserver_2", accessAs: "agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.check(t, checkRequest("GET", podsPath, tt.headers...))
			if tt.wantCode != 0 {
				if d := denied(t, resp); d.code != tt.wantCode {
					t.Fatalf("got %+v, want %d", d, tt.wantCode)
				}
				return
			}
			if resp.GetOkResponse() == nil {
				t.Fatalf("want allowed, got %v", resp)
			}
			if h := okHeaders(t, resp); h[contract.HeaderUpstream] != tt.upstream {
				t.Fatalf("routed to %q, want %q (headers %v)", h[contract.HeaderUpstream], tt.upstream, h)
			}
			if got := accessAsOf(t, resp); got != tt.accessAs {
				t.Fatalf("access_as %q, want %q", got, tt.accessAs)
			}
		})
	}
}

// TestUnservedAgentIsAnInvalidToken: a credential naming an agent the gateway
// does not serve gets, byte for byte, the answer of an invalid token — even with a
// valid token — so agent ids cannot be enumerated; and nothing is routed.
func TestUnservedAgentIsAnInvalidToken(t *testing.T) {
	f := threeAgents(t)
	for _, path := range []string{podsPath, "/k8s-proxy/api", "/k8s-proxy/apis/apps/v1", contract.ExplainPrefix + "GET/api/v1/pods", contract.AgentsPath} {
		t.Run(path, func(t *testing.T) {
			invalid := f.check(t, checkRequest("GET", path, patFor("1", "kg-sandbox-nobody-token")))
			for _, probe := range []struct {
				name string
				h    hdr
			}{
				{"valid token, unserved agent", patFor("4", aliceToken)},
				{"valid token, huge unserved agent", patFor("9223372036854775807", aliceToken)},
				{"invalid token, unserved agent", patFor("4", "kg-sandbox-nobody-token")},
				{"invalid token, served agent without configuration", patFor("3", "kg-sandbox-nobody-token")},
			} {
				got := f.check(t, checkRequest("GET", path, probe.h))
				if got.GetOkResponse() != nil || !proto.Equal(got, invalid) {
					t.Fatalf("%s: the answer differs from an invalid token's:\n got %v\nwant %v", probe.name, got, invalid)
				}
			}
		})
	}
	if !strings.Contains(f.logs.String(), `"reason":"wrong_agent"`) || !strings.Contains(f.logs.String(), "which this gateway does not serve") {
		t.Fatalf("the audit log does not say the agent is not served:\n%s", f.logs.String())
	}
	// An id a client made up never becomes a metric label.
	if n := labelled(t, f.reg, "kubegate_authz_decisions_total", "agent", "4"); n != 0 {
		t.Fatalf("%d series with agent=\"4\"", n)
	}
	if n := labelled(t, f.reg, "kubegate_authz_decisions_total", "agent", ""); n == 0 {
		t.Fatal("the refusals were not counted under agent=\"\"")
	}
}

// agentsSeen records the agent id of every credential the identity source is asked
// about.
type agentsSeen struct {
	identity.Authenticator
	mu  sync.Mutex
	ids map[int64]int
}

func (a *agentsSeen) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	a.mu.Lock()
	a.ids[cred.AgentID]++
	a.mu.Unlock()
	return a.Authenticator.Authenticate(ctx, cred)
}

// TestUnservedAgentsDoNotWidenTheIdentityCache: the identity cache is keyed by
// agent, so a valid token sent for many made-up agent ids must not reach the
// identity source (and its cache) as that many distinct credentials.
func TestUnservedAgentsDoNotWidenTheIdentityCache(t *testing.T) {
	f := threeAgents(t)
	seen := &agentsSeen{Authenticator: f.backend, ids: map[int64]int{}}
	if err := f.server.SwapShared(context.Background(), &Shared{Authenticator: seen, Memberships: f.backend}); err != nil {
		t.Fatal(err)
	}
	for n := 100; n < 200; n++ {
		if d := denied(t, f.check(t, checkRequest("GET", podsPath, patFor(strconv.Itoa(n), aliceToken)))); d.code != 401 {
			t.Fatalf("agent %d: %+v, want 401", n, d)
		}
	}
	for id := range seen.ids {
		if !slices.ContainsFunc(gatewayAgents, func(a AgentSpec) bool { return a.Agent.ID == id }) {
			t.Fatalf("the identity source was asked about agent %d, which the gateway does not serve: %v", id, seen.ids)
		}
	}
	if len(seen.ids) != 1 {
		t.Fatalf("100 made-up agents reached the identity source as %d agents: %v", len(seen.ids), seen.ids)
	}
}

// labelled counts the series of metric whose label has value.
func labelled(t *testing.T, reg *prometheus.Registry, metric, label, value string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					n++
				}
			}
		}
	}
	return n
}

// TestAgentWithoutConfigurationIs503: an agent whose configuration never
// validated answers an authenticated caller 503, saying the gateway cannot serve
// it yet and nothing of why; the other agents serve; a valid version brings it in.
func TestAgentWithoutConfigurationIs503(t *testing.T) {
	f := threeAgents(t)
	resp := f.check(t, checkRequest("GET", podsPath, patFor("3", aliceToken)))
	d := denied(t, resp)
	if d.code != 503 || d.reason != string(ReasonAgentNotReady) || !strings.Contains(d.message, "cannot serve agent 3 yet") {
		t.Fatalf("got %+v", d)
	}
	if strings.Contains(resp.String(), "is empty") || strings.Contains(resp.String(), "gamma.yaml") {
		t.Fatalf("the configuration error reached the client: %v", resp)
	}
	if !strings.Contains(f.logs.String(), "gamma.yaml:2:19: user_access.projects[0].id: is empty") {
		t.Fatalf("the log lacks the configuration error:\n%s", f.logs.String())
	}
	if f.check(t, checkRequest("GET", podsPath, patFor("1", aliceToken))).GetOkResponse() == nil {
		t.Fatal("alpha does not serve while gamma has no configuration")
	}
	if got := testutil.ToFloat64(f.server.reloads.reloads.WithLabelValues("3", "failure")); got != 1 {
		t.Fatalf("gamma's failed load counted %v times", got)
	}
	if err := f.server.LoadAgentConfig(context.Background(), 3, agentconfig.Version{Name: "gamma.yaml", Data: []byte(alphaConfig)}); err != nil {
		t.Fatal(err)
	}
	resp = f.check(t, checkRequest("GET", podsPath, patFor("3", aliceToken)))
	if h := okHeaders(t, resp); resp.GetOkResponse() == nil || h[contract.HeaderUpstream] != "kubegate_apiserver_3" {
		t.Fatalf("gamma after a valid configuration: %v", resp)
	}
}

// TestBadReloadOfOneAgentLeavesOthers: a version of one agent's configuration
// that does not validate leaves that agent's last good one, and every other
// agent, as they were.
func TestBadReloadOfOneAgentLeavesOthers(t *testing.T) {
	f := threeAgents(t)
	if err := f.server.LoadAgentConfig(context.Background(), 1, agentconfig.Version{Name: "alpha.yaml", Data: []byte(badConfig)}); err == nil {
		t.Fatal("a bad configuration loaded")
	}
	for _, probe := range []struct {
		h        hdr
		upstream string
	}{{patFor("1", aliceToken), "kubegate_apiserver_1"}, {patFor("2", token("grace")), "kubegate_apiserver_2"}} {
		resp := f.check(t, checkRequest("GET", podsPath, probe.h))
		if resp.GetOkResponse() == nil || okHeaders(t, resp)[contract.HeaderUpstream] != probe.upstream {
			t.Fatalf("after alpha's bad reload: %v", resp)
		}
	}
	if !strings.Contains(f.logs.String(), "the agent's last good configuration stays in service") {
		t.Fatalf("log:\n%s", f.logs.String())
	}
	// A good one replaces it, for alpha only.
	if err := f.server.LoadAgentConfig(context.Background(), 1, agentconfig.Version{Name: "alpha.yaml", Data: []byte(betaConfig)}); err != nil {
		t.Fatal(err)
	}
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, patFor("1", aliceToken)))); d.code != 403 {
		t.Fatalf("alpha after its new configuration: %+v", d)
	}
	if accessAsOf(t, f.check(t, checkRequest("GET", podsPath, patFor("1", token("grace"))))) != "agent" {
		t.Fatal("alpha's new configuration is not in service")
	}
	if got := testutil.ToFloat64(f.server.reloads.reloads.WithLabelValues("1", "success")); got != 2 {
		t.Fatalf("alpha's successful loads counted %v times, want 2", got)
	}
}

// TestSharedModulesRebuildEveryAgent: operator modules are the gateway's, not an
// agent's: installing them rebuilds every agent with a configuration.
func TestSharedModulesRebuildEveryAgent(t *testing.T) {
	f := threeAgents(t)
	mods, err := policy.LoadModules("../policy/testdata/operator")
	if err != nil {
		t.Fatal(err)
	}
	sh := *f.server.shared.Load()
	sh.Modules = mods
	if err := f.server.SwapShared(context.Background(), &sh); err != nil {
		t.Fatal(err)
	}
	// exec.rego: no exec into kube-system, for anyone on any agent.
	execPath := "/k8s-proxy/api/v1/namespaces/kube-system/pods/web/exec?command=sh&stdout=true"
	for _, h := range []hdr{patFor("1", aliceToken), patFor("2", token("grace"))} {
		if d := denied(t, f.check(t, checkRequest("POST", execPath, h))); d.code != 403 || d.reason != "policy_denied" {
			t.Fatalf("%v: %+v", h, d)
		}
	}
	// Modules that do not compile change nothing.
	sh2 := sh
	sh2.Modules = []policy.Module{{File: "broken.rego", Source: "package kubegate.operator.broken\ndeny contains x if {"}}
	if err := f.server.SwapShared(context.Background(), &sh2); err == nil {
		t.Fatal("broken modules were installed")
	}
	if d := denied(t, f.check(t, checkRequest("POST", execPath, patFor("1", aliceToken)))); d.reason != "policy_denied" {
		t.Fatalf("after a failed shared swap: %+v", d)
	}
}

// TestDirectorySwapKeepsEngines: a new directory with the same modules keeps every
// agent's engine (and its warm decisions), and the new memberships still decide:
// alice, no longer a member, is refused at once.
func TestDirectorySwapKeepsEngines(t *testing.T) {
	f := threeAgents(t)
	if f.check(t, checkRequest("GET", podsPath, patFor("1", aliceToken))).GetOkResponse() == nil {
		t.Fatal("alice on alpha before the swap")
	}
	engine := f.server.agents[1].engine.Load()
	data, err := os.ReadFile(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	line := "  - {user: alice, project: group-1/project-1, role: maintainer}\n"
	if !strings.Contains(string(data), line) {
		t.Fatalf("the sandbox directory no longer has %q", line)
	}
	dir, err := directory.Parse("directory.yaml", []byte(strings.Replace(string(data), line, "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	sh := *f.server.shared.Load()
	sh.Authenticator, sh.Memberships = dir, dir
	if err := f.server.SwapShared(context.Background(), &sh); err != nil {
		t.Fatal(err)
	}
	if f.server.agents[1].engine.Load() != engine {
		t.Error("a directory change with the same modules rebuilt the engine")
	}
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, patFor("1", aliceToken)))); d.code != 403 {
		t.Fatalf("alice after losing her membership: %+v, want 403", d)
	}
}

// TestBareOIDCNeedsAnAgentWhenSeveral: the bare ID token names no agent; with
// several agents the gateway cannot guess one.
func TestBareOIDCNeedsAnAgentWhenSeveral(t *testing.T) {
	f := threeAgents(t)
	before := f.backend.auths.Load()
	d := denied(t, f.check(t, checkRequest("GET", podsPath, bearer("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"))))
	if d.code != 401 || !strings.Contains(d.message, "oidc:<agent-id>:<id-token>") {
		t.Fatalf("got %+v", d)
	}
	if f.backend.auths.Load() != before {
		t.Fatal("a credential naming no agent reached the identity source")
	}
}

// TestEveryAllowIsRouted walks the allowed requests — both access modes, every
// kind of API request, the API's top-level paths — on two agents: each OK answer
// names exactly its agent's cluster.
func TestEveryAllowIsRouted(t *testing.T) {
	f := threeAgents(t)
	requests := []struct{ method, path string }{
		{"GET", podsPath},
		{"GET", podsPath + "?watch=1&resourceVersion=0"},
		{"POST", podsPath},
		{"DELETE", podsPath + "/web"},
		{"GET", "/k8s-proxy/api"},
		{"GET", "/k8s-proxy/apis/apps/v1"},
		{"GET", "/k8s-proxy/version"},
		{"POST", podsPath + "/web/exec?command=sh&stdin=true&stdout=true"},
		{"GET", podsPath + "/web/portforward?ports=80"},
		{"GET", podsPath + "/web/log?follow=true"},
		{"GET", "/api/v1/namespaces/demo/pods"},
		{"GET", "/version"},
		{"GET", "/readyz?verbose"},
		{"GET", "/apis"},
	}
	for _, who := range []struct {
		name, agent, token, upstream string
	}{
		{"user mode on alpha", "1", aliceToken, "kubegate_apiserver_1"},
		{"agent mode on beta", "2", token("grace"), "kubegate_apiserver_2"},
	} {
		for _, r := range requests {
			t.Run(who.name+" "+r.method+" "+r.path, func(t *testing.T) {
				resp := f.check(t, checkRequest(r.method, r.path, patFor(who.agent, who.token), hdr{"x-kubegate-upstream", "kubegate_apiserver_3"}))
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				if h := okHeaders(t, resp); h[contract.HeaderUpstream] != who.upstream {
					t.Fatalf("routed to %q, want %q", h[contract.HeaderUpstream], who.upstream)
				}
			})
		}
	}
}

func accessAsOf(t *testing.T, resp *authv3.CheckResponse) string {
	t.Helper()
	return decisionOf(t, resp).AccessAs
}

// TestAgentList covers the agent list endpoint from the caller's side and the
// attacker's: only agents whose user_access lets the caller in are named, with
// their mode; nothing is routed upstream; refusals are those of any request.
func TestAgentList(t *testing.T) {
	f := threeAgents(t)
	// gamma gets alpha's user_access but stays unready for one probe below.
	tests := []struct {
		name    string
		method  string
		path    string
		headers []hdr
		want    []contract.AgentInfo // nil with wantCode
		code    int
		reason  string
	}{
		{name: "alice sees alpha only", headers: []hdr{patFor("1", aliceToken)},
			want: []contract.AgentInfo{{ID: 1, Name: "alpha", ConfigProjectID: 11, AccessAs: "user"}}},
		{name: "any served agent id authenticates", headers: []hdr{patFor("2", aliceToken)},
			want: []contract.AgentInfo{{ID: 1, Name: "alpha", ConfigProjectID: 11, AccessAs: "user"}}},
		{name: "an agent without configuration authenticates but is not listed", headers: []hdr{patFor("3", aliceToken)},
			want: []contract.AgentInfo{{ID: 1, Name: "alpha", ConfigProjectID: 11, AccessAs: "user"}}},
		{name: "grace sees beta only", headers: []hdr{patFor("1", token("grace"))},
			want: []contract.AgentInfo{{ID: 2, Name: "beta", ConfigProjectID: 12, AccessAs: "agent"}}},
		{name: "bob, a reporter, sees none", headers: []hdr{patFor("1", token("bob"))}, want: []contract.AgentInfo{}},
		{name: "dave, member of an unlisted subgroup, sees none", headers: []hdr{patFor("2", token("dave"))}, want: []contract.AgentInfo{}},
		{name: "no credential", code: 401, reason: "no_credential"},
		{name: "unknown token", headers: []hdr{patFor("1", "kg-sandbox-nobody-token")}, code: 401, reason: "unauthorized"},
		{name: "revoked token", headers: []hdr{patFor("1", token("erin"))}, code: 401, reason: "unauthorized"},
		{name: "blocked user", headers: []hdr{patFor("1", token("mallory"))}, code: 401, reason: "unauthorized"},
		{name: "unserved agent", headers: []hdr{patFor("4", aliceToken)}, code: 401, reason: "unauthorized"},
		{name: "POST", method: "POST", headers: []hdr{patFor("1", aliceToken)}, code: 400, reason: "bad_request"},
		{name: "impersonation header", headers: []hdr{patFor("1", aliceToken), {"impersonate-user", "admin"}}, code: 403, reason: "client_impersonation"},
		{name: "access_token query", path: contract.AgentsPath + "?access_token=x", headers: []hdr{patFor("1", aliceToken)}, code: 400, reason: "foreign_credential"},
		{name: "ambiguous query", path: contract.AgentsPath + "?gitlab%2Dagent%2Did=1", headers: []hdr{patFor("1", aliceToken)}, code: 400, reason: "ambiguous_query"},
		{name: "a path below the endpoint is not it", path: contract.AgentsPath + "/1", headers: []hdr{patFor("1", aliceToken)}, code: 400, reason: "outside_prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method = "GET"
			}
			if path == "" {
				path = contract.AgentsPath
			}
			resp := f.check(t, checkRequest(method, path, tt.headers...))
			if resp.GetOkResponse() != nil || resp.GetDynamicMetadata() != nil {
				t.Fatalf("the agent list endpoint let a request through: %v", resp)
			}
			if tt.code != 0 {
				if d := denied(t, resp); d.code != tt.code || d.reason != tt.reason {
					t.Fatalf("got %+v, want %d %s", d, tt.code, tt.reason)
				}
				return
			}
			dr := resp.GetDeniedResponse()
			if dr.GetStatus().GetCode() != 200 {
				t.Fatalf("status %v: %s", dr.GetStatus(), dr.GetBody())
			}
			var got contract.AgentList
			if err := json.Unmarshal([]byte(dr.GetBody()), &got); err != nil {
				t.Fatalf("%v: %s", err, dr.GetBody())
			}
			gotJSON, _ := json.Marshal(got.Agents)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("agents %s, want %s", gotJSON, wantJSON)
			}
			h := map[string]string{}
			for _, o := range dr.GetHeaders() {
				h[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
			}
			if h["content-type"] != "application/json" || h["cache-control"] != "no-store" || h[HeaderError] != string(ReasonAgentsListed) {
				t.Fatalf("headers %v", h)
			}
		})
	}
}

func decisionOf(t *testing.T, resp *authv3.CheckResponse) handoff.Decision {
	t.Helper()
	d, err := handoff.FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: resp.GetDynamicMetadata()}})
	if err != nil {
		t.Fatalf("%v: %v", resp, err)
	}
	return d
}

// TestAPIRootPaths: the API's own top-level paths are parsed as the API server
// parses them, under the same rules as paths under the prefix; every other path
// outside the prefix is refused before the identity source is asked.
func TestAPIRootPaths(t *testing.T) {
	f := start(t, sandboxConfig, "")
	tests := []struct {
		path     string
		wantCode int // 0: allowed
		reason   string
		verb     string // of the parsed request, when allowed
		resource string
	}{
		{path: "/api/v1/namespaces/demo/pods", verb: "list", resource: "pods"},
		{path: "/api/v1/namespaces/demo/pods/web", verb: "get", resource: "pods"},
		{path: "/apis/apps/v1/namespaces/demo/deployments?watch=true", verb: "watch", resource: "deployments"},
		{path: "/api", verb: "get"},
		{path: "/apis", verb: "get"},
		{path: "/version", verb: "get"},
		{path: "/healthz", verb: "get"},
		{path: "/livez/ping", verb: "get"},
		{path: "/readyz?verbose", verb: "get"},
		{path: "/openapi/v3", verb: "get"},
		{path: "/.well-known/openid-configuration", verb: "get"},
		{path: "/openid/v1/jwks", verb: "get"},
		// Same clean-path rules as under the prefix.
		{path: "/api/../k8s-proxy/api/v1/secrets", wantCode: 400, reason: "bad_request"},
		{path: "/api/v1/namespaces/demo/pods/./web", wantCode: 400, reason: "bad_request"},
		{path: "/apis//apps/v1", wantCode: 400, reason: "bad_request"},
		{path: "/api/v1%2fnamespaces", wantCode: 400, reason: "bad_request"},
		// Same query rules.
		{path: "/api/v1/pods?gitlab%2Dagent%2Did=1", wantCode: 400, reason: "ambiguous_query"},
		{path: "/version?access_token=x", wantCode: 400, reason: "foreign_credential"},
		// Not one of the API's roots: refused.
		{path: "/", wantCode: 400, reason: "outside_prefix"},
		{path: "/metrics", wantCode: 400, reason: "outside_prefix"},
		{path: "/debug/pprof/", wantCode: 400, reason: "outside_prefix"},
		{path: "/logs/kube-apiserver.log", wantCode: 400, reason: "outside_prefix"},
		{path: "/apiv1", wantCode: 400, reason: "outside_prefix"},
		{path: "/API/v1/pods", wantCode: 400, reason: "outside_prefix"},
		{path: "/api%2fv1/pods", wantCode: 400, reason: "outside_prefix"},
		{path: "/.well-known/other", wantCode: 400, reason: "outside_prefix"},
		{path: "/k8s-proxy", wantCode: 400, reason: "outside_prefix"},
		{path: "/kubegate/agents/1", wantCode: 400, reason: "outside_prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			before := f.backend.auths.Load()
			resp := f.check(t, checkRequest("GET", tt.path, pat(aliceToken)))
			if tt.wantCode != 0 {
				if d := denied(t, resp); d.code != tt.wantCode || d.reason != tt.reason {
					t.Fatalf("got %+v, want %d %s", d, tt.wantCode, tt.reason)
				}
				if f.backend.auths.Load() != before {
					t.Fatal("a refused path reached the identity source")
				}
				return
			}
			if resp.GetOkResponse() == nil || okHeaders(t, resp)[contract.HeaderUpstream] != "kubegate_apiserver_1" {
				t.Fatalf("want allowed and routed, got %v", resp)
			}
			// The request as the API server parses it, in the audit line.
			if !strings.Contains(f.logs.String(), `"verb":"`+tt.verb+`"`) || (tt.resource != "" && !strings.Contains(f.logs.String(), `"resource":"`+tt.resource+`"`)) {
				t.Fatalf("the decision's request is not %s %s:\n%s", tt.verb, tt.resource, f.logs.String())
			}
		})
	}
	// A root path and its prefixed twin are the same request to the policy.
	for _, p := range []string{"/api/v1/namespaces/kube-system/secrets", "/apis/apps/v1/deployments?labelSelector=a%3Db"} {
		ra, _, _, ok1 := parseTarget(&httpRequest{Method: "GET", Target: p})
		rb, _, _, ok2 := parseTarget(&httpRequest{Method: "GET", Target: "/k8s-proxy" + p})
		if !ok1 || !ok2 || !reflect.DeepEqual(ra, rb) {
			t.Fatalf("%s parses as %+v, prefixed as %+v", p, ra, rb)
		}
	}
}

// TestOneAgentsReloadsUnderLoadLeaveOthers: while one agent's configuration is
// reloaded continuously, good and bad versions in turn, and the shared inputs
// are swapped, every request for another agent gets its complete answer.
func TestOneAgentsReloadsUnderLoadLeaveOthers(t *testing.T) {
	f := threeAgents(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		docs := []string{badConfig, betaConfig, alphaConfig}
		for i := 0; ctx.Err() == nil; i++ {
			_ = f.server.LoadAgentConfig(ctx, 1, agentconfig.Version{Name: "alpha.yaml", Data: []byte(docs[i%len(docs)])})
			if i%10 == 0 {
				sh := *f.server.shared.Load()
				if err := f.server.SwapShared(ctx, &sh); err != nil {
					t.Error(err)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				resp, err := f.client.Check(context.Background(), checkRequest("GET", podsPath, patFor("2", token("grace"))))
				if err != nil || resp.GetOkResponse() == nil {
					t.Errorf("beta lost a request while alpha reloaded: %v %v", resp, err)
					return
				}
				for _, h := range resp.GetOkResponse().GetHeaders() {
					if h.GetHeader().GetKey() == contract.HeaderUpstream && h.GetHeader().GetValue() != "kubegate_apiserver_2" {
						t.Errorf("beta's request routed to %s", h.GetHeader().GetValue())
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-done
}

// TestExplainAnswersForTheCredentialsAgent: the explain endpoint explains the
// decision of the agent the credential names, with that agent's user_access.
func TestExplainAnswersForTheCredentialsAgent(t *testing.T) {
	f := threeAgents(t)
	tests := []struct {
		name    string
		h       hdr
		agent   int64
		agentNm string
		allowed bool
	}{
		{"alice on alpha", patFor("1", aliceToken), 1, "alpha", true},
		{"alice on beta", patFor("2", aliceToken), 2, "beta", false},
		{"grace on beta", patFor("2", token("grace")), 2, "beta", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.check(t, checkRequest("GET", contract.ExplainPrefix+"GET/api/v1/namespaces/demo/pods", tt.h))
			if resp.GetOkResponse() != nil || resp.GetDeniedResponse().GetStatus().GetCode() != 200 {
				t.Fatalf("got %v", resp)
			}
			var x Explanation
			if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &x); err != nil {
				t.Fatal(err)
			}
			if x.Agent.ID != tt.agent || x.Agent.Name != tt.agentNm || x.Gateway.Decision.Allowed != tt.allowed {
				t.Fatalf("explained agent %+v allowed=%v, want %d %s %v", x.Agent, x.Gateway.Decision.Allowed, tt.agent, tt.agentNm, tt.allowed)
			}
		})
	}
}

// TestNoOKAnswerWithoutAnAgent: the OK answer is built only for an outcome routed
// to a served agent; Check turns any other into a denial.
func TestNoOKAnswerWithoutAnAgent(t *testing.T) {
	d := policy.Decision{Allowed: true, Reason: policy.ReasonAllowed, AccessAs: policy.AccessAsAgent}
	if resp, err := allowResponse(outcome{reason: ReasonAllowed, decision: &d}, "id", nil); err == nil || resp != nil {
		t.Fatalf("an OK answer without an agent: %v %v", resp, err)
	}
	if resp, err := allowResponse(outcome{reason: ReasonAllowed, decision: &d, agent: &agentSlot{spec: AgentSpec{Agent: policy.Agent{ID: 7}}}}, "id", nil); err == nil || resp != nil {
		t.Fatalf("an OK answer for a slot without its route: %v %v", resp, err)
	}
	slot := newAgentSlot(AgentSpec{Agent: policy.Agent{ID: 7}})
	resp, err := allowResponse(outcome{reason: ReasonAllowed, decision: &d, agent: slot}, "id", nil)
	if err != nil || okHeaders(t, resp)[contract.HeaderUpstream] != "kubegate_apiserver_7" {
		t.Fatalf("%v %v", resp, err)
	}
}

// sourceFunc is an agentconfig.Source from a function.
type sourceFunc func(ctx context.Context, onChange func(agentconfig.Version), onError func(error)) error

func (f sourceFunc) Run(ctx context.Context, onChange func(agentconfig.Version), onError func(error)) error {
	return f(ctx, onChange, onError)
}

// TestRunAgent: a source's versions and errors reach its agent only, and
// WaitTried returns once each agent's first version was tried, whatever its fate.
func TestRunAgent(t *testing.T) {
	f := startGateway(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sources := map[int64]agentconfig.Source{
		1: sourceFunc(func(ctx context.Context, onChange func(agentconfig.Version), _ func(error)) error {
			onChange(agentconfig.Version{Name: "alpha.yaml", Data: []byte(alphaConfig)})
			<-ctx.Done()
			return nil
		}),
		2: sourceFunc(func(ctx context.Context, _ func(agentconfig.Version), onError func(error)) error {
			onError(errors.New("GitLab answered 502"))
			<-ctx.Done()
			return nil
		}),
		3: sourceFunc(func(context.Context, func(agentconfig.Version), func(error)) error {
			return errors.New("cannot work at all")
		}),
	}
	errs := make(chan error, len(sources))
	for id, src := range sources {
		go func() { errs <- f.server.RunAgent(ctx, id, src) }()
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if ready := f.server.WaitTried(wctx); wctx.Err() != nil || len(ready) != 1 || ready[0] != 1 {
		t.Fatalf("ready %v (wait: %v)", ready, wctx.Err())
	}
	if err := f.server.LastError(2); err == nil || !strings.Contains(err.Error(), "502") {
		t.Fatalf("agent 2's last error: %v", err)
	}
	if f.check(t, checkRequest("GET", podsPath, patFor("1", aliceToken))).GetOkResponse() == nil {
		t.Fatal("agent 1 does not serve")
	}
	if d := denied(t, f.check(t, checkRequest("GET", podsPath, patFor("2", token("grace"))))); d.code != 503 {
		t.Fatalf("agent 2 after a failed read: %+v", d)
	}
	if err := <-errs; err == nil || !strings.Contains(err.Error(), "cannot work at all") {
		t.Fatalf("the failed source's error: %v", err)
	}
}
