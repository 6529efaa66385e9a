package dataplane

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocfiltv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"kubegate.dev/kubegate/envoy"
)

// editHCM edits the listener's connection manager and, through filter, each HTTP
// filter's typed_config (unpacked, edited, packed again).
func editHCM(t testing.TB, b *bootstrapv3.Bootstrap, hcmEdit func(*hcmv3.HttpConnectionManager), filter func(proto.Message)) {
	t.Helper()
	f := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	hcm := &hcmv3.HttpConnectionManager{}
	mustUnpack(t, f.GetTypedConfig(), hcm)
	if hcmEdit != nil {
		hcmEdit(hcm)
	}
	if filter != nil {
		for _, hf := range hcm.GetHttpFilters() {
			m, err := hf.GetTypedConfig().UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			filter(m)
			hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, m)}
		}
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
}

// addRoute puts r before the catch-all route.
func addRoute(t testing.TB, b *bootstrapv3.Bootstrap, r *routev3.Route) {
	t.Helper()
	editHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
		vh := h.GetRouteConfig().VirtualHosts[0]
		last := len(vh.Routes) - 1
		vh.Routes = append(append(vh.Routes[:last:last], r), vh.Routes[last])
	}, nil)
}

func clusterNamed(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// TestStartRefuses: a bootstrap `kubegate envoy validate` rejects is refused with
// its findings; one it accepts but that uses something the stand-in does not
// emulate is refused with the path of every such field, instead of running with a
// difference from Envoy nobody would notice.
func TestStartRefuses(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	base := setup{authz: "127.0.0.1:9001", extproc: "127.0.0.1:9002", xds: xds, apiserver: rec.url(), caFile: rec.caFile}
	tests := []struct {
		name string
		edit func(*bootstrapv3.Bootstrap)
		want []string
	}{
		{
			name: "fails kubegate's validation",
			edit: func(b *bootstrapv3.Bootstrap) {
				editHCM(t, b, nil, func(m proto.Message) {
					if a, ok := m.(*extauthzv3.ExtAuthz); ok {
						a.FailureModeAllow = true
					}
				})
			},
			want: []string{"kubegate envoy validate", "failure_mode_allow", envoy.RuleExtAuthzFailClosed},
		},
		{
			name: "connection manager fields",
			edit: func(b *bootstrapv3.Bootstrap) {
				editHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
					h.ServerName = "kubegate"
					h.Via = "kubegate"
					h.GenerateRequestId = wrapperspb.Bool(false)
				}, nil)
			},
			want: []string{".server_name:", ".via:", ".generate_request_id:", "not emulated"},
		},
		{
			name: "filter fields",
			edit: func(b *bootstrapv3.Bootstrap) {
				editHCM(t, b, nil, func(m proto.Message) {
					switch f := m.(type) {
					case *extauthzv3.ExtAuthz:
						f.IncludePeerCertificate = true
					case *extprocfiltv3.ExternalProcessor:
						f.RequestAttributes = []string{"request.path"}
					case *routerv3.Router:
						f.SuppressEnvoyHeaders = true
					}
				})
			},
			want: []string{"include_peer_certificate", "request_attributes", "suppress_envoy_headers"},
		},
		{
			name: "routing fields",
			edit: func(b *bootstrapv3.Bootstrap) {
				editHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
					h.GetRouteConfig().VirtualHosts[0].Routes[0].Match.CaseSensitive = wrapperspb.Bool(false)
				}, func(m proto.Message) {
					if f, ok := m.(*extprocfiltv3.ExternalProcessor); ok {
						f.DisableClearRouteCache = true
					}
				})
			},
			want: []string{"routes[0].match.case_sensitive", "disable_clear_route_cache", "not emulated"},
		},
		{
			name: "redirect fields",
			edit: func(b *bootstrapv3.Bootstrap) {
				addRoute(t, b, &routev3.Route{Name: "elsewhere", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/elsewhere"}},
					Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "example.com", PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/"}}}})
			},
			want: []string{".redirect.host_redirect:", "not emulated"},
		},
		{
			name: "a 3xx direct response",
			edit: func(b *bootstrapv3.Bootstrap) {
				addRoute(t, b, &routev3.Route{Name: "moved", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/moved"}},
					Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 301}}})
			},
			want: []string{".direct_response.status:", "a 201 or 3xx direct response", "not emulated"},
		},
		{
			name: "header_mutation fields",
			edit: func(b *bootstrapv3.Bootstrap) {
				editHCM(t, b, nil, func(m proto.Message) {
					if f, ok := m.(*headermutationv3.HeaderMutation); ok {
						f.MostSpecificHeaderMutationsWins = true
					}
				})
			},
			want: []string{"http_filters[0].typed_config.most_specific_header_mutations_wins", "not emulated"},
		},
		{
			name: "two endpoints in a cluster",
			edit: func(b *bootstrapv3.Bootstrap) {
				la := clusterNamed(b, envoy.AuthzCluster).GetLoadAssignment()
				la.Endpoints = append(la.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: la.Endpoints[0].LbEndpoints})
			},
			want: []string{"exactly one endpoint is emulated (load balancing is not), found 2"},
		},
		{
			name: "cluster and listener knobs",
			edit: func(b *bootstrapv3.Bootstrap) {
				clusterNamed(b, apiCluster).PerConnectionBufferLimitBytes = wrapperspb.UInt32(1 << 20)
				b.GetStaticResources().GetListeners()[0].TcpBacklogSize = wrapperspb.UInt32(128)
				b.LayeredRuntime = &bootstrapv3.LayeredRuntime{}
			},
			want: []string{"clusters[0].per_connection_buffer_limit_bytes", "listeners[0].tcp_backlog_size", "$.layered_runtime"},
		},
		{
			name: "client certificates to the API server",
			edit: func(b *bootstrapv3.Bootstrap) {
				cl := clusterNamed(b, apiCluster)
				u := &tlsv3.UpstreamTlsContext{}
				mustUnpack(t, cl.GetTransportSocket().GetTypedConfig(), u)
				u.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "x"}}}}
				cl.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, u)}
			},
			// kubegate envoy validate refuses it first (a front-proxy client
			// certificate would make the API server trust X-Remote-* headers).
			want: []string{"upstream-no-client-cert"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			s.editBootstrap = tt.edit
			dp, err := Start(context.Background(), render(t, c, s), Options{})
			if err == nil {
				dp.Close()
				t.Fatal("Start accepted the bootstrap")
			}
			t.Logf("refused:\n%v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestSettingsComeFromTheBootstrap: settings Validate leaves free are read from
// the bootstrap, not assumed: ext_proc's status_on_error, the listener's ALPN list,
// and the name of the SDS secret.
func TestSettingsComeFromTheBootstrap(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	_, xds := realXDS(t, agentToken)
	forbidden := &processorDouble{answer: continueWith(&extprocv3.HeaderMutation{RemoveHeaders: []string{"authorization"}})}
	base := setup{authz: (&authzDouble{}).serve(t), extproc: forbidden.serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}

	t.Run("ext_proc status_on_error", func(t *testing.T) {
		s := base
		s.editBootstrap = func(b *bootstrapv3.Bootstrap) {
			editHCM(t, b, nil, func(m proto.Message) {
				if p, ok := m.(*extprocfiltv3.ExternalProcessor); ok {
					p.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode_BadGateway}
				}
			})
		}
		dp := start(t, render(t, c, s), Options{})
		if status, _, _ := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusBadGateway {
			t.Errorf("status %d, want the configured 502", status)
		}
	})
	t.Run("ALPN without h2", func(t *testing.T) {
		s := base
		s.extproc = (&processorDouble{}).serve(t)
		s.editBootstrap = func(b *bootstrapv3.Bootstrap) {
			fc := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0]
			d := &tlsv3.DownstreamTlsContext{}
			mustUnpack(t, fc.GetTransportSocket().GetTypedConfig(), d)
			d.CommonTlsContext.AlpnProtocols = []string{"http/1.1"}
			fc.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, d)}
		}
		dp := start(t, render(t, c, s), Options{})
		tr := &http.Transport{TLSClientConfig: c.clientTLS(t, "h2", "http/1.1"), ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(dp.URL() + "/k8s-proxy/api")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 1 {
			t.Errorf("negotiated %s; the bootstrap offers only http/1.1", resp.Proto)
		}
	})
	t.Run("secret name", func(t *testing.T) {
		s := base
		s.extproc = (&processorDouble{}).serve(t)
		s.editBootstrap = func(b *bootstrapv3.Bootstrap) {
			editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
				g.Credential.Name = "another-secret"
				g.Credential.SdsConfig.InitialFetchTimeout = durationpbOf(100 * time.Millisecond)
			})
		}
		dp := start(t, render(t, c, s), Options{})
		if status, _, _ := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusUnauthorized {
			t.Errorf("status %d: kubegate xds serves no %q, so the injector has no credential", status, "another-secret")
		}
	})
}

// TestUnsupportedTable pins that every emulated message type exists in the
// compiled protos, so a renamed field cannot silently drop out of the allowlist.
func TestUnsupportedTable(t *testing.T) {
	for name, fields := range emulated {
		mt, err := protoregistryFind(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, f := range fields {
			if mt.Fields().ByName(protoName(f)) == nil {
				t.Errorf("%s has no field %s", name, f)
			}
		}
	}
}

func protoregistryFind(name protoreflect.FullName) (protoreflect.MessageDescriptor, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return nil, err
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a message", name)
	}
	return md, nil
}

func protoName(s string) protoreflect.Name { return protoreflect.Name(s) }

func durationpbOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
