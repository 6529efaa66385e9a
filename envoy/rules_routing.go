package envoy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"

	"kubegate.dev/kubegate/contract"
)

// The rules that keep the choice of an agent's cluster kubegate authz's alone:
// a client's contract.HeaderUpstream is stripped first, ext_authz sets it and
// clears the route cache, ext_proc can neither set it nor re-route, every API
// route reads its cluster from it and answers 503 without it, and every cluster
// it can name injects its own agent's token.

var (
	headerMutationType = (&headermutationv3.HeaderMutation{}).ProtoReflect().Descriptor().FullName()
	upstreamCodecType  = (&upstreamcodecv3.UpstreamCodec{}).ProtoReflect().Descriptor().FullName()
)

// upstreamHeaderStrip: the first HTTP filter is header_mutation whose request
// mutations remove contract.HeaderUpstream and add or set nothing (no
// query-parameter mutations either: the filter is there to strip one header).
// HeaderMutation::decodeHeaders applies request_mutations in order
// (source/extensions/filters/http/header_mutation/header_mutation.cc); Envoy's
// header map remove drops every line of the name.
func (c *checker) upstreamHeaderStrip(h *hcmv3.HttpConnectionManager, p string) {
	c.earlyHeaderStrip(h, p)
	filters := h.GetHttpFilters()
	if len(filters) == 0 || typeName(filters[0].GetTypedConfig()) != headerMutationType {
		c.fs.add(p+".http_filters", RuleUpstreamHeaderStrip, "the first HTTP filter must be %s removing %s: otherwise a client's own copy reaches the route whenever kubegate authz sets none, and picks an agent's cluster", FilterHeaderMutation, contract.HeaderUpstream)
		return
	}
	fp := p + ".http_filters[0].typed_config"
	hm, ok := c.unpack(filters[0].GetTypedConfig(), fp).(*headermutationv3.HeaderMutation)
	if !ok {
		return
	}
	removes := false
	for i, m := range hm.GetMutations().GetRequestMutations() {
		mp := fmt.Sprintf("%s.mutations.request_mutations[%d]", fp, i)
		switch {
		case m.GetRemove() != "":
			if strings.EqualFold(m.GetRemove(), contract.HeaderUpstream) {
				removes = true
			}
		default:
			c.fs.add(mp, RuleUpstreamHeaderStrip, "the header_mutation in front only removes %s; it must not add or change request headers before ext_authz sees them", contract.HeaderUpstream)
		}
	}
	if !removes {
		c.fs.add(fp+".mutations.request_mutations", RuleUpstreamHeaderStrip, "does not remove %s: a client's copy would choose the cluster of a request kubegate authz did not route", contract.HeaderUpstream)
	}
	if hm.GetMutations().GetQueryParameterMutations() != nil || len(hm.GetMutations().GetResponseMutations()) > 0 {
		c.fs.add(fp+".mutations", RuleUpstreamHeaderStrip, "the header_mutation in front only removes %s; leave its other mutations unset", contract.HeaderUpstream)
	}
}

// earlyHeaderStrip: the HCM's early_header_mutation_extensions remove
// contract.HeaderUpstream before the route (and a cluster_header cluster) is
// picked, and do nothing else (EarlyUpstreamHeaderRemoval says why the HTTP
// filter alone is not enough).
func (c *checker) earlyHeaderStrip(h *hcmv3.HttpConnectionManager, p string) {
	removes := false
	for i, e := range h.GetEarlyHeaderMutationExtensions() {
		ep := fmt.Sprintf("%s.early_header_mutation_extensions[%d]", p, i)
		m, ok := c.unpack(e.GetTypedConfig(), ep+".typed_config").(*earlymutationv3.HeaderMutation)
		if !ok {
			c.fs.add(ep, RuleUpstreamHeaderStrip, "only %s removing %s is expected here: another early extension changes headers before routing, which nothing checks", EarlyHeaderMutation, contract.HeaderUpstream)
			continue
		}
		for j, mu := range m.GetMutations() {
			if strings.EqualFold(mu.GetRemove(), contract.HeaderUpstream) {
				removes = true
				continue
			}
			c.fs.add(fmt.Sprintf("%s.typed_config.mutations[%d]", ep, j), RuleUpstreamHeaderStrip, "an early header mutation other than removing %s changes what routing and ext_authz see; remove it", contract.HeaderUpstream)
		}
	}
	if !removes {
		c.fs.add(p+".early_header_mutation_extensions", RuleUpstreamHeaderStrip, "must remove %s (%s): the route and its cluster_header cluster are picked before the first HTTP filter runs, so a client's copy would choose the cluster of a request kubegate authz allows without changing a header", contract.HeaderUpstream, EarlyHeaderMutation)
	}
}

