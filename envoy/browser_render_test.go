package envoy

import (
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"kubegate.dev/kubegate/contract"
)

// browserOptions are testOptions with the browser listener.
func browserOptions(t *testing.T) Options {
	t.Helper()
	o := testOptions(t)
	o.Browser = mustAddr(t, "127.0.0.1:9004")
	return o
}

// routeNamed returns the route of the rendered virtual host with that name.
func routeNamed(t *testing.T, h *hcmv3.HttpConnectionManager, name string) *routev3.Route {
	t.Helper()
	for _, r := range h.GetRouteConfig().VirtualHosts[0].Routes {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no route %q", name)
	return nil
}

func withRouteNamed(t *testing.T, b *bootstrapv3.Bootstrap, name string, fn func(*routev3.Route)) {
	t.Helper()
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { fn(routeNamed(t, h, name)) })
}

// TestBrowserRender: --browser adds the cluster and three routes, and the result
// passes every rule; the routes are where and what the contract says.
func TestBrowserRender(t *testing.T) {
	b, err := Bootstrap(browserOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	if fs := CheckBootstrap(b); len(fs) > 0 {
		t.Fatalf("findings:\n%s", FormatFindings(fs))
	}
	bc := cluster(t, b, contract.BrowserCluster)
	if bc.TransportSocket != nil {
		t.Error("the browser cluster has a transport socket; the browser listener is plain HTTP/1.1")
	}
	edit(t, bc.TypedExtensionProtocolOptions[UpstreamHTTPOptionsKey], func(o *upstreamhttpv3.HttpProtocolOptions) {
		if len(o.HttpFilters) != 0 || o.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
			t.Errorf("browser cluster protocol options: %v", o)
		}
	})
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
		routes := h.GetRouteConfig().VirtualHosts[0].Routes
		if last := routes[len(routes)-1]; last.Name != NotFoundRouteName {
			t.Errorf("the catch-all is not last: %s", last.Name)
		}
		br := routeNamed(t, h, BrowserRouteName)
		if br.GetMatch().GetPrefix() != contract.BrowserPrefix || br.GetRoute().GetCluster() != contract.BrowserCluster || br.GetRoute().GetTimeout().AsDuration() != BrowserRouteTimeout {
			t.Errorf("browser route: %v", br)
		}
		if len(br.TypedPerFilterConfig) != 2 {
			t.Errorf("browser route per-filter config: %v", br.TypedPerFilterConfig)
		}
		for _, name := range []string{BrowserRedirectRouteName, RootRedirectRouteName} {
			if r := routeNamed(t, h, name); r.GetRedirect().GetPathRedirect() != contract.BrowserPrefix || !r.GetRedirect().GetStripQuery() {
				t.Errorf("%s: %v", name, r)
			}
		}
		for _, r := range routes {
			if r.GetRoute().GetClusterHeader() != "" && len(r.ResponseHeadersToRemove) != len(CORSResponseHeaders) {
				t.Errorf("API route %s removes %v", r.Name, r.ResponseHeadersToRemove)
			}
		}
	})
}

// TestRenderWithoutBrowserUnchanged: without --browser, nothing of the browser half
// is rendered (the compose file's golden, TestComposeEnvoyConfig, checks the bytes).
func TestRenderWithoutBrowserUnchanged(t *testing.T) {
	y, err := Render(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{contract.BrowserCluster, contract.BrowserPrefix, "access-control-", "ExtAuthzPerRoute", "redirect"} {
		if strings.Contains(string(y), s) {
			t.Errorf("rendered without --browser, the bootstrap contains %q", s)
		}
	}
}

func TestBrowserOptionsRefused(t *testing.T) {
	for _, tt := range []struct {
		name    string
		browser string
		allow   bool
		want    string
	}{
		{"every interface", "0.0.0.0:9004", false, "--browser 0.0.0.0:9004 is not loopback"},
		{"the authz gRPC address", "authz:9001", true, "is the address of --authz"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			o.AllowNonLoopback = tt.allow
			if !tt.allow {
				o.Authz, o.ExtProc, o.XDS = mustAddr(t, "127.0.0.1:9001"), mustAddr(t, "127.0.0.1:9002"), mustAddr(t, "127.0.0.1:9003")
			}
			o.Browser = mustAddr(t, tt.browser)
			_, err := Render(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render: %v; want %q", err, tt.want)
			}
		})
	}
}

