package envoy

import (
	"fmt"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"kubegate.dev/kubegate/contract"
)

// The rules of the browser half (browser.go): the only requests that skip
// ext_authz and ext_proc are those of a route to contract.BrowserCluster (or a
// redirect or direct response, which send nothing upstream), that cluster can
// never carry an agent's token or be an API server, and no CORS configuration
// can open the API to another origin.
const (
	RuleBrowserRoute   = "browser-route"
	RuleBrowserCluster = "browser-cluster"
	RuleNoCORS         = "no-cors"
	RuleAPICORSStrip   = "api-cors-strip"
)

var browserRuleDocs = []RuleDoc{
	{RuleBrowserRoute, "a route that disables ext_authz or ext_proc (ExtAuthzPerRoute/ExtProcPerRoute disabled, or FilterConfig disabled) disables both, on the route itself (never a virtual host, the route configuration or a weighted cluster), and either goes to the static cluster " + contract.BrowserCluster + " matching only under " + contract.BrowserPrefix + ", or is a redirect that changes only the path, or a direct_response; a route to " + contract.BrowserCluster + " disables both"},
	{RuleBrowserCluster, "the cluster " + contract.BrowserCluster + " has a fixed endpoint (STATIC or DNS, not ORIGINAL_DST, EDS or a custom type), is plain HTTP/1.1 with no upstream filter but upstream_codec (no credential_injector: an agent token never goes there), no TLS (kube-apiserver serves only TLS, so it cannot be an API server), no endpoint of an API server cluster, and no gRPC service uses it"},
	{RuleNoCORS, "no CORS anywhere: no envoy.filters.http.cors filter or CorsPolicy (virtual host, route, typed_per_filter_config), and no response header Access-Control-* added (routes, virtual hosts, local replies)"},
	{RuleAPICORSStrip, "with a browser route, every forwarding API route removes the CORS response headers (" + strings.Join(CORSResponseHeaders, ", ") + ") on the route, its virtual host or the route configuration, so no API server CORS setting (kube-apiserver --cors-allowed-origins) opens the API to another origin's scripts while a browser holds a session cookie"},
}

func init() { RuleDocs = append(RuleDocs, browserRuleDocs...) }

var (
	corsFilterType      = (&corsv3.Cors{}).ProtoReflect().Descriptor().FullName()
	corsPolicyType      = (&corsv3.CorsPolicy{}).ProtoReflect().Descriptor().FullName()
	routeCorsPolicyType = (&routev3.CorsPolicy{}).ProtoReflect().Descriptor().FullName()
)

// filtersOff says which of ext_authz and ext_proc one route's
// typed_per_filter_config disables.
type filtersOff struct{ authz, proc bool }

func (f filtersOff) any() bool { return f.authz || f.proc }

// disables reports whether a per-route config of a security filter only turns it
// off: ExtAuthzPerRoute{disabled: true} ("Disable the ext auth filter for this
// particular vhost or route", ext_authz.proto; Filter::getPerRouteFlags),
// ExtProcPerRoute{disabled: true} (Filter::mergePerRouteConfig: every callback
// skipped), or the generic FilterConfig{disabled: true} with no config, with which
// the filter manager does not run the filter at all (route_components.proto
// FilterConfig.disabled). Any other per-route config is per-route-override's.
func disables(a *anypb.Any, what string) bool {
	m, err := a.UnmarshalNew()
	if err != nil {
		return false
	}
	switch x := m.(type) {
	case *extauthzv3.ExtAuthzPerRoute:
		return what == "ext_authz" && proto.Equal(x, &extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})
	case *extprocv3.ExtProcPerRoute:
		return what == "ext_proc" && proto.Equal(x, &extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}})
	case *routev3.FilterConfig:
		return (what == "ext_authz" || what == "ext_proc") && x.GetDisabled() && x.GetConfig() == nil && !x.GetIsOptional()
	}
	return false
}