// extAuthzRouting: clear_route_cache, and the mutation rules let kubegate authz
// set contract.HeaderUpstream. Without clear_route_cache the route (and its
// cluster) is the one Envoy matched before ext_authz ran, when the header was
// stripped: every request would get the route's 503. Refused by the rules, the
// header is ignored or fails the request (disallow_is_error): closed, but nothing
// works.
func (c *checker) extAuthzRouting(a *extauthzv3.ExtAuthz, p string) {
	if !a.GetClearRouteCache() {
		c.fs.add(p+".clear_route_cache", RuleExtAuthzRouting, "must be true: the API routes read their cluster from %s, which kubegate authz sets; without clearing the route cache Envoy keeps the route it matched before, without the header, and answers 503", contract.HeaderUpstream)
	}
	r := a.GetDecoderHeaderMutationRules()
	if r == nil {
		return
	}
	prefix := c.b.GetHeaderPrefix()
	if prefix == "" {
		prefix = "x-envoy"
	}
	if ok, err := mutationAllowed(r, contract.HeaderUpstream, prefix); err == nil && !ok {
		c.fs.add(p+".decoder_header_mutation_rules", RuleExtAuthzRouting, "refuse setting %s, which kubegate authz sets on every allowed request to the agent's cluster: every request would fail; allow it (kubegate renders allow_expression %q)", contract.HeaderUpstream, ExtAuthzMutationExpression())
	}
}

// extProcNoRouting: kubegate extproc cannot set contract.HeaderUpstream (its
// mutation rules refuse it) and cannot make Envoy match the route again
// (route_cache_action RETAIN, or the older disable_clear_route_cache: "Setting to
// RETAIN is equivalent to setting the disable_clear_route_cache to true",
// ext_proc.proto). CLEAR re-matches after every header mutation, DEFAULT when the
// processor asks (CommonResponse.clear_route_cache).
func (c *checker) extProcNoRouting(e *extprocv3.ExternalProcessor, p string) {
	if r := e.GetMutationRules(); r != nil {
		prefix := c.b.GetHeaderPrefix()
		if prefix == "" {
			prefix = "x-envoy"
		}
		if ok, err := mutationAllowed(r, contract.HeaderUpstream, prefix); err == nil && ok {
			c.fs.add(p+".mutation_rules", RuleExtProcNoRouting, "allow setting %s: a compromised processor could send a request to another agent's cluster; allow only impersonate-*", contract.HeaderUpstream)
		}
	} // unset rules are ext-proc-mutation-rules' finding
	retain := e.GetRouteCacheAction() == extprocv3.ExternalProcessor_RETAIN || e.GetDisableClearRouteCache()
	if !retain {
		c.fs.add(p+".route_cache_action", RuleExtProcNoRouting, "%v lets a processor's answer make Envoy match the route again after ext_authz chose the agent's cluster; set RETAIN", e.GetRouteCacheAction())
	}
}

