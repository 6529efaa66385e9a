package envoy

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"kubegate.dev/kubegate/contract"
)

// testAgentID is the one agent of testOptions; testAPICluster its cluster.
const testAgentID = 7

var testAPICluster = APIServerCluster(testAgentID)

// testOptions renders for another machine: the files are not read.
func testOptions(t *testing.T) Options {
	t.Helper()
	o := DefaultOptions()
	o.CheckFiles = false
	o.TLSCertFile, o.TLSKeyFile = "/etc/kubegate/tls/tls.crt", "/etc/kubegate/tls/tls.key"
	o.AgentID = testAgentID
	o.APIServer, o.APIServerCA = "https://kubernetes.default.svc:443", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	o.Listen = mustAddr(t, "0.0.0.0:8443")
	o.Authz = mustAddr(t, "authz:9001")
	o.ExtProc = mustAddr(t, "extproc:9002")
	o.XDS = mustAddr(t, "xds:9003")
	o.AllowNonLoopback = true // service names, as between the containers of a pod's network namespace
	return o
}

func mustAddr(t *testing.T, s string) Addr {
	t.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRenderedConfigValidates(t *testing.T) {
	tests := []struct {
		name string
		edit func(*testing.T, *Options)
	}{
		{"dns names", func(*testing.T, *Options) {}},
		{"ip addresses", func(t *testing.T, o *Options) {
			o.APIServer = "https://10.96.0.1"
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "127.0.0.1:9001"), mustAddr(t, "[::1]:9002"), mustAddr(t, "127.0.0.1:9003")
		}},
		{"unix sockets", func(t *testing.T, o *Options) {
			o.Listen = mustAddr(t, "unix:///run/kubegate/envoy.sock")
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "unix:///run/kubegate/authz.sock"), mustAddr(t, "unix:///run/kubegate/extproc.sock"), mustAddr(t, "unix:///run/kubegate/xds.sock")
			o.Admin = "unix:///run/kubegate/admin.sock"
		}},
		{"no admin, other limits", func(t *testing.T, o *Options) {
			o.Admin = ""
			o.MaxHeadersCount, o.MaxRequestHeadersKB, o.MaxConnections = 100, 60, 10
			o.StreamIdleTimeout = 2 * MinStreamIdleTimeout
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(t, &o)
			y, err := Render(o)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if fs := Validate(y); len(fs) > 0 {
				t.Fatalf("rendered config has findings:\n%s", FormatFindings(fs))
			}
			// The fields envoy.md wants written although they are the defaults.
			for _, want := range []string{"failure_mode_allow: false", "request_body_mode: NONE", "response_body_mode: NONE", "allow_request_without_credential: false"} {
				if !strings.Contains(string(y), want) {
					t.Errorf("rendered YAML lacks %q", want)
				}
			}
		})
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a, err := Render(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := Render(testOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Fatal("two renders of the same options differ")
		}
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"http apiserver", func(o *Options) { o.APIServer = "http://k8s:6443" }, "scheme must be https"},
		{"apiserver with path", func(o *Options) { o.APIServer = "https://k8s:6443/prefix" }, "path, query or user"},
		{"apiserver not a url", func(o *Options) { o.APIServer = "k8s" }, "not a URL"},
		{"missing tls cert", func(o *Options) { o.TLSCertFile = "" }, "--tls-cert is required"},
		{"missing authz", func(o *Options) { o.Authz = Addr{} }, "--authz is required"},
		{"public admin", func(o *Options) { o.Admin = "0.0.0.0:9901" }, "loopback"},
		{"short idle timeout", func(o *Options) { o.StreamIdleTimeout = MinStreamIdleTimeout / 2 }, "--stream-idle-timeout"},
		{"headers kb over Envoy's range", func(o *Options) { o.MaxRequestHeadersKB = 9000 }, "1 to 8192"},
		{"zero authz timeout", func(o *Options) { o.AuthzTimeout = 0 }, "--authz-timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(&o)
			_, err := Render(o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Render error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    Addr
		wantErr string
	}{
		{in: "authz:9001", want: Addr{Host: "authz", Port: 9001}},
		{in: "[::1]:80", want: Addr{Host: "::1", Port: 80}},
		{in: "unix:///run/a.sock", want: Addr{Path: "/run/a.sock"}},
		{in: "unix://run/a.sock", wantErr: "absolute path"},
		{in: "grpc://a:1", wantErr: "only host:port"},
		{in: ":9001", wantErr: "has no host"},
		{in: "a:0", wantErr: "1 to 65535"},
		{in: "a:http", wantErr: "1 to 65535"},
		{in: "a", wantErr: "not host:port"},
		{in: "", wantErr: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAddr = %+v, %v; want %+v", got, err, tt.want)
			}
			if back, _ := ParseAddr(got.String()); back != got {
				t.Errorf("String() %q does not parse back", got.String())
			}
		})
	}
}

