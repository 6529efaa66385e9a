package e2e

import (
	"strings"
	"testing"
)

// TestQueryAttacksNeverReachTheAPIServer: an operator module (policy/testdata/
// operator/query.rego) denies watching configmaps and selecting pods by node. Every
// way of making the gateway read one query and the API server another is refused,
// and so is every credential the API server would read besides the agent's; none
// of these requests reaches the API server.
func TestQueryAttacksNeverReachTheAPIServer(t *testing.T) {
	const (
		configmaps = "/api/v1/namespaces/demo/configmaps"
		pods       = "/api/v1/namespaces/demo/pods"
	)
	tests := []struct {
		name       string
		method     string
		path       string // MARK is replaced by the request's marker
		headers    []string
		wantCode   int
		wantReason string
	}{
		{"policy denies a watch", "GET", configmaps + "?watch=true&labelSelector=mark%3DMARK", nil, 403, "policy_denied"},
		{"watch spelled without a value", "GET", configmaps + "?watch&labelSelector=mark%3DMARK", nil, 403, "policy_denied"},
		{"repeated watch", "GET", configmaps + "?watch=false&watch=true&labelSelector=mark%3DMARK", nil, 400, "ambiguous_query"},
		{"percent-encoded watch", "GET", configmaps + "?watch=false&%77atch=true&labelSelector=mark%3DMARK", nil, 400, "ambiguous_query"},
		{"policy denies a field selector", "GET", pods + "?fieldSelector=spec.nodeName%3Dn1&labelSelector=mark%3DMARK", nil, 403, "policy_denied"},
		{"field selector behind an encoded name", "GET", pods + "?fieldSelector=metadata.name%3Dweb&%66ieldSelector=spec.nodeName%3Dn1&labelSelector=mark%3DMARK", nil, 400, "ambiguous_query"},
		{"repeated field selector", "GET", pods + "?fieldSelector=metadata.name%3Dweb&fieldSelector=spec.nodeName%3Dn1&labelSelector=mark%3DMARK", nil, 400, "ambiguous_query"},
		{"repeated label selector", "GET", configmaps + "?labelSelector=mark%3DMARK&labelSelector=x", nil, 400, "ambiguous_query"},
		{"repeated dryRun", "POST", configmaps + "?dryRun=All&dryRun=All&fieldManager=MARK", nil, 400, "ambiguous_query"},
		{"repeated fieldManager", "PATCH", configmaps + "/welcome?fieldManager=MARK&fieldManager=other", nil, 400, "ambiguous_query"},
		{"percent-encoded CSRF parameter", "GET", configmaps + "?labelSelector=mark%3DMARK&gitlab%2Dcsrf%2Dtoken=leak", nil, 400, "ambiguous_query"},
		{"percent-encoded agent id parameter", "GET", configmaps + "?labelSelector=mark%3DMARK&gitlab-agent%2did=1", nil, 400, "ambiguous_query"},
		{"CSRF parameter in upper case", "GET", configmaps + "?labelSelector=mark%3DMARK&GITLAB-CSRF-TOKEN=leak", nil, 400, "ambiguous_query"},
		{"CSRF parameter with +", "GET", configmaps + "?labelSelector=mark%3DMARK&gitlab-csrf-token+=leak", nil, 400, "ambiguous_query"},
		{"access_token", "GET", configmaps + "?labelSelector=mark%3DMARK&access_token=leak", nil, 400, "foreign_credential"},
		{"WebSocket bearer subprotocol", "GET", configmaps + "?labelSelector=mark%3DMARK", []string{"Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.bGVhaw, v5.channel.k8s.io"}, 400, "foreign_credential"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mark := marker(t)
			resp := through(t, tc.method, strings.ReplaceAll(tc.path, "MARK", mark), append([]string{"Authorization", pat("alice")}, tc.headers...)...)
			if resp.code != tc.wantCode || resp.header.Get("X-Kubegate-Error") != tc.wantReason {
				t.Fatalf("status %d %s, want %d %s: %s", resp.code, resp.header.Get("X-Kubegate-Error"), tc.wantCode, tc.wantReason, resp.body)
			}
			if _, msg, code := resp.status(t); code != tc.wantCode || !strings.HasPrefix(msg, "kubegate: ") || strings.Contains(msg, "leak") || strings.Contains(msg, "bGVhaw") {
				t.Fatalf("Status %d %q", code, msg)
			}
			neverReachedAPIServer(t, mark)
		})
	}

	// The same requests spelled canonically pass, and the API server reads them as
	// the policy did.
	t.Run("a list beside the denied watch passes", func(t *testing.T) {
		mark := marker(t)
		resp := through(t, "GET", configmaps+"?watch=false&labelSelector=mark%3D"+mark+"&gitlab-csrf-token=leak", "Authorization", pat("alice"))
		if resp.code != 200 {
			t.Fatalf("status %d: %s", resp.code, resp.body)
		}
		e := waitAudit(t, mark)
		if e.Verb != "list" || strings.Contains(e.RequestURI, "leak") {
			t.Fatalf("the API server saw %s %s", e.Verb, e.RequestURI)
		}
	})
}
