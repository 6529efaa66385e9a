package e2e

import (
	"strings"
	"testing"
)

// TestKubectlGetRaw: kubectl's --raw ignores the path of the kubeconfig's server
// URL, so `kubectl get --raw /readyz` asks the gateway for /readyz, not
// /k8s-proxy/readyz. The gateway serves the API's own top-level paths through the
// same chain: the caller is authenticated and decided like any request, and a
// path outside them stays refused.
func TestKubectlGetRaw(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/readyz", "ok"},
		{"/livez", "ok"},
		{"/healthz", "ok"},
		{"/version", `"gitVersion"`},
		{"/api", `"APIVersions"`},
		{"/apis", `"APIGroupList"`},
		{"/api/v1/namespaces/demo/configmaps/welcome", `"hello`},
	} {
		t.Run("alice "+tc.path, func(t *testing.T) {
			out, err := kubectl(t, "--context", "alice", "get", "--raw", tc.path)
			if err != nil || !strings.Contains(out, tc.want) {
				t.Fatalf("kubectl get --raw %s: %v\n%s", tc.path, err, out)
			}
		})
	}
	t.Run("bob is refused by kubegate and the API server never hears of it", func(t *testing.T) {
		mark := marker(t)
		out, err := kubectl(t, "--context", "bob", "get", "--raw", "/api?e2e="+mark)
		if err == nil || !strings.Contains(out, "kubegate: you are not a Developer or higher member") {
			t.Fatalf("want kubegate's refusal, got %v\n%s", err, out)
		}
		neverReachedAPIServer(t, mark)
	})
	t.Run("a path that is not the API's is not served", func(t *testing.T) {
		mark := marker(t)
		for _, p := range []string{"/metrics?e2e=" + mark, "/apiz?e2e=" + mark, "/readyzz?e2e=" + mark, "/logs/?e2e=" + mark} {
			if out, err := kubectl(t, "--context", "alice", "get", "--raw", p); err == nil {
				t.Errorf("kubectl get --raw %s succeeded:\n%s", p, out)
			}
		}
		neverReachedAPIServer(t, mark)
	})
}
