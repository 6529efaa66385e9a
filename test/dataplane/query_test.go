package dataplane

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"

	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

// echoModule denies every request with the policy's own input as the message, so
// the test can read exactly what an operator module was shown.
const echoModule = `package kubegate.operator.echo

import rego.v1

deny contains msg if {
	msg := json.marshal(input.request)
}
`

// view is what a request means to whoever parses it.
type view struct {
	Verb, Namespace, Resource, Subresource, Name string
	FieldSelector, LabelSelector                 string
	DryRun                                       bool
	FieldManager                                 string
}

// apiServerView parses a request that reached the upstream the way kube-apiserver
// does: RequestInfoFactory configured as kube-apiserver configures it (for the
// authorizer: verb, name, selectors), then the options each handler decodes with
// the parameter codec (endpoints/handlers: get.go ListResource decodes
// metainternalversion.ListOptions; create.go CreateOptions, update.go
// UpdateOptions, patch.go PatchOptions, delete.go DeleteOptions).
func apiServerView(t *testing.T, r *http.Request) view {
	t.Helper()
	f := &request.RequestInfoFactory{APIPrefixes: sets.NewString("api", "apis"), GrouplessAPIPrefixes: sets.NewString("api")}
	info, err := f.NewRequestInfo(r)
	if err != nil {
		t.Fatalf("the API server's parser refuses %s: %v", r.URL, err)
	}
	v := view{Verb: info.Verb, Namespace: info.Namespace, Resource: info.Resource, Subresource: info.Subresource, Name: info.Name,
		FieldSelector: info.FieldSelector, LabelSelector: info.LabelSelector}
	q := r.URL.Query()
	switch info.Verb {
	case "list", "watch":
		var o metainternalversion.ListOptions
		err = metainternalversionscheme.ParameterCodec.DecodeParameters(q, metav1.SchemeGroupVersion, &o)
		if o.Watch != (info.Verb == "watch") {
			t.Errorf("the list handler reads watch=%v for verb %s", o.Watch, info.Verb)
		}
	case "create":
		var o metav1.CreateOptions
		err = metainternalversionscheme.ParameterCodec.DecodeParameters(q, metav1.SchemeGroupVersion, &o)
		v.DryRun, v.FieldManager = len(o.DryRun) > 0, o.FieldManager
	case "update":
		var o metav1.UpdateOptions
		err = metainternalversionscheme.ParameterCodec.DecodeParameters(q, metav1.SchemeGroupVersion, &o)
		v.DryRun, v.FieldManager = len(o.DryRun) > 0, o.FieldManager
	case "patch":
		var o metav1.PatchOptions
		err = metainternalversionscheme.ParameterCodec.DecodeParameters(q, metav1.SchemeGroupVersion, &o)
		v.DryRun, v.FieldManager = len(o.DryRun) > 0, o.FieldManager
	case "delete", "deletecollection":
		var o metav1.DeleteOptions
		err = metainternalversionscheme.ParameterCodec.DecodeParameters(q, metav1.SchemeGroupVersion, &o)
		v.DryRun = len(o.DryRun) > 0
		// DeleteOptions has no fieldManager; the handler never reads one.
		v.FieldManager = ""
	}
	if err != nil {
		t.Fatalf("the API server's handler cannot decode %s: %v", r.URL, err)
	}
	return v
}

// policyView is what kubegate's operator modules were shown (the echo module's
// message).
func policyView(t *testing.T, body string) view {
	t.Helper()
	var st struct{ Message string }
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("not a Status: %s", body)
	}
	var r policy.Request
	if err := json.Unmarshal([]byte(strings.TrimPrefix(st.Message, "kubegate: ")), &r); err != nil {
		t.Fatalf("the echo module's message is not the policy input: %s", st.Message)
	}
	v := view{Verb: r.Verb, Namespace: r.Namespace, Resource: r.Resource, Subresource: r.Subresource, Name: r.Name,
		FieldSelector: r.FieldSelector, LabelSelector: r.LabelSelector, DryRun: r.DryRun, FieldManager: r.FieldManager}
	if r.Verb == "delete" || r.Verb == "deletecollection" {
		v.FieldManager = "" // as apiServerView: DeleteOptions has none
	}
	return v
}