// browserRuleCases break exactly one rule each, starting from a configuration
// rendered with --browser.
func browserRuleCases(t *testing.T) []struct {
	name   string
	rule   string
	mutate func(*bootstrapv3.Bootstrap)
} {
	authzOff := func() *anypb.Any {
		return mustAny(t, &extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})
	}
	procOff := func() *anypb.Any {
		return mustAny(t, &extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}})
	}
	return []struct {
		name   string
		rule   string
		mutate func(*bootstrapv3.Bootstrap)
	}{
		{"the browser route runs ext_proc", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) { delete(r.TypedPerFilterConfig, FilterExtProc) })
		}},
		{"the browser route runs both filters", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) { r.TypedPerFilterConfig = nil })
		}},
		{"the browser route takes every path", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) {
				r.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
			})
		}},
		{"the browser route without its slash", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) {
				r.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/ui"} // would take /uifoo
			})
		}},
		{"the browser route case-insensitive", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) { r.Match.CaseSensitive = wrapperspb.Bool(false) })
		}},
		{"the root redirect goes to another host", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, RootRedirectRouteName, func(r *routev3.Route) { r.GetRedirect().HostRedirect = "attacker.example" })
		}},
		{"the API route without both filters", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, RouteName, func(r *routev3.Route) {
				r.TypedPerFilterConfig = map[string]*anypb.Any{FilterExtAuthz: authzOff(), FilterExtProc: procOff()}
			})
		}},
		{"a top-level API route without both filters, generic FilterConfig", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, APIRootRoutePrefix+"/api", func(r *routev3.Route) {
				r.TypedPerFilterConfig = map[string]*anypb.Any{
					FilterExtAuthz: mustAny(t, &routev3.FilterConfig{Disabled: true}),
					FilterExtProc:  mustAny(t, &routev3.FilterConfig{Disabled: true})}
			})
		}},
		{"ext_authz disabled on the virtual host", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].TypedPerFilterConfig = map[string]*anypb.Any{FilterExtAuthz: authzOff()}
			})
		}},
		{"ext_proc disabled on the route configuration", RuleBrowserRoute, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().TypedPerFilterConfig = map[string]*anypb.Any{FilterExtProc: procOff()}
			})
		}},
		{"ext_authz check settings on the API route", RulePerRouteOverride, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, RouteName, func(r *routev3.Route) {
				r.TypedPerFilterConfig = map[string]*anypb.Any{FilterExtAuthz: mustAny(t, &extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
					CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: map[string]string{"skip": "yes"}}}})}
			})
		}},
		{"a credential injector on the browser cluster", RuleBrowserCluster, func(b *bootstrapv3.Bootstrap) {
			edit(t, cluster(t, b, contract.BrowserCluster).TypedExtensionProtocolOptions[UpstreamHTTPOptionsKey], func(o *upstreamhttpv3.HttpProtocolOptions) {
				fs, err := UpstreamFilters(TokenSecretFor(testAgentID+1), SDSConfigSource(XDSCluster))
				if err != nil {
					t.Fatal(err)
				}
				o.HttpFilters = fs
			})
		}},
		{"TLS to the browser cluster", RuleBrowserCluster, func(b *bootstrapv3.Bootstrap) {
			cluster(t, b, contract.BrowserCluster).TransportSocket = proto.Clone(cluster(t, b, testAPICluster).TransportSocket).(*corev3.TransportSocket)
		}},
		{"the browser cluster is the API server", RuleBrowserCluster, func(b *bootstrapv3.Bootstrap) {
			bc, api := cluster(t, b, contract.BrowserCluster), cluster(t, b, testAPICluster)
			bc.ClusterDiscoveryType = api.ClusterDiscoveryType
			for _, lle := range bc.LoadAssignment.Endpoints {
				for _, lbe := range lle.LbEndpoints {
					lbe.GetEndpoint().Address = proto.Clone(api.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address).(*corev3.Address)
				}
			}
		}},
		{"the browser cluster's destination from the request", RuleBrowserCluster, func(b *bootstrapv3.Bootstrap) {
			bc := cluster(t, b, contract.BrowserCluster)
			bc.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
			bc.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
			bc.LoadAssignment = nil
			bc.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{UseHttpHeader: true}}
		}},
		{"a CORS policy on the virtual host", RuleNoCORS, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].TypedPerFilterConfig = map[string]*anypb.Any{
					"envoy.filters.http.cors": mustAny(t, &corsv3.CorsPolicy{AllowCredentials: wrapperspb.Bool(true)})}
			})
		}},
		{"Access-Control-Allow-Origin added to API responses", RuleNoCORS, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, RouteName, func(r *routev3.Route) {
				r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "Access-Control-Allow-Origin", Value: "https://attacker.example"}}}
			})
		}},
		{"the API route keeps CORS headers", RuleAPICORSStrip, func(b *bootstrapv3.Bootstrap) {
			withRouteNamed(t, b, RouteName, func(r *routev3.Route) { r.ResponseHeadersToRemove = r.ResponseHeadersToRemove[1:] })
		}},
	}
}

// TestBrowserRouteMatches: the browser route may match under /ui/ in any of the
// forms that cannot take another path; anything wider is refused.
func TestBrowserRouteMatches(t *testing.T) {
	for _, tt := range []struct {
		name  string
		match *routev3.RouteMatch
		ok    bool
	}{
		{"prefix /ui/", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/ui/"}}, true},
		{"prefix /ui/assets/", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/ui/assets/"}}, true},
		{"path /ui/login", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/ui/login"}}, true},
		{"path_separated_prefix /ui", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/ui"}}, true},
		{"prefix /ui", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/ui"}}, false},
		{"prefix /", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, false},
		{"path /ui", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/ui"}}, false},
		{"path_separated_prefix /u", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/u"}}, false},
		{"regex", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/ui/.*"}}}, false},
		{"prefix /ui/, case-insensitive", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/ui/"}, CaseSensitive: wrapperspb.Bool(false)}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Bootstrap(browserOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			withRouteNamed(t, b, BrowserRouteName, func(r *routev3.Route) { r.Match = tt.match })
			fs := CheckBootstrap(b)
			if tt.ok != (len(fs) == 0) {
				t.Fatalf("want accepted: %v; findings:\n%s", tt.ok, FormatFindings(fs))
			}
		})
	}
}

// TestEachBrowserRuleAlone is TestEachRuleAlone for a configuration rendered with
// --browser.
func TestEachBrowserRuleAlone(t *testing.T) {
	breakEachRule(t, browserOptions(t), browserRuleCases(t))
}