// TestRenderAgents: one API server cluster per agent, each with its own TLS
// (SNI, CA) and its own token secret in its upstream filters; the result passes
// Validate.
func TestRenderAgents(t *testing.T) {
	o := testOptions(t)
	o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
	o.Agents = []Agent{
		{ID: 3, APIServer: "https://one.example:6443", APIServerCA: "/ca/one.crt"},
		{ID: 4, APIServer: "https://10.0.0.2", APIServerCA: "/ca/two.crt"},
	}
	b, err := Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	if fs := CheckBootstrap(b); len(fs) > 0 {
		t.Fatalf("findings:\n%s", FormatFindings(fs))
	}
	for _, a := range o.Agents {
		t.Run(APIServerCluster(a.ID), func(t *testing.T) {
			var cl *clusterv3.Cluster
			for _, c := range b.StaticResources.Clusters {
				if c.Name == APIServerCluster(a.ID) {
					cl = c
				}
			}
			if cl == nil {
				t.Fatal("no cluster")
			}
			var u tlsv3.UpstreamTlsContext
			if err := cl.TransportSocket.GetTypedConfig().UnmarshalTo(&u); err != nil {
				t.Fatal(err)
			}
			if got := u.CommonTlsContext.GetValidationContext().GetTrustedCa().GetFilename(); got != a.APIServerCA {
				t.Errorf("trusted_ca %q, want %q", got, a.APIServerCA)
			}
			var po upstreamhttpv3.HttpProtocolOptions
			if err := cl.TypedExtensionProtocolOptions[UpstreamHTTPOptionsKey].UnmarshalTo(&po); err != nil {
				t.Fatal(err)
			}
			var ci credinjectorv3.CredentialInjector
			if err := po.HttpFilters[0].GetTypedConfig().UnmarshalTo(&ci); err != nil {
				t.Fatal(err)
			}
			var g genericv3.Generic
			if err := ci.Credential.GetTypedConfig().UnmarshalTo(&g); err != nil {
				t.Fatal(err)
			}
			if g.Credential.Name != TokenSecretFor(a.ID) {
				t.Errorf("secret %q, want %q", g.Credential.Name, TokenSecretFor(a.ID))
			}
		})
	}
	y, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(y), "cluster_not_found_response_code: SERVICE_UNAVAILABLE") {
		t.Error("the rendered YAML does not write cluster_not_found_response_code")
	}
}

func TestAgentOptionsRefused(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no agent id", func(o *Options) { o.AgentID = 0 }, "--agent-id is required"},
		{"both forms", func(o *Options) { o.Agents = []Agent{{ID: 1, APIServer: "https://a", APIServerCA: "/ca"}} }, "not both"},
		{"duplicate ids", func(o *Options) {
			o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
			o.Agents = []Agent{{ID: 1, APIServer: "https://a", APIServerCA: "/ca"}, {ID: 1, APIServer: "https://b", APIServerCA: "/ca"}}
		}, "appears twice"},
		{"agent without CA", func(o *Options) {
			o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
			o.Agents = []Agent{{ID: 1, APIServer: "https://a"}}
		}, "upstream.ca_file is required"},
		{"agent over http", func(o *Options) {
			o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
			o.Agents = []Agent{{ID: 1, APIServer: "http://a", APIServerCA: "/ca"}}
		}, "scheme must be https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(&o)
			if _, err := Render(o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestMeshRefusesSeveralAgents(t *testing.T) {
	o := meshOptions(t)
	o.AgentID, o.APIServer, o.APIServerCA = 0, "", ""
	o.Agents = []Agent{{ID: 1, APIServer: "https://a", APIServerCA: "/ca"}, {ID: 2, APIServer: "https://b", APIServerCA: "/ca"}}
	if _, err := MeshResources(o); err == nil || !strings.Contains(err.Error(), "serves one agent") {
		t.Fatalf("got %v, want the one-agent refusal", err)
	}
}

// TestRouteTable: every top-level API path of the contract and /k8s-proxy/ is a
// forwarding route whose cluster comes from the upstream header alone, with no
// per-route filter config (so ext_authz and ext_proc run for each); the explain
// and agent list endpoints are direct responses.
func TestRouteTable(t *testing.T) {
	routes := RouteConfig().VirtualHosts[0].Routes
	byName := map[string]*routev3.Route{}
	for _, r := range routes {
		byName[r.Name] = r
		if len(r.TypedPerFilterConfig) > 0 {
			t.Errorf("route %s has typed_per_filter_config", r.Name)
		}
	}
	want := []string{RouteName}
	for _, root := range contract.APIRootPaths {
		want = append(want, APIRootRoutePrefix+root)
	}
	for _, name := range want {
		r := byName[name]
		if r == nil {
			t.Errorf("no route %s", name)
			continue
		}
		a := r.GetRoute()
		if a.GetClusterHeader() != contract.HeaderUpstream || a.GetClusterNotFoundResponseCode() != routev3.RouteAction_SERVICE_UNAVAILABLE {
			t.Errorf("route %s: cluster_header %q, not found %v", name, a.GetClusterHeader(), a.GetClusterNotFoundResponseCode())
		}
	}
	for _, name := range []string{ExplainRouteName, AgentsRouteName, NotFoundRouteName} {
		if byName[name].GetDirectResponse() == nil {
			t.Errorf("route %s is not a direct_response", name)
		}
	}
}
