package extauthz

import (
	"context"
	"fmt"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/test/loadgen"
	"kubegate.dev/kubegate/test/testkit"
)

// BenchmarkCheck measures a warm Check (the same user again: identity decision
// cached, directory lookup) against the no-op floor in the same run, at 1 and 8
// concurrent callers. The ratios are the figures to report (p99-x-floor).
func BenchmarkCheck(b *testing.B) {
	f := start(b, sandboxConfig, "")
	floor := serve(b, testkit.NoopAuthz{})
	allowed := checkRequest("GET", podsPath, pat(aliceToken))
	denied := checkRequest("GET", podsPath, pat(token("bob")))
	// Warm up: first decision for alice compiles her identity decision.
	if resp, err := f.client.Check(context.Background(), allowed); err != nil || resp.GetOkResponse() == nil {
		b.Fatal(resp, err)
	}
	for _, callers := range []int{1, 8} {
		var base loadgen.Result
		b.Run(fmt.Sprintf("c=%d/noop-floor", callers), func(b *testing.B) {
			base = loadgen.Run(b, callers, func() error {
				_, err := floor.Check(context.Background(), allowed)
				return err
			})
		})
		for _, tc := range []struct {
			name string
			req  *authv3.CheckRequest
		}{{"allowed", allowed}, {"denied", denied}} {
			b.Run(fmt.Sprintf("c=%d/kubegate-%s", callers, tc.name), func(b *testing.B) {
				loadgen.Run(b, callers, func() error {
					_, err := f.client.Check(context.Background(), tc.req)
					return err
				}).Compare(b, base)
			})
		}
	}
}
