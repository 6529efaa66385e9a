package envoy

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"kubegate.dev/kubegate/contract"
)

// The browser half (issue 13): with --browser, everything under
// contract.BrowserPrefix goes to kubegate authz's browser listener (the login
// page, the session endpoint, the Dashboard's assets) with ext_authz and ext_proc
// disabled for that route only, and "/" and "/ui" redirect to "/ui/". The
// Dashboard's Kubernetes calls go to the API routes like kubectl's, through both
// filters. Without --browser none of this is rendered and the bootstrap is what it
// was before.

// Names of the browser routes.
const (
	// BrowserRouteName forwards contract.BrowserPrefix to contract.BrowserCluster.
	BrowserRouteName = "kubegate-browser"
	// BrowserRedirectRouteName redirects "/ui" to contract.BrowserPrefix.
	BrowserRedirectRouteName = "kubegate-browser-redirect"
	// RootRedirectRouteName redirects "/" to contract.BrowserPrefix.
	RootRedirectRouteName = "kubegate-root-redirect"
)

// BrowserRouteTimeout bounds a browser request (RouteAction.timeout: from the end
// of the downstream request to the end of the upstream response). Nothing under
// contract.BrowserPrefix streams: the login form, OIDC callback, session info and
// assets each answer at once, and the login's own OIDC token exchange is bounded
// well below this by kubegate authz.
const BrowserRouteTimeout = 30 * time.Second

// InternalHeaders are kubegate's own request headers (x-kubegate-*). A client's
// copy never reaches the browser listener: the route removes them
// (request_headers_to_remove), besides the early header mutation that removes
// contract.HeaderUpstream from every request.
var InternalHeaders = []string{contract.HeaderUpstream, contract.HeaderError}

// CORSResponseHeaders are the CORS response headers every API route removes
// (response_headers_to_remove), so that no API server's CORS configuration can
// open the API to another origin's scripts while a browser holds a session cookie
// for the gateway. kube-apiserver with --cors-allowed-origins answers a matching
// Origin with Access-Control-Allow-Origin (the Origin itself),
// -Allow-Methods, -Allow-Headers, -Expose-Headers and -Allow-Credentials
// (k8s.io/apiserver pkg/server/filters/cors.go, WithCORS, installed by
// DefaultBuildHandlerChain outside authentication, so it answers preflights
// too); Access-Control-Max-Age and -Allow-Private-Network are what other CORS
// implementations (an aggregated API server, a proxy in front) add.
var CORSResponseHeaders = []string{
	"access-control-allow-origin",
	"access-control-allow-credentials",
	"access-control-allow-methods",
	"access-control-allow-headers",
	"access-control-expose-headers",
	"access-control-max-age",
	"access-control-allow-private-network",
}

// BrowserCluster is the plain HTTP/1.1 cluster of kubegate authz's browser
// listener, built like the gRPC clusters (static or DNS, short connect timeout,
// the same circuit breakers) but with HTTP/1.1 and no upstream HTTP filters: no
// credential_injector, so the agent's token can never be sent there. Pooled
// connections are closed after UpstreamIdleTimeout, before a Go http.Server with
// a typical idle timeout closes them itself.
func BrowserCluster(a Addr, connectTimeout time.Duration, maxRequests uint32) (*clusterv3.Cluster, error) {
	opts, err := protocolOptions(false, UpstreamIdleTimeout, nil)
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                          contract.BrowserCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: a.discoveryType()},
		ConnectTimeout:                durationpb.New(connectTimeout),
		LoadAssignment:                loadAssignment(contract.BrowserCluster, a),
		TypedExtensionProtocolOptions: opts,
		CircuitBreakers:               thresholds(maxRequests),
	}, nil
}