// browserRoute checks a route by which of ext_authz and ext_proc it disables.
// Without both, a request reaches its cluster unauthenticated and without
// impersonation: only the browser listener, which authenticates its own
// requests, may receive such a request.
func (c *checker) browserRoute(rt *routev3.Route, off filtersOff, rp string) {
	toBrowser := rt.GetRoute().GetCluster() == contract.BrowserCluster
	if !off.any() {
		if toBrowser {
			c.fs.add(rp+".typed_per_filter_config", RuleBrowserRoute, "routes to %s with ext_authz and ext_proc running: kubegate authz answers every %s request with a 400 (it serves the Kubernetes API); disable both for this route (kubegate envoy render --browser does)", contract.BrowserCluster, contract.BrowserPrefix)
		}
		return
	}
	if off.authz != off.proc {
		on, offName := "ext_proc", "ext_authz"
		if off.proc {
			on, offName = "ext_authz", "ext_proc"
		}
		c.fs.add(rp+".typed_per_filter_config", RuleBrowserRoute, "disables %s but not %s: a route skips both filters (the browser route) or neither", offName, on)
	}
	switch {
	case rt.GetRedirect() != nil:
		r := rt.GetRedirect()
		if r.GetHostRedirect() != "" || r.GetPortRedirect() != 0 || r.GetSchemeRedirect() != "" || r.GetHttpsRedirect() {
			c.fs.add(rp+".redirect", RuleBrowserRoute, "a redirect without ext_authz and ext_proc may only change the path (path_redirect): sending the browser to another host, port or scheme is an open redirect")
		}
	case rt.GetDirectResponse() != nil:
	case toBrowser:
		if !underBrowserPrefix(rt.GetMatch()) {
			c.fs.add(rp+".match", RuleBrowserRoute, "a route to %s without ext_authz and ext_proc must match only under %s (prefix %q, a path below it, or path_separated_prefix \"/ui\"), case-sensitively: anything else it takes skips both filters", contract.BrowserCluster, contract.BrowserPrefix, contract.BrowserPrefix)
		}
	default:
		target := "its cluster"
		switch a := rt.GetRoute(); {
		case a.GetClusterHeader() != "":
			target = "the cluster named by " + a.GetClusterHeader() + " (an agent's API server)"
		case a.GetCluster() != "":
			target = fmt.Sprintf("cluster %q", a.GetCluster())
		case a.GetWeightedClusters() != nil:
			target = "weighted clusters"
		}
		c.fs.add(rp, RuleBrowserRoute, "skips ext_authz or ext_proc and sends requests to %s unauthenticated and without impersonation; only a route to the static cluster %s, a redirect or a direct_response may disable them", target, contract.BrowserCluster)
	}
}

// underBrowserPrefix: a case-sensitive prefix starting with BrowserPrefix, an exact
// path below it, or path_separated_prefix "/ui" (or below).
func underBrowserPrefix(m *routev3.RouteMatch) bool {
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return false
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		return strings.HasPrefix(ps.Prefix, contract.BrowserPrefix)
	case *routev3.RouteMatch_Path:
		return strings.HasPrefix(ps.Path, contract.BrowserPrefix)
	case *routev3.RouteMatch_PathSeparatedPrefix:
		// "/ui" matches "/ui" and "/ui/..." but not "/uifoo" (route_components.proto
		// path_separated_prefix).
		return ps.PathSeparatedPrefix == strings.TrimSuffix(contract.BrowserPrefix, "/") || strings.HasPrefix(ps.PathSeparatedPrefix, contract.BrowserPrefix)
	}
	return false
}

