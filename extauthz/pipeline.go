package extauthz

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// PathPrefix is where the gateway serves the Kubernetes API; Envoy's route strips
// it (prefix_rewrite) before the API server sees the request. ext_authz runs before
// the router, so it sees the prefixed path and strips it itself to parse the request
// exactly as the API server will.
const PathPrefix = contract.PathPrefix

// Snapshot is everything one agent's decisions depend on that can change while the
// service runs, for a one-agent Server (NewServer, Swap): a reload builds a new
// Snapshot and swaps it in whole. A Server of several agents keeps the same parts
// apart — each agent's engine, and the Shared identity source — and a request
// reads the engine of its agent and the shared parts once, at its start.
type Snapshot struct {
	Engine        *policy.Engine
	Authenticator identity.Authenticator
	Memberships   identity.MembershipResolver
}

// outcome is the pipeline's result, free of protobuf.
type outcome struct {
	reason    Reason
	message   string // shown to the client on denials
	credType  identity.AccessType
	credAgent int64      // the agent id the credential names (the log's agent; 0 when none)
	agent     *agentSlot // the served agent the request was routed to (nil: none yet)
	identity  *identity.Identity
	request   policy.Request
	decision  *policy.Decision // set when allowed
	cause     error            // for the log only; never shown, never holds a secret
}

func deny(r Reason, msg string) outcome { return outcome{reason: r, message: msg} }

// route is what one request is decided with: the served agent the credential
// named, that agent's engine in service, and the shared identity source as it was
// when the request started.
type route struct {
	slot   *agentSlot
	engine *policy.Engine
	shared *Shared
}

// check runs the pipeline of access.md §2–§4 for one request. Every early return is a
// denial; only the last line allows.
func check(ctx context.Context, s *Server, r *httpRequest) outcome {
	o, rt, memberships, ok := identify(ctx, s, r)
	if !ok {
		return o
	}
	d, err := rt.engine.Decide(ctx, policy.Input{Identity: *o.identity, Memberships: memberships, Request: o.request})
	if err != nil || !d.Allowed {
		o.reason, o.message, o.cause = Reason(d.Reason), d.Message, err
		if o.reason == "" || d.Allowed { // defensive: an error never allows
			o.reason = Reason(policy.ReasonPolicyError)
		}
		return o
	}
	o.reason, o.decision = ReasonAllowed, &d
	return o
}

// identify is the pipeline up to the decision: the caller authenticated
// (authenticate), the agent's engine in service, the caller's memberships of what
// that agent lists resolved. ok is false when it refused the request; o then says
// why. Check and the explain endpoint (explain.go) share it, so both refuse
// exactly alike.
func identify(ctx context.Context, s *Server, r *httpRequest) (o outcome, rt route, memberships []identity.Membership, ok bool) {
	o, rt, ok = authenticate(ctx, s, r)
	if !ok {
		return o, rt, nil, false
	}
	if rt.engine = rt.slot.engine.Load(); rt.engine == nil {
		// Known only to a caller with a valid credential: no enumeration.
		o.reason, o.message = ReasonAgentNotReady, fmt.Sprintf("the gateway cannot serve agent %d yet: its agent configuration has not loaded; try again later, and tell the gateway's operator if it persists", rt.slot.spec.Agent.ID)
		o.cause = errors.New("no valid agent configuration has been loaded for this agent (see the agent configuration errors in this log)")
		return o, rt, nil, false
	}
	memberships, err := rt.shared.Memberships.Memberships(ctx, o.identity.User, rt.engine.Listed())
	if err != nil {
		return o.with(identityDenial(identity.AsError(err))), rt, nil, false
	}
	return o, rt, memberships, true
}