// routeCluster: a forwarding route's cluster comes from contract.HeaderUpstream
// alone, and a missing or unknown one is a 503.
func (c *checker) routeCluster(a *routev3.RouteAction, ap string, security map[string]string) {
	switch {
	case a.GetClusterHeader() != "":
		if !strings.EqualFold(a.GetClusterHeader(), contract.HeaderUpstream) {
			c.fs.add(ap+".cluster_header", RuleRouteClusterHeader, "%q: the cluster must come from %s, the header kubegate authz sets and the client's copy of which is stripped; any other header is the client's to choose", a.GetClusterHeader(), contract.HeaderUpstream)
		}
	case a.GetCluster() != "":
		c.fs.add(ap+".cluster", RuleRouteClusterHeader, "a static cluster %q sends every request of this route to one API server whatever agent kubegate authz chose; use cluster_header %s", a.GetCluster(), contract.HeaderUpstream)
	case a.GetWeightedClusters() != nil:
		for k, wc := range a.GetWeightedClusters().GetClusters() {
			wp := fmt.Sprintf("%s.weighted_clusters.clusters[%d]", ap, k)
			c.perFilter(wc.GetTypedPerFilterConfig(), wp, security, false)
			c.routeHeaders(wc.GetRequestHeadersToAdd(), wc.GetRequestHeadersToRemove(), wp)
		}
		c.fs.add(ap+".weighted_clusters", RuleRouteClusterHeader, "weighted clusters spread requests over API servers whatever agent kubegate authz chose; use cluster_header %s", contract.HeaderUpstream)
	default:
		c.fs.add(ap, RuleRouteClusterHeader, "the cluster is chosen by a plugin that cannot be checked; use cluster_header %s", contract.HeaderUpstream)
	}
	if a.GetClusterNotFoundResponseCode() != routev3.RouteAction_SERVICE_UNAVAILABLE {
		c.fs.add(ap+".cluster_not_found_response_code", RuleClusterNotFound, "%v: a request kubegate authz named no cluster for is the gateway's failure; answer SERVICE_UNAVAILABLE (503)", a.GetClusterNotFoundResponseCode())
	}
}

// agentsSample is a request to the agent list endpoint.
const agentsSample = contract.AgentsPath

// agentsRoute is explainRoute for the agent list endpoint.
func (c *checker) agentsRoute(vh *routev3.VirtualHost, vp string) {
	for r, rt := range vh.GetRoutes() {
		if rt.GetRoute() != nil || !routeMayMatch(rt.GetMatch(), agentsSample, contract.AgentsPath) {
			continue
		}
		if rt.GetDirectResponse() == nil {
			c.fs.add(fmt.Sprintf("%s.routes[%d]", vp, r), RuleAgentsRoute, "takes requests for the agent list endpoint %s, which kubegate authz answers; make it a direct_response (kubegate envoy render writes one)", contract.AgentsPath)
		}
		return
	}
}

