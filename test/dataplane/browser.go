package dataplane

import (
	"fmt"
	"net/http"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// The browser half of kubegate's bootstrap (`kubegate envoy render --browser`): a
// route to the browser listener's plain HTTP/1.1 cluster with ext_authz and
// ext_proc disabled for that route, redirects to it, the route's own request and
// response header removals, and a finite route timeout (router.go).

// perFilterDisabled reads a route's typed_per_filter_config: only
// ExtAuthzPerRoute{disabled: true} and ExtProcPerRoute{disabled: true} are
// emulated (support.go refuses their other fields, and the config at a virtual
// host or route configuration).
//   - ext_authz: Filter::decodeHeaders asks getPerRouteFlags, which resolves the
//     most specific FilterConfigPerRoute and skips the check when it is disabled
//     (source/extensions/filters/http/ext_authz/ext_authz.cc).
//   - ext_proc: Filter::mergePerRouteConfig makes a disabled ExtProcPerRoute a
//     processing mode that skips every callback (allDisabledMode), so no stream is
//     opened and the request goes on untouched
//     (source/extensions/filters/http/ext_proc/ext_proc.cc).
func (p *parser) perFilterDisabled(m map[string]*anypb.Any, path string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := map[string]string{}
	for name, a := range m {
		fp := fmt.Sprintf("%s[%q]", path, name)
		switch x := p.unpack(a, fp).(type) {
		case *extauthzv3.ExtAuthzPerRoute:
			if !x.GetDisabled() {
				p.fail(fp, "only disabled: true is emulated for ExtAuthzPerRoute")
			}
			out[name] = "ext_authz"
		case *extprocv3.ExtProcPerRoute:
			if !x.GetDisabled() {
				p.fail(fp, "only disabled: true is emulated for ExtProcPerRoute")
			}
			out[name] = "ext_proc"
		case nil:
		default:
			p.fail(fp, "a per-route %s is not emulated (only ExtAuthzPerRoute and ExtProcPerRoute disabled)", x.ProtoReflect().Descriptor().FullName())
		}
	}
	return out
}

// perFilterNames checks that each route's per-filter config names a filter of the
// chain of its kind: Envoy refuses a per-filter config of the wrong type for the
// filter, and one for a filter the chain lacks is never read.
func (p *parser) perFilterNames(hc *hcmConfig, path string) {
	kinds := map[string]string{}
	for _, f := range hc.filters {
		switch {
		case f.extAuthz != nil:
			kinds[f.name] = "ext_authz"
		case f.extProc != nil:
			kinds[f.name] = "ext_proc"
		}
	}
	for _, vh := range hc.routes {
		for _, r := range vh.routes {
			for name, kind := range r.disabled {
				if kinds[name] != kind {
					p.fail(path+".route_config", "route %q disables %q as %s, but the HTTP filter of that name is not a %s filter", r.name, name, kind, kind)
				}
			}
		}
	}
}

// redirectConfig is a RedirectAction with a path_redirect, kept on the request's
// scheme, host and port.
type redirectConfig struct {
	path       string
	stripQuery bool
	status     int
}

// redirect reads a RedirectAction: path_redirect, strip_query and response_code
// are emulated; host, port and scheme redirects and path rewrites are not.
func (p *parser) redirect(r *routev3.RedirectAction, path string) *redirectConfig {
	c := &redirectConfig{path: r.GetPathRedirect(), stripQuery: r.GetStripQuery()}
	if c.path == "" {
		p.fail(path, "only path_redirect is emulated")
	}
	// route_components.proto RedirectAction.RedirectResponseCode: MOVED_PERMANENTLY
	// (301, the default), FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT.
	c.status = map[routev3.RedirectAction_RedirectResponseCode]int{
		routev3.RedirectAction_MOVED_PERMANENTLY:  http.StatusMovedPermanently,
		routev3.RedirectAction_FOUND:              http.StatusFound,
		routev3.RedirectAction_SEE_OTHER:          http.StatusSeeOther,
		routev3.RedirectAction_TEMPORARY_REDIRECT: http.StatusTemporaryRedirect,
		routev3.RedirectAction_PERMANENT_REDIRECT: http.StatusPermanentRedirect,
	}[r.GetResponseCode()]
	return c
}

// reply is the router's answer to a redirect route (router.cc Filter::decodeHeaders,
// direct response entry): the status and a Location of Http::Utility::newUri —
// with no scheme, host or port redirect, the request's :scheme and Host as they
// are (processRequestHost strips a port only when a port or scheme redirect is
// set), then path_redirect; a path_redirect without a query keeps the request's
// query unless strip_query (source/common/http/utility.cc). The body is empty.
func (c *redirectConfig) reply(h *headerMap) *localReply {
	path := c.path
	if _, q, ok := strings.Cut(h.first(":path"), "?"); ok && !strings.Contains(c.path, "?") && !c.stripQuery {
		path += "?" + q
	}
	loc := h.first(":scheme") + "://" + h.first(":authority") + path
	return &localReply{status: c.status, details: "direct_response",
		headers: []headerMutation{{key: "location", value: loc, action: actionSet}}}
}

func lowerAll(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}