// authenticate parses the request the way the API server will see it, reads the
// credential, picks the served agent it names and authenticates it against the
// shared identity source. rt.engine is not set.
//
// An agent id the gateway does not serve is refused only after the credential was
// checked, with exactly the answer of an invalid credential: a client can learn
// neither which agents exist (from a differing answer or an unsupported
// credential type's message) nor, by timing, that the check was skipped.
func authenticate(ctx context.Context, s *Server, r *httpRequest) (o outcome, rt route, ok bool) {
	if name, found := clientImpersonation(r.Header); found {
		return deny(ReasonClientImpersonation, fmt.Sprintf("impersonation through the gateway is not allowed: remove the %s header (and kubectl's --as/--as-group); the gateway sets the identity the cluster sees", name)), rt, false
	}
	req, query, o, ok := parseTarget(r)
	if !ok {
		return o, rt, false
	}
	if msg := identity.ForeignCredential(r.Header, query); msg != "" {
		return deny(ReasonForeignCredential, msg), rt, false
	}
	cred, err := identity.ParseCredential(r.Header, query)
	if err != nil {
		return identityDenial(identity.AsError(err)), rt, false
	}
	o = outcome{credType: cred.Type, request: req}
	if cred.Type == identity.AccessSessionCookie {
		// Before the session is opened: a cross-origin request costs nothing.
		if msg := sameOrigin(s.allowedOrigins(), r.Header); msg != "" {
			o.reason, o.message, o.credAgent = ReasonCrossOrigin, msg, cred.AgentID
			return o, rt, false
		}
	}
	if cred.AgentID == 0 {
		// The bare OIDC form names no agent: it is the gateway's own only when the
		// gateway serves one.
		if len(s.order) != 1 {
			o.reason, o.message = Reason(identity.ReasonMalformed), "this gateway serves several agents: send the ID token as oidc:<agent-id>:<id-token> (Authorization: Bearer oidc:<agent-id>:<id-token>) to say which"
			return o, rt, false
		}
		cred.AgentID = s.order[0].spec.Agent.ID
	}
	o.credAgent = cred.AgentID
	slot, served := s.agents[cred.AgentID]
	if !served {
		// Check the credential as if it named the first served agent. The answer is
		// refused below either way; what this changes is the identity cache, keyed
		// by agent: a valid token sent as pat:<n>:<token> for a million made-up n
		// would otherwise fill it with entries nobody can use, evicting real ones.
		cred.AgentID = s.order[0].spec.Agent.ID
	}
	rt.shared = s.shared.Load()
	id, accepted, err := rt.shared.Authenticator.Authenticate(ctx, cred)
	switch {
	case err != nil:
		return o.with(identityDenial(identity.AsError(err))), rt, false
	case !accepted || id == nil:
		o.reason, o.message = Reason(identity.ReasonUnsupported), fmt.Sprintf("this gateway does not accept %s credentials", cred.Type)
		return o, rt, false
	}
	switch {
	case !served:
		o.reason, o.message = Reason(identity.ReasonWrongAgent), identity.Unauthorized
		o.cause = fmt.Errorf("the credential names agent %d, which this gateway does not serve", o.credAgent)
		return o, rt, false
	case id.AgentID != cred.AgentID:
		// An authenticator must not hand back another agent's identity; if one
		// does, refuse rather than trust it.
		o.reason, o.message = Reason(identity.ReasonWrongAgent), identity.Unauthorized
		o.cause = fmt.Errorf("the identity source answered for agent %d to a credential for agent %d", id.AgentID, cred.AgentID)
		return o, rt, false
	}
	o.identity, o.agent, rt.slot = id, slot, slot
	return o, rt, true
}

// with copies a denial's reason, message and cause into o, keeping what o knows
// about the caller for the audit log.
func (o outcome) with(d outcome) outcome {
	o.reason, o.message, o.cause = d.reason, d.message, d.cause
	return o
}

func identityDenial(e *identity.Error) outcome {
	return outcome{reason: Reason(e.Reason), message: e.Public, cause: e.Err}
}

// clientImpersonation finds a client-supplied Impersonate-* header (access.md §4),
// or one of the API server's default front-proxy identity headers (X-Remote-User,
// X-Remote-Group, X-Remote-Extra-*, --requestheader-*-headers). The latter are
// trusted only from a request carrying the front-proxy client certificate, which the
// gateway never presents (kubegate envoy validate refuses one); refusing them too
// keeps a misconfiguration from turning them into a way to choose an identity.
func clientImpersonation(h identity.Header) (string, bool) {
	for name := range h {
		if strings.HasPrefix(name, contract.ImpersonatePrefix) || strings.HasPrefix(name, "x-remote-") {
			return name, true
		}
	}
	return "", false
}

// parseTarget strips the gateway prefix and parses the request the way the API
// server will see it: with the query Envoy will forward (query.go). The query it
// returns is the client's, credentials included, decoded.
//
// The Kubernetes API's own top-level paths (contract.IsAPIRootPath: /api, /apis,
// /version, /readyz, …) are served as they are, without the prefix, for
// kubectl's --raw, which ignores the server URL's path; Envoy routes them through
// the same chain with nothing to strip, so they are parsed from the path as the
// client sent it, under the same clean-path and query rules. Every other path
// outside the prefix is refused.
func parseTarget(r *httpRequest) (policy.Request, url.Values, outcome, bool) {
	path, rawQuery, _ := strings.Cut(r.Target, "?")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return policy.Request{}, nil, deny(ReasonBadRequest, "the query string is malformed: "+err.Error()), false
	}
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		if !contract.IsAPIRootPath(path) {
			return policy.Request{}, nil, deny(ReasonOutsidePrefix, fmt.Sprintf("the gateway serves the Kubernetes API under %s (and its top-level paths %s as they are): point the kubeconfig's cluster server at https://<gateway>%s", PathPrefix, strings.Join(contract.APIRootPaths, ", "), contract.ProxyPath)), false
		}
		rest = path[1:]
	}
	if msg := uncleanPath(rest); msg != "" {
		return policy.Request{}, nil, deny(ReasonBadRequest, msg), false
	}
	upstream, msg := upstreamQuery(rawQuery, query)
	if msg != "" {
		return policy.Request{}, nil, deny(ReasonAmbiguousQuery, msg), false
	}
	apiTarget := "/" + rest
	if upstream != "" {
		apiTarget += "?" + upstream
	}
	req, err := policy.ParseRequest(r.Method, apiTarget)
	if err != nil {
		return policy.Request{}, nil, deny(ReasonBadRequest, err.Error()), false
	}
	return req, query, outcome{}, true
}

// uncleanPath refuses paths the gateway and the API server might read differently:
// dot segments, empty segments and encoded slashes. Envoy normalises paths before
// ext_authz when configured to (kubegate envoy render does); this is the second line.
func uncleanPath(p string) string {
	lower := strings.ToLower(p)
	if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(p, `\`) {
		return "the request path contains an encoded slash or a backslash"
	}
	if p == "" {
		return ""
	}
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".", "..":
			if seg == "" && strings.HasSuffix(p, "/") && !strings.Contains(p, "//") {
				continue // a single trailing slash is harmless
			}
			return "the request path contains empty or dot segments"
		}
	}
	return ""
}
