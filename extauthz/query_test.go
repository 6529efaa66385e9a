package extauthz

import (
	"net/url"
	"strings"
	"testing"
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