// apiServerClusters checks every cluster contract.HeaderUpstream can name: every
// static cluster no gRPC service (ext_authz, ext_proc, SDS) uses. kubegate authz
// names only its agents' clusters, but the validator cannot know which names it
// uses, so each such cluster must be fit to carry an agent's request.
func (c *checker) apiServerClusters() {
	// The SDS clusters the upstream credential injectors read from are gRPC
	// services too; found first, without findings (upstreamCredential reports).
	sdsClusters := map[string]bool{}
	for _, cl := range c.clusters {
		a, ok := cl.GetTypedExtensionProtocolOptions()[UpstreamHTTPOptionsKey]
		if !ok {
			continue
		}
		o, err := a.UnmarshalNew()
		if err != nil {
			continue
		}
		po, _ := o.(interface{ GetHttpFilters() []*hcmv3.HttpFilter })
		if po == nil {
			continue
		}
		for _, f := range po.GetHttpFilters() {
			m, err := f.GetTypedConfig().UnmarshalNew()
			if err != nil {
				continue
			}
			ci, ok := m.(*credinjectorv3.CredentialInjector)
			if !ok {
				continue
			}
			gm, err := ci.GetCredential().GetTypedConfig().UnmarshalNew()
			if err != nil {
				continue
			}
			if g, ok := gm.(*genericv3.Generic); ok {
				for _, gs := range g.GetCredential().GetSdsConfig().GetApiConfigSource().GetGrpcServices() {
					sdsClusters[gs.GetEnvoyGrpc().GetClusterName()] = true
				}
				if g.GetCredential().GetSdsConfig().GetAds() != nil {
					for _, gs := range c.b.GetDynamicResources().GetAdsConfig().GetGrpcServices() {
						sdsClusters[gs.GetEnvoyGrpc().GetClusterName()] = true
					}
				}
			}
		}
	}
	var names []string
	for name := range c.clusters {
		if _, grpc := c.grpcRefs[name]; !grpc && !sdsClusters[name] && name != contract.BrowserCluster {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if cl, ok := c.clusters[contract.BrowserCluster]; ok {
		c.browserCluster(cl, c.cpath[contract.BrowserCluster], names)
	}
	if len(names) == 0 {
		c.fs.add("$.static_resources.clusters", RuleRouteClusterHeader, "no API server cluster: kubegate envoy render writes one per agent (%s<agent id>)", strings.TrimSuffix(APIServerCluster(0), "0"))
		return
	}
	secrets := map[string]string{} // secret name → cluster
	for _, name := range names {
		cl, p := c.clusters[name], c.cpath[name]
		c.upstream(cl, p)
		if s := c.upstreamCredential(cl, p); s != "" {
			if other, dup := secrets[s]; dup {
				c.fs.add(p, RuleUpstreamCredential, "clusters %q and %q inject the same secret %q: one agent's token would go to the other's API server; give each agent its own (%s<agent id>)", other, name, s, TokenSecretPrefix)
			} else {
				secrets[s] = name
			}
		}
	}
}

// upstreamCredential checks an API server cluster's upstream HTTP filters and
// returns the name of the secret its credential_injector reads ("" when none).
// Upstream filters run "for all HTTP streams which flow through this cluster"
// (http_protocol_options.proto, http_filters), after the router chose it, so the
// token injected is the chosen agent's.
func (c *checker) upstreamCredential(cl *clusterv3.Cluster, p string) string {
	o := c.protocolOptionsOf(cl, p)
	fp := fmt.Sprintf("%s.typed_extension_protocol_options[%q].http_filters", p, UpstreamHTTPOptionsKey)
	fs := o.GetHttpFilters()
	var got []string
	for _, f := range fs {
		got = append(got, filterLabel(f.GetName(), f.GetTypedConfig()))
	}
	if len(fs) != 2 || typeName(fs[0].GetTypedConfig()) != injectorType || typeName(fs[1].GetTypedConfig()) != upstreamCodecType {
		c.fs.add(fp, RuleUpstreamCredential, "cluster %q: upstream http_filters must be exactly %s (the agent's token) then %s (last); found [%s]", cl.GetName(), FilterCredentialInjector, FilterUpstreamCodec, strings.Join(got, ", "))
	}
	for j, f := range fs {
		jp := fmt.Sprintf("%s[%d]", fp, j)
		if f.GetConfigDiscovery() != nil {
			c.fs.add(jp+".config_discovery", RuleStaticConfig, "upstream filter %q comes from ECDS and cannot be checked; configure it inline", f.GetName())
		}
		if f.GetDisabled() || f.GetIsOptional() {
			c.fs.add(jp, RuleUpstreamCredential, "upstream filter %q is disabled or optional: the request could go without the agent's token, or with the client's Authorization", f.GetName())
		}
	}
	idx := slices.IndexFunc(fs, func(f *hcmv3.HttpFilter) bool { return typeName(f.GetTypedConfig()) == injectorType })
	if idx < 0 {
		return ""
	}
	ip := fmt.Sprintf("%s[%d].typed_config", fp, idx)
	ci, ok := c.unpack(fs[idx].GetTypedConfig(), ip).(*credinjectorv3.CredentialInjector)
	if !ok {
		return ""
	}
	c.credentialInjector(ci, ip)
	g, ok := c.unpack(ci.GetCredential().GetTypedConfig(), ip+".credential.typed_config").(*genericv3.Generic)
	if !ok {
		return ""
	}
	return g.GetCredential().GetName()
}
