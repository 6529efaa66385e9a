package dataplane

import (
	"net/http"
	"slices"
	"testing"
)

// TestChainWithKubegateServices runs the rendered bootstrap against the real
// kubegate authz, extproc and xds services and an upstream recorder: the user's
// credential is replaced by the agent token and the identity travels as
// Impersonate-* lines, one per group.
func TestChainWithKubegateServices(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	var obs observed
	dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})

	for _, h2 := range []bool{true, false} {
		name := map[bool]string{true: "h2", false: "http/1.1"}[h2]
		t.Run(name, func(t *testing.T) {
			status, _, body := do(t, client(t, c, h2), "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces?limit=5&gitlab-agent-id=1", http.Header{"Authorization": {alicePAT()}})
			if status != http.StatusOK {
				t.Fatalf("status %d, body %s", status, body)
			}
			u := obs.last(t)
			if u.Target != "/api/v1/namespaces?limit=5" {
				t.Errorf("upstream target %q, want the prefix stripped and gitlab-agent-id removed", u.Target)
			}
			if got := u.Values("authorization"); !slices.Equal(got, []string{"Bearer " + agentToken}) {
				t.Errorf("upstream authorization %q, want only the agent token", got)
			}
			if got := u.Values("impersonate-user"); !slices.Equal(got, []string{"gitlab:user:alice"}) {
				t.Errorf("impersonate-user %q", got)
			}
			groups := u.Values("impersonate-group")
			if len(groups) < 2 || groups[0] != "gitlab:user" {
				t.Errorf("impersonate-group lines %q, want one line per group starting with gitlab:user", groups)
			}
			if t.Failed() {
				t.Logf("upstream request:\n%s", headerLines(u))
			}
		})
	}
	// Sequential requests reuse the idle upstream connection.
	reqs := rec.requests()
	if len(reqs) != 2 || reqs[0].RemoteAddr != reqs[1].RemoteAddr {
		t.Errorf("upstream connections: %d requests from %v, want both on one connection", len(reqs), []string{reqs[0].RemoteAddr, reqs[len(reqs)-1].RemoteAddr})
	}
}