// filtersDisabled is the typed_per_filter_config that turns ext_authz and ext_proc
// off for one route. ext_authz: Filter::getPerRouteFlags resolves the most
// specific ExtAuthzPerRoute and skips the check when it is disabled
// (source/extensions/filters/http/ext_authz/ext_authz.cc, Filter::decodeHeaders).
// ext_proc: Filter::mergePerRouteConfig turns a disabled ExtProcPerRoute into a
// processing mode that skips every callback (allDisabledMode), so no stream is
// opened (source/extensions/filters/http/ext_proc/ext_proc.cc).
func filtersDisabled() (map[string]*anypb.Any, error) {
	authz, err := typed(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})
	if err != nil {
		return nil, err
	}
	proc, err := typed(&extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}})
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{FilterExtAuthz: authz, FilterExtProc: proc}, nil
}

// browserRoutes are the routes of the browser half, in order:
//   - prefix "/ui/" (contract.BrowserPrefix) to contract.BrowserCluster. A prefix
//     with its trailing slash matches "/ui/" and below only: "/uifoo" and "/UI/"
//     (matching is case-sensitive) fall through to the catch-all route, which
//     ext_authz answers. path_separated_prefix "/ui" would also take "/ui" itself,
//     whose relative links would then resolve against "/".
//     The client's Cookie and Authorization stay (the login handler reads the
//     session cookie; ext_authz, which removes credentials on the API routes, does
//     not run here); kubegate's internal x-kubegate-* headers are removed.
//   - path "/ui" and path "/" redirected to "/ui/" (302, the query dropped), so a
//     person typing the gateway's address lands on the Dashboard. A redirect sends
//     nothing upstream.
//
// Normalisation happens before routing (normalize_path, merge_slashes, escaped
// slashes refused: HTTPConnectionManager), so "/ui/../k8s-proxy/..." is routed as
// "/k8s-proxy/...", through both filters.
func browserRoutes() ([]*routev3.Route, error) {
	var routes []*routev3.Route
	for _, r := range []*routev3.Route{
		{
			Name:  BrowserRouteName,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: contract.BrowserPrefix}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: contract.BrowserCluster},
				Timeout:          durationpb.New(BrowserRouteTimeout),
			}},
			RequestHeadersToRemove: append([]string(nil), InternalHeaders...),
		},
		redirectRoute(BrowserRedirectRouteName, "/ui"),
		redirectRoute(RootRedirectRouteName, "/"),
	} {
		off, err := filtersDisabled()
		if err != nil {
			return nil, err
		}
		r.TypedPerFilterConfig = off
		routes = append(routes, r)
	}
	return routes, nil
}

// redirectRoute redirects exactly path (the query is not part of a path match) to
// contract.BrowserPrefix on the same scheme and host: Http::Utility::newUri keeps
// the request's scheme and Host when no scheme, host or port redirect is set, and
// strip_query drops the query (source/common/http/utility.cc).
func redirectRoute(name, path string) *routev3.Route {
	return &routev3.Route{
		Name:  name,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: path}},
		Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
			PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: contract.BrowserPrefix},
			ResponseCode:         routev3.RedirectAction_FOUND,
			StripQuery:           true,
		}},
	}
}

// stripCORS makes an API route remove CORSResponseHeaders from its responses.
func stripCORS(r *routev3.Route) {
	r.ResponseHeadersToRemove = append(r.ResponseHeadersToRemove, CORSResponseHeaders...)
}

// checkBrowser: --browser, when given, is loopback or a unix socket unless
// --allow-non-loopback (checkPrivate), and is not one of the gRPC services.
func (o Options) checkBrowser() []error {
	if o.Browser == (Addr{}) {
		return nil
	}
	var errs []error
	for _, s := range []struct {
		addr Addr
		flag string
	}{{o.Authz, "--authz"}, {o.ExtProc, "--extproc"}, {o.XDS, "--xds"}} {
		if s.addr == o.Browser {
			errs = append(errs, fmt.Errorf("--browser %s is the address of %s: give the browser listener of kubegate authz (its --browser-listen), which serves plain HTTP/1.1, not gRPC", o.Browser, s.flag))
		}
	}
	return errs
}