// browserCluster checks contract.BrowserCluster, the one cluster requests reach
// without ext_authz and ext_proc.
func (c *checker) browserCluster(cl *clusterv3.Cluster, p string, apiClusters []string) {
	if path, grpc := c.grpcRefs[cl.GetName()]; grpc {
		c.fs.add(path, RuleBrowserCluster, "%s is the browser listener's plain HTTP/1.1 cluster, not a gRPC service", contract.BrowserCluster)
	}
	o := c.protocolOptionsOf(cl, p)
	for j, f := range o.GetHttpFilters() {
		if typeName(f.GetTypedConfig()) != upstreamCodecType {
			c.fs.add(fmt.Sprintf("%s.typed_extension_protocol_options[%q].http_filters[%d]", p, UpstreamHTTPOptionsKey, j), RuleBrowserCluster, "%s takes no upstream filter but upstream_codec: requests reach it without ext_authz, and a credential_injector here would hand an agent's token to the browser listener (and to whoever can open /ui/)", contract.BrowserCluster)
		}
	}
	if c.isHTTP2(cl, p) || o.GetAutoConfig() != nil || o.GetUseDownstreamProtocolConfig() != nil {
		c.fs.add(p+".typed_extension_protocol_options", RuleBrowserCluster, "kubegate authz's browser listener speaks HTTP/1.1: use explicit_http_config.http_protocol_options")
	}
	if cl.GetTransportSocket() != nil || len(cl.GetTransportSocketMatches()) > 0 {
		c.fs.add(p+".transport_socket", RuleBrowserCluster, "the browser listener is plain HTTP/1.1 on loopback (or a unix socket); with TLS this cluster could be an API server (kube-apiserver serves only TLS), which would then get requests no filter checked")
	}
	switch {
	case cl.GetClusterType() != nil:
		c.fs.add(p+".cluster_type", RuleBrowserCluster, "a custom cluster type (%s) can send requests wherever it likes, unchecked; use a STATIC or STRICT_DNS cluster with the browser listener's address", cl.GetClusterType().GetName())
	case cl.GetType() != clusterv3.Cluster_STATIC && cl.GetType() != clusterv3.Cluster_STRICT_DNS && cl.GetType() != clusterv3.Cluster_LOGICAL_DNS:
		// ORIGINAL_DST goes where the connection (or, with use_http_header, the
		// client's x-envoy-original-dst-host header) says; EDS where a server
		// says: either could be an API server, reached without the filters.
		c.fs.add(p+".type", RuleBrowserCluster, "%v: the browser cluster's endpoint must be fixed in the bootstrap (STATIC or STRICT_DNS with the browser listener's address); otherwise requests that skipped ext_authz could be sent elsewhere, an API server included", cl.GetType())
	}
	mine := endpoints(cl)
	for _, name := range apiClusters {
		for _, e := range endpoints(c.clusters[name]) {
			if slices.Contains(mine, e) {
				c.fs.add(p+".load_assignment", RuleBrowserCluster, "%s reaches %s, the endpoint of API server cluster %q: requests to %s skip ext_authz and ext_proc", contract.BrowserCluster, e, name, contract.BrowserPrefix)
			}
		}
	}
}

// endpoints are a cluster's endpoint addresses, as host:port or a pipe path.
func endpoints(cl *clusterv3.Cluster) []string {
	var out []string
	for _, lle := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			a := lbe.GetEndpoint().GetAddress()
			if pipe := a.GetPipe(); pipe != nil {
				out = append(out, "unix://"+pipe.GetPath())
				continue
			}
			sa := a.GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", strings.ToLower(sa.GetAddress()), sa.GetPortValue()))
		}
	}
	return out
}

// apiCORSStrip: every forwarding API route removes CORSResponseHeaders at some
// level. Envoy applies response_headers_to_remove of the route, its virtual host
// and the route configuration (RouteEntryImplBase::finalizeResponseHeaders, each
// level's HeaderParser removing before it adds), so any level will do.
func (c *checker) apiCORSStrip(rc *routev3.RouteConfiguration, vh *routev3.VirtualHost, rt *routev3.Route, rp string) {
	removed := map[string]bool{}
	for _, l := range [][]string{rc.GetResponseHeadersToRemove(), vh.GetResponseHeadersToRemove(), rt.GetResponseHeadersToRemove()} {
		for _, h := range l {
			removed[strings.ToLower(h)] = true
		}
	}
	var missing []string
	for _, h := range CORSResponseHeaders {
		if !removed[h] {
			missing = append(missing, h)
		}
	}
	if len(missing) > 0 {
		c.fs.add(rp+".response_headers_to_remove", RuleAPICORSStrip, "this API route does not remove %s from the API server's responses: with kube-apiserver --cors-allowed-origins, another origin's script could read the API with the user's session cookie; remove them (kubegate envoy render --browser does)", strings.Join(missing, ", "))
	}
}

// noCORS refuses any CORS configuration, found anywhere in the bootstrap.
func (c *checker) noCORS(m protoreflect.Message, p string) {
	if x, ok := m.Interface().(*corev3.HeaderValueOption); ok {
		if k := strings.ToLower(x.GetHeader().GetKey()); strings.HasPrefix(k, "access-control-") && !strings.Contains(p, "request_headers_to_add") {
			c.fs.add(p, RuleNoCORS, "adds the CORS response header %q: no response of the gateway opens it to another origin", x.GetHeader().GetKey())
		}
	}
	switch m.Descriptor().FullName() {
	case corsFilterType:
		c.fs.add(p, RuleNoCORS, "the CORS filter answers preflights and adds Access-Control-* headers, which would let another origin's scripts call the API with the user's session cookie; remove it (the Dashboard is served from the gateway's own origin)")
	case corsPolicyType, routeCorsPolicyType:
		c.fs.add(p, RuleNoCORS, "a CORS policy would let another origin's scripts call the API with the user's session cookie; remove it (the Dashboard is served from the gateway's own origin)")
	}
}
