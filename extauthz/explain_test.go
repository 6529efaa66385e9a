package extauthz

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

// ExplainMemberships lets the test backend explain, as the directory it wraps does.
func (c *counting) ExplainMemberships(ctx context.Context, u identity.User, l identity.Listed) ([]identity.EntrySource, error) {
	return c.dir.ExplainMemberships(ctx, u, l)
}

const explainPods = ExplainPrefix + "GET/api/v1/namespaces/demo/pods"

// explained asserts the explain endpoint's answer: never an OK (so Envoy never lets
// the request continue), a 200 local reply with the JSON explanation.
func explained(t *testing.T, f *fixture, path string, headers ...hdr) Explanation {
	t.Helper()
	resp := f.check(t, checkRequest("GET", path, headers...))
	if resp.GetOkResponse() != nil || resp.GetStatus().GetCode() == int32(codes.OK) || resp.GetDynamicMetadata() != nil {
		t.Fatalf("the explain endpoint let a request continue: %v", resp)
	}
	dr := resp.GetDeniedResponse()
	if dr.GetStatus().GetCode() != 200 {
		t.Fatalf("want the explanation (200), got %d: %s", dr.GetStatus().GetCode(), dr.GetBody())
	}
	var x Explanation
	dec := json.NewDecoder(strings.NewReader(dr.GetBody()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&x); err != nil {
		t.Fatalf("the explanation is not JSON: %v: %s", err, dr.GetBody())
	}
	for _, secret := range []string{aliceToken, token("bob"), "sha256:", directory.HashToken(aliceToken)} {
		if strings.Contains(dr.GetBody(), secret) {
			t.Fatalf("the explanation shows a token or digest (%q): %s", secret, dr.GetBody())
		}
	}
	return x
}

// TestExplainEndpointAnswersForTheCaller: the endpoint explains the decision for
// the credential's own user — allowed or refused by the policy — and names only
// the entries that user has a membership of.
func TestExplainEndpointAnswersForTheCaller(t *testing.T) {
	f := start(t, sandboxConfig, "../policy/testdata/operator")
	tests := []struct {
		name        string
		user        string
		path        string
		wantAllowed bool
		wantReason  policy.Reason
		wantEntries []string // kind path verdict
		wantGrants  []string // relation path
	}{
		{name: "alice, maintainer of a listed project", user: "alice", path: explainPods, wantAllowed: true, wantReason: policy.ReasonAllowed,
			wantEntries: []string{"project group-1/project-1 qualifies"}, wantGrants: []string{"group-1/project-1: direct group-1/project-1"}},
		{name: "bob, reporter only, learns why he is refused", user: "bob", path: explainPods, wantReason: policy.ReasonNotMember,
			wantEntries: []string{"project group-2/project-2 below_developer"}, wantGrants: []string{"group-2/project-2: direct group-2/project-2", "group-2: subgroup_only group-2/project-2"}},
		{name: "carol inherits from group-3", user: "carol", path: explainPods, wantAllowed: true, wantReason: policy.ReasonAllowed,
			wantEntries: []string{"group group-3/subgroup qualifies"}, wantGrants: []string{"group-3/subgroup: inherited group-3"}},
		{name: "dave, subgroup only", user: "dave", path: explainPods, wantReason: policy.ReasonNotMember,
			wantGrants: []string{"group-3/subgroup: subgroup_only group-3/subgroup/team"}},
		{name: "ivan, a project inside a listed group", user: "ivan", path: explainPods, wantReason: policy.ReasonNotMember,
			wantGrants: []string{"group-3/subgroup: subgroup_only group-3/subgroup/project-3"}},
		{name: "a query naming another user changes nothing", user: "bob", path: explainPods + "?user=alice&as=alice", wantReason: policy.ReasonNotMember,
			wantEntries: []string{"project group-2/project-2 below_developer"}, wantGrants: []string{"group-2/project-2: direct group-2/project-2", "group-2: subgroup_only group-2/project-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := explained(t, f, tt.path, pat(token(tt.user)))
			if x.User.Username != tt.user || x.Agent.ID != agent.ID || x.AccessType != identity.AccessPersonalAccessToken {
				t.Fatalf("explanation for %+v agent %+v (%s), want %s", x.User, x.Agent, x.AccessType, tt.user)
			}
			if x.Gateway.Decision.Allowed != tt.wantAllowed || x.Gateway.Decision.Reason != tt.wantReason {
				t.Fatalf("decision %+v, want allowed=%v %s", x.Gateway.Decision, tt.wantAllowed, tt.wantReason)
			}
			var entries, grants []string
			for _, e := range x.Gateway.Entries {
				entries = append(entries, string(e.Kind)+" "+e.Path+" "+string(e.Verdict))
			}
			for _, s := range x.Sources {
				for _, g := range s.Grants {
					grants = append(grants, s.Path+": "+string(g.Relation)+" "+g.Path)
				}
			}
			if strings.Join(entries, ",") != strings.Join(tt.wantEntries, ",") || strings.Join(grants, ",") != strings.Join(tt.wantGrants, ",") {
				t.Fatalf("entries %q grants %q, want %q %q", entries, grants, tt.wantEntries, tt.wantGrants)
			}
			if x.OtherListedEntries != 4-len(tt.wantEntries) {
				t.Fatalf("other_listed_entries %d", x.OtherListedEntries)
			}
			if x.Request.Resource != "pods" || x.Request.Namespace != "demo" || x.Request.Verb != "list" {
				t.Fatalf("request %+v", x.Request)
			}
		})
	}
	t.Run("the operator modules' results", func(t *testing.T) {
		x := explained(t, f, ExplainPrefix+"GET/api/v1/namespaces/kube-system/secrets/s", pat(aliceToken))
		if x.Gateway.Decision.Allowed || x.Gateway.Decision.Reason != policy.ReasonPolicyDenied || !x.Gateway.ModulesEvaluated {
			t.Fatalf("gateway %+v", x.Gateway)
		}
		var results []string
		for _, m := range x.Gateway.Modules {
			results = append(results, m.Package+": "+strings.Join(m.Denials, ";"))
		}
		want := "kubegate.operator.exec: ,kubegate.operator.query: ,kubegate.operator.secrets: reading secrets in kube-system through the gateway is not allowed"
		if strings.Join(results, ",") != want {
			t.Fatalf("module results %q, want %q", results, want)
		}
	})
}

// TestExplainEndpointRefusesAsTheProxy: every refusal on the way to an identity
// (client impersonation, credential parsing, authentication, malformed requests) is
// answered exactly as the same request to /k8s-proxy/ is — same status, reason,
// message and headers — and before the identity source where Check refuses before
// it; the endpoint's own malformed forms are refused; and no answer ever lets the
// request continue.
func TestExplainEndpointRefusesAsTheProxy(t *testing.T) {
	f := start(t, sandboxConfig, "")
	jws := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
	tests := []struct {
		name    string
		target  string // after the method: an API path and query
		headers []hdr
	}{
		{"no credential", "api/v1/pods", nil},
		{"asking as someone else with Impersonate-User", "api/v1/pods", []hdr{pat(token("bob")), {"impersonate-user", "alice"}}},
		{"asking as someone else with Impersonate-Group", "api/v1/pods", []hdr{pat(token("bob")), {"impersonate-group", "gitlab:user"}}},
		{"asking as someone else with X-Remote-User", "api/v1/pods", []hdr{pat(token("bob")), {"x-remote-user", "alice"}}},
		{"two Authorization headers", "api/v1/pods", []hdr{pat(aliceToken), pat(token("bob"))}},
		{"malformed credential", "api/v1/pods", []hdr{bearer("pat:" + aliceToken)}},
		{"credential for another agent", "api/v1/pods", []hdr{bearer("pat:2:" + aliceToken)}},
		{"unknown token", "api/v1/pods", []hdr{pat("kg-sandbox-nobody-token")}},
		{"revoked token", "api/v1/pods", []hdr{pat(token("erin"))}},
		{"token without k8s_proxy", "api/v1/pods", []hdr{pat(token("frank"))}},
		{"expired token", "api/v1/pods", []hdr{pat(token("judy"))}},
		{"blocked user", "api/v1/pods", []hdr{pat(token("mallory"))}},
		{"OIDC not accepted here", "api/v1/pods", []hdr{bearer(jws)}},
		{"session cookie without CSRF", "api/v1/pods", []hdr{{"cookie", "kubegate_session=s"}, {"gitlab-agent-id", "1"}}},
		{"access_token query parameter", "api/v1/pods?access_token=secret", []hdr{pat(aliceToken)}},
		{"WebSocket bearer subprotocol", "api/v1/pods", []hdr{pat(aliceToken), {"sec-websocket-protocol", "base64url.bearer.authorization.k8s.io.c2VjcmV0"}}},
		{"ambiguous query", "api/v1/pods?GITLAB-CSRF-TOKEN=c", []hdr{pat(aliceToken)}},
		{"dot segments", "api/v1/../../x", []hdr{pat(aliceToken)}},
		{"encoded slash", "api/v1/namespaces/a%2Fb/pods", []hdr{pat(aliceToken)}},
		{"malformed query", "api/v1/pods?a=%zz", []hdr{pat(aliceToken)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxyAuths := f.backend.auths.Load()
			want := f.check(t, checkRequest("GET", PathPrefix+tt.target, tt.headers...))
			proxyReached := f.backend.auths.Load() > proxyAuths
			d := denied(t, want)
			before := f.backend.auths.Load()
			got := f.check(t, checkRequest("GET", ExplainPrefix+"GET/"+tt.target, tt.headers...))
			if !proto.Equal(got, want) {
				t.Fatalf("explain answered\n %v\nthe proxy answers\n %v", got, want)
			}
			if reached := f.backend.auths.Load() > before; reached != proxyReached {
				t.Fatalf("the identity source was reached: %v, by the proxy's refusal: %v (%+v)", reached, proxyReached, d)
			}
		})
	}
	own := []struct {
		name, method, path string
	}{
		{"not GET", "POST", explainPods},
		{"lower-case method", "GET", ExplainPrefix + "get/api/v1/pods"},
		{"unknown method", "GET", ExplainPrefix + "CONNECT/api/v1/pods"},
		{"no method", "GET", ExplainPrefix},
		{"no API path", "GET", ExplainPrefix + "GET"},
	}
	for _, tt := range own {
		t.Run(tt.name, func(t *testing.T) {
			before := f.backend.auths.Load()
			d := denied(t, f.check(t, checkRequest(tt.method, tt.path, pat(aliceToken))))
			if d.code != 400 || d.reason != string(ReasonBadRequest) || !strings.Contains(d.message, ExplainPrefix) {
				t.Fatalf("got %+v", d)
			}
			if f.backend.auths.Load() != before {
				t.Fatal("the identity source was reached for a malformed explain request")
			}
		})
	}
}

// TestExplainEndpointAgreesWithCheck: for every sandbox user with a good token and
// requests operator modules allow or deny, the endpoint's decision is the one Check
// makes for the same request to /k8s-proxy/: allowed exactly when Check allows, with
// the reason Check's denial names, and the identity Check hands to ext_proc.
func TestExplainEndpointAgreesWithCheck(t *testing.T) {
	f := start(t, sandboxConfig, "../policy/testdata/operator")
	targets := []string{
		"GET/api/v1/namespaces/demo/pods",
		"GET/api/v1/namespaces/kube-system/secrets/s",
		"POST/api/v1/namespaces/kube-system/pods/p/exec?command=sh",
		"GET/api/v1/namespaces/demo/configmaps?watch=1",
		"GET/apis/apps/v1/namespaces/demo/deployments",
	}
	for _, user := range []string{"alice", "bob", "carol", "dave", "grace", "heidi", "ivan"} {
		for _, target := range targets {
			t.Run(user+"/"+target, func(t *testing.T) {
				method, rest, _ := strings.Cut(target, "/")
				x := explained(t, f, ExplainPrefix+target, pat(token(user)))
				resp := f.check(t, checkRequest(method, PathPrefix+rest, pat(token(user))))
				if ok := resp.GetOkResponse() != nil; ok != x.Gateway.Decision.Allowed {
					t.Fatalf("Check allows: %v; the explanation says %+v", ok, x.Gateway.Decision)
				}
				if x.Gateway.Decision.Allowed {
					return
				}
				if d := denied(t, resp); d.reason != string(x.Gateway.Decision.Reason) || !strings.Contains(d.message, x.Gateway.Decision.Message) {
					t.Fatalf("Check denies %+v; the explanation says %+v", d, x.Gateway.Decision)
				}
			})
		}
	}
}
