package e2e

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/test/loadgen"
)

// BenchmarkGatewayVsDirect measures a list of pods through the whole gateway (data
// plane, kubegate authz with the directory, extproc, the API server's impersonation)
// against the floor of the same request straight to the API server as the agent with
// the same impersonation headers, in the same run, at 1 and 8 concurrent callers.
func BenchmarkGatewayVsDirect(b *testing.B) {
	direct := gw.Cluster.AgentConfig()
	direct.Impersonate = rest.ImpersonationConfig{
		UserName: "gitlab:user:alice",
		Groups:   []string{"gitlab:user", "gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter", "gitlab:project_role:1:developer", "gitlab:project_role:1:maintainer"},
		Extra: map[string][]string{"agent.gitlab.com/id": {"1"}, "agent.gitlab.com/username": {"alice"},
			"agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"1"}},
	}
	directRT, err := rest.TransportFor(direct)
	if err != nil {
		b.Fatal(err)
	}
	directClient := &http.Client{Transport: directRT}
	gatewayClient := &http.Client{Transport: mustGatewayTransport(b)}
	get := func(c *http.Client, url string, header http.Header) func() error {
		return func() error {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header = header.Clone()
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	}
	path := "/api/v1/namespaces/demo/pods"
	directCall := get(directClient, gw.Cluster.URL+path, http.Header{})
	gatewayCall := get(gatewayClient, gw.GatewayURL+path, http.Header{"Authorization": {"Bearer pat:1:kg-sandbox-alice-token"}})
	if err := gatewayCall(); err != nil {
		b.Fatal(err)
	}
	for _, callers := range []int{1, 8} {
		var floor loadgen.Result
		b.Run(fmt.Sprintf("c=%d/direct-impersonated-floor", callers), func(b *testing.B) {
			floor = loadgen.Run(b, callers, directCall)
		})
		b.Run(fmt.Sprintf("c=%d/through-gateway", callers), func(b *testing.B) {
			loadgen.Run(b, callers, gatewayCall).Compare(b, floor)
		})
	}
}

func mustGatewayTransport(b *testing.B) http.RoundTripper {
	rt, err := rest.TransportFor(&rest.Config{Host: gw.GatewayURL, TLSClientConfig: rest.TLSClientConfig{CAFile: gw.GatewayCA}})
	if err != nil {
		b.Fatal(err)
	}
	return rt
}
