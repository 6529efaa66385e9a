package dataplane

import (
	"context"
	"net/http"
	"strings"
)

// What lets kubegate authz choose the agent's cluster: header_mutation strips a
// client's copy of the choice, ext_authz sets it and clears the route cache, the
// route reads its cluster from the header (cluster_header), and the chosen
// cluster's own upstream filters inject that agent's token.

// headerMutationConfig is envoy.filters.http.header_mutation with request header
// removals only (config.go refuses the rest).
type headerMutationConfig struct {
	removes []string // lower-case header names
}

// headerMutationFilter is HeaderMutation::decodeHeaders
// (source/extensions/filters/http/header_mutation/header_mutation.cc): the
// request mutations in order; a remove drops every line of the name
// (HeaderMap::remove).
type headerMutationFilter struct{ cfg *headerMutationConfig }

func (f *headerMutationFilter) decodeHeaders(_ context.Context, s *stream) *localReply {
	for _, name := range f.cfg.removes {
		s.headers.remove(name)
	}
	return nil
}

// earlyRemove is the HCM's early_header_mutation_extensions with the
// header_mutation extension's removals: "called before any routing, tracing, or
// any filter processing" (http_connection_manager.proto).
func earlyRemove(s *stream, names []string) {
	for _, n := range names {
		s.headers.remove(n)
	}
}

// matches is RouteEntryImplBase::matches for the path specifiers emulated
// (source/common/router/config_impl.cc): a prefix compares the whole :path (query
// included); path and path_separated_prefix compare the path without its query
// and fragment (Http::PathUtil::removeQueryAndFragment). path_separated_prefix
// matches the value itself or the value followed by "/" ("the path is the prefix,
// or the prefix followed by /", route_components.proto).
func (rt *route) matches(path string) bool {
	switch rt.match {
	case matchPath:
		return stripQuery(path) == rt.prefix
	case matchPathSeparatedPrefix:
		p := stripQuery(path)
		return p == rt.prefix || strings.HasPrefix(p, rt.prefix+"/")
	default:
		return strings.HasPrefix(path, rt.prefix)
	}
}

func stripQuery(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		return path[:i]
	}
	return path
}

// refreshRoute is ActiveStream::refreshCachedRoute: the route is matched from the
// headers as they are now, and a cluster_header route's cluster is read then
// (RouteEntryImplBase::clusterEntry returns a DynamicRouteEntry holding the
// header's first value, source/common/router/config_impl.cc). The HCM does it
// once before the first filter (ActiveStream::decodeHeaders,
// source/common/http/conn_manager_impl.cc); a later change of the header moves
// nothing until a filter clears the route cache.
func (s *stream) refreshRoute() {
	s.route = matchRoute(s.vhosts, s.headers)
	s.cluster = ""
	if s.route == nil {
		return
	}
	s.cluster = s.route.cluster
	if s.route.clusterHeader != "" {
		s.cluster = s.headers.first(s.route.clusterHeader)
	}
}

// clearRouteCache is the filter callbacks' clearRouteCache: the route is matched
// again, from the headers as they are now (Envoy re-matches lazily, on the next
// route() call; the router's is the next one here).
func (s *stream) clearRouteCache() {
	if s.vhosts != nil {
		s.refreshRoute()
	}
}

// upstreamClusterFor is the router's cluster choice (Filter::decodeHeaders,
// source/common/router/router.cc): route_entry->clusterName(), which for
// cluster_header is the first value of that header when the route was last
// matched ("If the header appears multiple times only the first value is used",
// route_components.proto; refreshRoute), then the thread-local cluster of that
// name. None (the header missing, or naming no
// cluster) is a local reply with the route's cluster_not_found_response_code,
// details cluster_not_found and response flag NC, before any upstream filter runs.
func (r *router) upstreamClusterFor(rt *route, s *stream) (*upstreamCluster, *localReply) {
	name := s.cluster
	c, ok := r.clusters[name]
	if !ok || name == "" {
		status := rt.notFound
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		return nil, &localReply{status: status, details: "cluster_not_found", flags: "NC"}
	}
	if c.grpc {
		// A header naming one of the gRPC service clusters: Envoy would send the
		// request there over HTTP/2, which the stand-in does not emulate.
		r.log.Error("test data plane: a request was routed to an HTTP/2 (gRPC) cluster, which is not emulated", "cluster", name)
		return nil, &localReply{status: http.StatusServiceUnavailable, body: "test data plane: routing to the HTTP/2 cluster " + name + " is not emulated\n", details: "not_emulated"}
	}
	return c, nil
}