// authzWith is kubegate authz on the sandbox configuration with operator modules.
func authzWith(t *testing.T, modules ...policy.Module) string {
	t.Helper()
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.LoadAgentConfig(sandboxConfig)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), sandboxAgent, cfg, modules)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extauthz.NewServer(sandboxAgent, &extauthz.Snapshot{Engine: engine, Authenticator: dir, Memberships: dir}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return serveGRPC(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) })
}

// TestPolicySeesWhatTheAPIServerParses sends attack queries through this data
// plane (Envoy's query rewrite after the Check: credential parameters erased,
// names re-sorted) twice: once to a kubegate authz whose operator module echoes
// its input, once to one that allows, in front of an upstream that parses what
// arrives with the API server's own code. For every query, either both sides read
// the same verb, name, selectors, dryRun and fieldManager, or kubegate refused it
// and nothing reached the upstream.
func TestPolicySeesWhatTheAPIServerParses(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	ext := realExtProc(t)
	echo := start(t, render(t, c, setup{authz: authzWith(t, policy.Module{File: "echo.rego", Source: echoModule}), extproc: ext, xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	allow := start(t, render(t, c, setup{authz: authzWith(t), extproc: ext, xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{})
	cl := client(t, c, false)

	const pods = "/k8s-proxy/api/v1/namespaces/demo/pods"
	tests := []struct {
		name, method, target string
		headers              []string // name, value pairs
		wantRefused          string   // X-Kubegate-Error; "" means forwarded
	}{
		// Forwarded: both sides must agree.
		{name: "watch", method: "GET", target: pods + "?watch=true"},
		{name: "watch=0 is a list", method: "GET", target: pods + "?watch=0"},
		{name: "watch without =", method: "GET", target: pods + "?watch"},
		{name: "field selector naming the object", method: "GET", target: pods + "?fieldSelector=metadata.name%3Dweb"},
		{name: "encoded values", method: "GET", target: pods + "?labelSelector=app+in+(web%2Cdb)&fieldSelector=spec.nodeName%3Dn%31"},
		{name: "credentials erased and names re-sorted", method: "GET", target: pods + "?watch=1&gitlab-agent-id=1&fieldSelector=metadata.name%3Dweb&gitlab-csrf-token=x&labelSelector=a"},
		{name: "dry-run create", method: "POST", target: pods + "?fieldManager=kubectl-create&dryRun=All"},
		{name: "patch", method: "PATCH", target: pods + "/web?fieldManager=kubectl-edit&force=true"},
		{name: "dry-run delete", method: "DELETE", target: pods + "/web?dryRun=All"},
		{name: "deletecollection by selector", method: "DELETE", target: pods + "?labelSelector=app%3Dweb"},
		{name: "exec commands in order", method: "POST", target: pods + "/web/exec?command=sh&stdout=true&command=-c&command=ls"},

		// Refused: the two would disagree, or a credential would travel on.
		{name: "repeated watch", method: "GET", target: pods + "?watch=false&watch=true", wantRefused: "ambiguous_query"},
		{name: "encoded watch sorts first", method: "GET", target: pods + "?watch=false&%77atch=true", wantRefused: "ambiguous_query"},
		{name: "repeated fieldSelector", method: "GET", target: pods + "?fieldSelector=metadata.name%3Dweb&fieldSelector=spec.nodeName%3Dn1", wantRefused: "ambiguous_query"},
		{name: "encoded fieldSelector", method: "GET", target: pods + "?fieldSelector=metadata.name%3Dweb&%66ieldSelector=spec.nodeName%3Dn1", wantRefused: "ambiguous_query"},
		{name: "repeated labelSelector", method: "DELETE", target: pods + "?labelSelector=a&labelSelector=b", wantRefused: "ambiguous_query"},
		{name: "repeated dryRun", method: "POST", target: pods + "?dryRun=All&dryRun=All", wantRefused: "ambiguous_query"},
		{name: "encoded dryRun", method: "POST", target: pods + "?%64ryRun=All", wantRefused: "ambiguous_query"},
		{name: "repeated fieldManager", method: "PATCH", target: pods + "/web?fieldManager=a&fieldManager=b", wantRefused: "ambiguous_query"},
		{name: "plus in a name", method: "GET", target: pods + "?watch+=true", wantRefused: "ambiguous_query"},
		{name: "empty name", method: "GET", target: pods + "?=x&watch=true", wantRefused: "ambiguous_query"},
		{name: "doubled &", method: "GET", target: pods + "?watch=true&&limit=1", wantRefused: "ambiguous_query"},
		{name: "encoded CSRF name", method: "GET", target: pods + "?gitlab%2Dcsrf%2Dtoken=leak", wantRefused: "ambiguous_query"},
		{name: "encoded agent id name", method: "GET", target: pods + "?gitlab-agent%2Did=1", wantRefused: "ambiguous_query"},
		{name: "CSRF name in upper case", method: "GET", target: pods + "?GITLAB-CSRF-TOKEN=leak", wantRefused: "ambiguous_query"},
		{name: "CSRF name with +", method: "GET", target: pods + "?gitlab-csrf-token+=leak", wantRefused: "ambiguous_query"},
		{name: "semicolon separator", method: "GET", target: pods + "?watch=false;watch=true", wantRefused: "bad_request"},
		{name: "access_token", method: "GET", target: pods + "?access_token=leak", wantRefused: "foreign_credential"},
		{name: "WebSocket bearer subprotocol", method: "GET", target: pods + "/web/exec?command=sh",
			headers: []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==",
				"Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.bGVhaw, v5.channel.k8s.io"}, wantRefused: "foreign_credential"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Authorization": {alicePAT()}}
			for i := 0; i+1 < len(tt.headers); i += 2 {
				h.Add(tt.headers[i], tt.headers[i+1])
			}
			before := len(rec.requests())
			echoStatus, echoHeader, echoBody := do(t, cl, tt.method, echo.URL()+tt.target, h)
			status, header, body := do(t, cl, tt.method, allow.URL()+tt.target, h)
			got := rec.requests()[before:]
			if tt.wantRefused != "" {
				for _, r := range []struct {
					status int
					header http.Header
					body   string
				}{{echoStatus, echoHeader, echoBody}, {status, header, body}} {
					if r.status != http.StatusBadRequest || r.header.Get(extauthz.HeaderError) != tt.wantRefused {
						t.Errorf("status %d %s, want 400 %s: %s", r.status, r.header.Get(extauthz.HeaderError), tt.wantRefused, r.body)
					}
				}
				if len(got) != 0 {
					t.Fatalf("a refused request reached the upstream: %s", got[0].URL)
				}
				return
			}
			if echoStatus != http.StatusForbidden || status != http.StatusOK || len(got) != 1 {
				t.Fatalf("echo %d (%s), allow %d (%s), %d upstream requests", echoStatus, echoBody, status, body, len(got))
			}
			up := got[0]
			if strings.Contains(up.URL.RawQuery, "gitlab-") {
				t.Errorf("a credential parameter reached the upstream: %s", up.URL.RawQuery)
			}
			kubegate, apiserver := policyView(t, echoBody), apiServerView(t, up)
			if kubegate != apiserver {
				t.Fatalf("the policy and the API server read %s %s differently:\n  policy     %+v\n  API server %+v\n(forwarded as %s)", tt.method, tt.target, kubegate, apiserver, up.URL.RequestURI())
			}
		})
	}
}
