package extauthz

import (
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestUpstreamQuery: the canonical form, and the query Envoy forwards for it
// (credential parameters erased, names sorted, values in order, "name" as "name=").
func TestUpstreamQuery(t *testing.T) {
	tests := []struct {
		name, raw    string
		wantUpstream string
		wantRefusal  string // substring of the message; "" means forwarded
	}{
		{"empty", "", "", ""},
		{"plain list options", "limit=500&labelSelector=app%3Dweb", "labelSelector=app%3Dweb&limit=500", ""},
		{"values are passed byte for byte", "fieldSelector=metadata.name%3Dweb&labelSelector=a+in+(x%2Cy)", "fieldSelector=metadata.name%3Dweb&labelSelector=a+in+(x%2Cy)", ""},
		{"credentials erased", "watch=1&gitlab-agent-id=1&gitlab-csrf-token=secret", "watch=1", ""},
		{"only credentials", "gitlab-agent-id=1&gitlab-csrf-token=secret", "", ""},
		{"a name without = becomes name=", "watch&limit=1", "limit=1&watch=", ""},
		{"exec commands keep their order", "stdout=true&command=sh&container=c&command=-c&command=ls", "command=sh&command=-c&command=ls&container=c&stdout=true", ""},
		{"port-forward ports repeat", "ports=80&ports=443", "ports=80&ports=443", ""},
		{"unknown repeated names pass", "match[]=a&match[]=b", "match[]=a&match[]=b", ""},

		{"encoded name", "watch=false&%77atch=true", "", "percent-encoded"},
		{"encoded credential name", "gitlab%2Dcsrf%2Dtoken=secret", "", "percent-encoded"},
		{"plus in a name", "gitlab-csrf-token+=secret", "", "contains '+'"},
		{"credential in another case", "GITLAB-CSRF-TOKEN=secret", "", "in another spelling"},
		{"agent id in another case", "Gitlab-Agent-Id=1", "", "in another spelling"},
		{"repeated watch", "watch=false&watch=true", "", "watch appears 2 times"},
		{"repeated fieldSelector", "fieldSelector=a%3Db&fieldSelector=c%3Dd", "", "fieldSelector appears 2 times"},
		{"repeated labelSelector", "labelSelector=a&labelSelector=b", "", "labelSelector appears 2 times"},
		{"repeated dryRun", "dryRun=All&dryRun=All", "", "dryRun appears 2 times"},
		{"repeated fieldManager", "fieldManager=a&fieldManager=b", "", "fieldManager appears 2 times"},
		{"repeated resourceVersion", "resourceVersion=1&resourceVersion=2", "", "resourceVersion appears"},
		{"empty name", "=x&watch=true", "", "has no name"},
		{"doubled &", "watch=true&&limit=1", "", "has no name"},
		{"trailing &", "watch=true&", "", "has no name"},
		{"fragment", "watch=true#x", "", "'#'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decoded, err := url.ParseQuery(tt.raw)
			if err != nil {
				t.Fatal(err)
			}
			up, msg := upstreamQuery(tt.raw, decoded)
			switch {
			case tt.wantRefusal == "" && msg != "":
				t.Fatalf("refused: %s", msg)
			case tt.wantRefusal != "" && !strings.Contains(msg, tt.wantRefusal):
				t.Fatalf("message %q, want it to contain %q (upstream %q)", msg, tt.wantRefusal, up)
			case tt.wantRefusal == "" && up != tt.wantUpstream:
				t.Fatalf("upstream %q, want %q", up, tt.wantUpstream)
			}
			if strings.Contains(msg, "secret") {
				t.Fatalf("the refusal repeats a value: %s", msg)
			}
		})
	}
}

// TestQueryRefusalsCountedNeverLogged: each refusal is a 400 Status, counted under
// its reason, and neither the response nor the decision log repeats the credential.
func TestQueryRefusalsCountedNeverLogged(t *testing.T) {
	f := start(t, sandboxConfig, "")
	const secret = "s3cr3t-csrf-value"
	for _, tt := range []struct {
		name    string
		path    string
		headers []hdr
		reason  Reason
	}{
		{"encoded CSRF name", podsPath + "?gitlab%2Dcsrf%2Dtoken=" + secret, []hdr{{"cookie", "kubegate_session=" + secret}, {"gitlab-agent-id", "1"}}, ReasonAmbiguousQuery},
		{"upper-case CSRF name", podsPath + "?GITLAB-CSRF-TOKEN=" + secret, []hdr{pat(aliceToken)}, ReasonAmbiguousQuery},
		{"access_token", podsPath + "?access_token=" + secret, []hdr{pat(aliceToken)}, ReasonForeignCredential},
		{"WebSocket bearer", podsPath, []hdr{pat(aliceToken), {"sec-websocket-protocol", "base64url.bearer.authorization.k8s.io." + secret + ",v5.channel.k8s.io"}}, ReasonForeignCredential},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(f.server.metrics.decisions.WithLabelValues("", "denied", string(tt.reason)))
			resp := f.check(t, checkRequest("GET", tt.path, tt.headers...))
			d := denied(t, resp)
			if d.code != 400 || d.reason != string(tt.reason) || strings.Contains(resp.String(), secret) {
				t.Fatalf("got %+v", d)
			}
			if got := testutil.ToFloat64(f.server.metrics.decisions.WithLabelValues("", "denied", string(tt.reason))); got != before+1 {
				t.Fatalf("kubegate_authz_decisions_total{reason=%q} went from %v to %v", tt.reason, before, got)
			}
		})
	}
	if strings.Contains(f.logs.String(), secret) {
		t.Fatalf("a credential reached the log:\n%s", f.logs.String())
	}
	if f.backend.auths.Load() != 0 {
		t.Fatal("a refused request reached the identity backend")
	}
}
