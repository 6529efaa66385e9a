package identity

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseCredential(t *testing.T) {
	jws := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
	tests := []struct {
		name       string
		header     Header
		query      string
		want       Credential
		wantReason Reason
		wantMsg    string // part of the public message
	}{
		{name: "pat", header: Header{"authorization": {"Bearer pat:1:glpat-abc"}},
			want: Credential{Type: AccessPersonalAccessToken, AgentID: 1, Secret: "glpat-abc"}},
		{name: "pat token with colons", header: Header{"authorization": {"Bearer pat:42:a:b:c"}},
			want: Credential{Type: AccessPersonalAccessToken, AgentID: 42, Secret: "a:b:c"}},
		{name: "pat max int64 agent", header: Header{"authorization": {"Bearer pat:9223372036854775807:t"}},
			want: Credential{Type: AccessPersonalAccessToken, AgentID: 9223372036854775807, Secret: "t"}},
		{name: "oidc prefixed", header: Header{"authorization": {"Bearer oidc:7:" + jws}},
			want: Credential{Type: AccessOIDCIDToken, AgentID: 7, Secret: jws}},
		{name: "oidc bare", header: Header{"authorization": {"Bearer " + jws}},
			want: Credential{Type: AccessOIDCIDToken, Secret: jws}},
		{name: "session via headers", header: Header{"cookie": {"a=b; kubegate_session=s1"}, "gitlab-agent-id": {"3"}, "x-csrf-token": {"c1"}},
			want: Credential{Type: AccessSessionCookie, AgentID: 3, Secret: "s1", CSRF: "c1"}},
		{name: "session via query", header: Header{"cookie": {"kubegate_session=s1"}}, query: "gitlab-agent-id=3&gitlab-csrf-token=c1",
			want: Credential{Type: AccessSessionCookie, AgentID: 3, Secret: "s1", CSRF: "c1"}},
		{name: "session header wins over query", header: Header{"cookie": {"kubegate_session=s1"}, "gitlab-agent-id": {"3"}, "x-csrf-token": {"c1"}}, query: "gitlab-agent-id=4&gitlab-csrf-token=c2",
			want: Credential{Type: AccessSessionCookie, AgentID: 3, Secret: "s1", CSRF: "c1"}},
		{name: "authorization wins over cookie", header: Header{"authorization": {"Bearer pat:1:t"}, "cookie": {"kubegate_session=s"}},
			want: Credential{Type: AccessPersonalAccessToken, AgentID: 1, Secret: "t"}},

		{name: "nothing", header: Header{}, wantReason: ReasonNoCredential},
		{name: "other cookies only", header: Header{"cookie": {"_gitlab_session=x"}}, wantReason: ReasonNoCredential},
		{name: "two authorization headers", header: Header{"authorization": {"Bearer pat:1:a", "Bearer pat:1:b"}}, wantReason: ReasonMalformed, wantMsg: "2 Authorization headers"},
		// A malformed Authorization never falls through to a valid cookie.
		{name: "malformed authorization with cookie", header: Header{"authorization": {"Basic dTpw"}, "cookie": {"kubegate_session=s"}, "gitlab-agent-id": {"1"}, "x-csrf-token": {"c"}}, wantReason: ReasonMalformed},
		{name: "two Authorization lines joined by Envoy", header: Header{"authorization": {"Bearer pat:1:a,Bearer pat:1:b"}}, wantReason: ReasonMalformed, wantMsg: "exactly one Authorization header"},
		{name: "blank inside the token", header: Header{"authorization": {"Bearer pat:1:a b"}}, wantReason: ReasonMalformed},
		{name: "lower-case bearer", header: Header{"authorization": {"bearer pat:1:t"}}, wantReason: ReasonMalformed, wantMsg: "case-sensitive"},
		{name: "empty authorization", header: Header{"authorization": {""}}, wantReason: ReasonMalformed},
		{name: "empty bearer", header: Header{"authorization": {"Bearer "}}, wantReason: ReasonMalformed, wantMsg: "empty"},
		{name: "unknown type", header: Header{"authorization": {"Bearer ci:1:t"}}, wantReason: ReasonMalformed, wantMsg: "unrecognised bearer token"},
		{name: "plain token", header: Header{"authorization": {"Bearer glpat-abc"}}, wantReason: ReasonMalformed},
		{name: "PAT prefix upper-case", header: Header{"authorization": {"Bearer PAT:1:t"}}, wantReason: ReasonMalformed},
		{name: "pat without agent", header: Header{"authorization": {"Bearer pat:t"}}, wantReason: ReasonMalformed, wantMsg: "pat:<agent-id>:<token>"},
		{name: "pat empty token", header: Header{"authorization": {"Bearer pat:1:"}}, wantReason: ReasonMalformed, wantMsg: "empty"},
		{name: "pat empty agent", header: Header{"authorization": {"Bearer pat::t"}}, wantReason: ReasonMalformed, wantMsg: "agent id is empty"},
		{name: "pat negative agent", header: Header{"authorization": {"Bearer pat:-1:t"}}, wantReason: ReasonMalformed, wantMsg: "positive decimal"},
		{name: "pat plus agent", header: Header{"authorization": {"Bearer pat:+1:t"}}, wantReason: ReasonMalformed},
		{name: "pat zero agent", header: Header{"authorization": {"Bearer pat:0:t"}}, wantReason: ReasonMalformed},
		{name: "pat leading zero agent", header: Header{"authorization": {"Bearer pat:01:t"}}, wantReason: ReasonMalformed},
		{name: "pat hex agent", header: Header{"authorization": {"Bearer pat:0x1:t"}}, wantReason: ReasonMalformed},
		{name: "pat huge agent", header: Header{"authorization": {"Bearer pat:9223372036854775808:t"}}, wantReason: ReasonMalformed, wantMsg: "out of range"},
		{name: "pat unicode digits", header: Header{"authorization": {"Bearer pat:١:t"}}, wantReason: ReasonMalformed},
		{name: "CRLF in value", header: Header{"authorization": {"Bearer pat:1:t\r\nImpersonate-User: admin"}}, wantReason: ReasonMalformed, wantMsg: "control characters"},
		{name: "NUL in value", header: Header{"authorization": {"Bearer pat:1:t\x00"}}, wantReason: ReasonMalformed},
		{name: "not utf-8", header: Header{"authorization": {"Bearer pat:1:\xff\xfe"}}, wantReason: ReasonMalformed, wantMsg: "UTF-8"},
		{name: "oversized", header: Header{"authorization": {"Bearer pat:1:" + strings.Repeat("a", 17<<10)}}, wantReason: ReasonMalformed, wantMsg: "longer than"},
		{name: "two session cookies", header: Header{"cookie": {"kubegate_session=a", "kubegate_session=b"}}, wantReason: ReasonMalformed},
		{name: "session without agent", header: Header{"cookie": {"kubegate_session=s"}, "x-csrf-token": {"c"}}, wantReason: ReasonMalformed, wantMsg: "agent id"},
		{name: "session without csrf", header: Header{"cookie": {"kubegate_session=s"}, "gitlab-agent-id": {"1"}}, wantReason: ReasonMalformed, wantMsg: "CSRF"},
		{name: "session two agent headers", header: Header{"cookie": {"kubegate_session=s"}, "gitlab-agent-id": {"1", "2"}, "x-csrf-token": {"c"}}, wantReason: ReasonMalformed, wantMsg: "more than one agent id"},
		{name: "session two csrf query values", header: Header{"cookie": {"kubegate_session=s"}, "gitlab-agent-id": {"1"}}, query: "gitlab-csrf-token=a&gitlab-csrf-token=b", wantReason: ReasonMalformed},
		{name: "session bad agent", header: Header{"cookie": {"kubegate_session=s"}, "gitlab-agent-id": {"x"}, "x-csrf-token": {"c"}}, wantReason: ReasonMalformed},
		{name: "session empty", header: Header{"cookie": {"kubegate_session="}, "gitlab-agent-id": {"1"}, "x-csrf-token": {"c"}}, wantReason: ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			got, err := ParseCredential(tt.header, q)
			if tt.wantReason != "" {
				var e *Error
				if !errors.As(err, &e) || e.Reason != tt.wantReason {
					t.Fatalf("want %s, got %+v, %v", tt.wantReason, got, err)
				}
				if !strings.Contains(e.Public, tt.wantMsg) {
					t.Errorf("message %q does not say %q", e.Public, tt.wantMsg)
				}
				if got != (Credential{}) {
					t.Errorf("credential returned with error: %v", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestCredentialNeverPrintsSecret(t *testing.T) {
	c := Credential{Type: AccessPersonalAccessToken, AgentID: 1, Secret: "glpat-SECRET", CSRF: "CSRFSECRET"}
	for _, s := range []string{c.String(), c.LogValue().String()} {
		if strings.Contains(s, "SECRET") {
			t.Errorf("%q shows a secret", s)
		}
	}
}

func FuzzParseCredential(f *testing.F) {
	f.Add("Bearer pat:1:tok", "kubegate_session=s", "1", "c")
	f.Add("Bearer oidc:2:a.b.c", "", "", "")
	f.Fuzz(func(t *testing.T, auth, cookie, agent, csrf string) {
		h := Header{"cookie": {cookie}, "gitlab-agent-id": {agent}, "x-csrf-token": {csrf}}
		if auth != "" {
			h["authorization"] = []string{auth}
		}
		c, err := ParseCredential(h, nil)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if c.Secret == "" || (c.Type != AccessOIDCIDToken && c.AgentID <= 0) {
			t.Fatalf("accepted an empty secret or agent: %+v", c)
		}
	})
}

func TestListedDigest(t *testing.T) {
	a := NewListed([]string{"g/p", "G/Q"}, []string{"g"})
	same := Listed{Projects: []string{"g/p", "G/Q"}, Groups: []string{"g"}} // not prepared: computed on demand
	if a.Digest() != same.Digest() {
		t.Fatal("a prepared and an unprepared listing of the same entries differ")
	}
	for _, other := range []Listed{
		NewListed([]string{"G/Q", "g/p"}, []string{"g"}), // order
		NewListed([]string{"g/p", "g/q"}, []string{"g"}), // spelling (the answer echoes it)
		NewListed([]string{"g/p", "G/Q", "g"}, nil),      // a group moved to projects
		NewListed([]string{"g/pG/Q"}, []string{"g"}),     // concatenation
	} {
		if other.Digest() == a.Digest() {
			t.Errorf("%v has the same digest as %v", other, a)
		}
	}
	if a.ProjectKey(1) != "g/q" || same.ProjectKey(1) != "g/q" || a.GroupKey(0) != "g" {
		t.Fatal("keys are not lower case")
	}
}

// TestForeignCredential: the carriers the API server reads besides Authorization
// are found in every spelling a client may use; kubectl's own subprotocols pass.
func TestForeignCredential(t *testing.T) {
	tests := []struct {
		name  string
		h     Header
		query string
		want  string // part of the message; "" means none found
	}{
		{"nothing", Header{}, "", ""},
		{"kubectl exec subprotocols", Header{HeaderWebSocketProtocol: {"v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"}}, "command=sh", ""},
		{"kubectl port-forward subprotocols", Header{HeaderWebSocketProtocol: {"SPDY/3.1+portforward.k8s.io", "portforward.k8s.io"}}, "ports=80", ""},
		{"a protocol merely mentioning bearer", Header{HeaderWebSocketProtocol: {"bearer.example"}}, "", ""},
		{"bearer subprotocol", Header{HeaderWebSocketProtocol: {"base64url.bearer.authorization.k8s.io.c2VjcmV0, v5.channel.k8s.io"}}, "", "Sec-WebSocket-Protocol"},
		{"bearer subprotocol last in the list", Header{HeaderWebSocketProtocol: {"v5.channel.k8s.io,base64url.bearer.authorization.k8s.io.c2VjcmV0"}}, "", "Sec-WebSocket-Protocol"},
		{"bearer subprotocol on a second line", Header{HeaderWebSocketProtocol: {"v5.channel.k8s.io", "  base64url.bearer.authorization.k8s.io.c2VjcmV0"}}, "", "Sec-WebSocket-Protocol"},
		{"bearer subprotocol in another case", Header{HeaderWebSocketProtocol: {"BASE64URL.BEARER.AUTHORIZATION.K8S.IO.c2VjcmV0"}}, "", "Sec-WebSocket-Protocol"},
		{"bearer subprotocol without a token", Header{HeaderWebSocketProtocol: {"base64url.bearer.authorization.k8s.io."}}, "", "Sec-WebSocket-Protocol"},
		{"access_token", Header{}, "access_token=secret", "access_token"},
		{"empty access_token", Header{}, "access_token=", "access_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got := ForeignCredential(tt.h, q)
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if strings.Contains(got, "c2VjcmV0") || strings.Contains(got, "secret") {
				t.Fatalf("the message repeats the credential: %s", got)
			}
		})
	}
}
