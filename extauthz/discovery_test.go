package extauthz

import (
	"encoding/json"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

func TestDiscoveryRequest(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		want           bool
	}{
		{"GET", "/k8s-proxy/api", true},
		{"GET", "/k8s-proxy/api?timeout=32s", true},
		{"GET", "/k8s-proxy/api/v1", true},
		{"GET", "/k8s-proxy/apis", true},
		{"GET", "/k8s-proxy/apis/apps", true},
		{"GET", "/k8s-proxy/apis/apps/v1/", true},
		{"HEAD", "/k8s-proxy/apis/apps/v1", true},
		{"GET", "/k8s-proxy/api/v1/pods", false},
		{"GET", "/k8s-proxy/apis/apps/v1/deployments", false},
		{"GET", "/k8s-proxy/version", false},
		{"GET", "/k8s-proxy/api//v1", false},
		{"GET", "/k8s-proxy/", false},
		// A top-level path: only kubectl --raw asks for it (the discovery client
		// follows the server URL's path), and --raw prints a Status's message.
		{"GET", "/api", false},
		{"POST", "/k8s-proxy/api", false},
	} {
		if got := discoveryRequest(tc.method, tc.target); got != tc.want {
			t.Errorf("discoveryRequest(%s %s) = %v, want %v", tc.method, tc.target, got, tc.want)
		}
	}
}

// TestDiscoveryDenialsArePlainText: kubectl reads discovery with client-go's
// Result.Raw(), which shows only a text/* body; every other denial stays a Status.
func TestDiscoveryDenialsArePlainText(t *testing.T) {
	f := start(t, sandboxConfig, "")
	for _, tc := range []struct {
		name  string
		req   *authv3.CheckRequest
		plain bool
		want  string
	}{
		{"bob's discovery", checkRequest("GET", "/k8s-proxy/api?timeout=32s", pat(token("bob"))), true, "kubegate: you are not a Developer or higher member"},
		{"client impersonation on discovery", checkRequest("GET", "/k8s-proxy/apis", pat(aliceToken), hdr{"impersonate-user", "someone"}), true, "kubegate: impersonation through the gateway is not allowed"},
		{"bob's list", checkRequest("GET", podsPath, pat(token("bob"))), false, "kubegate: you are not a Developer or higher member"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := f.check(t, tc.req).GetDeniedResponse()
			if d == nil {
				t.Fatal("allowed")
			}
			var ct, kerr string
			for _, h := range d.GetHeaders() {
				switch h.GetHeader().GetKey() {
				case "content-type":
					ct = h.GetHeader().GetValue()
				case HeaderError:
					kerr = h.GetHeader().GetValue()
				}
			}
			if kerr == "" {
				t.Errorf("no %s header", HeaderError)
			}
			if tc.plain {
				if !strings.HasPrefix(ct, "text/plain") || !strings.HasPrefix(d.GetBody(), tc.want) {
					t.Errorf("content-type %q, body %q; want text/plain starting %q", ct, d.GetBody(), tc.want)
				}
				return
			}
			var st struct{ Kind, Message string }
			if err := json.Unmarshal([]byte(d.GetBody()), &st); err != nil || ct != "application/json" || st.Kind != "Status" || !strings.HasPrefix(st.Message, tc.want) {
				t.Errorf("content-type %q, body %q (%v); want a Status whose message starts %q", ct, d.GetBody(), err, tc.want)
			}
		})
	}
}
