package extauthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// AgentsPath is the gateway's agent list endpoint (contract.AgentsPath).
const AgentsPath = contract.AgentsPath

// ReasonAgentsListed is the outcome of an answered agent list request.
const ReasonAgentsListed Reason = "agents_listed"

// agentsRequest reports whether a request target is for the agent list endpoint.
func agentsRequest(target string) bool {
	path, _, _ := strings.Cut(target, "?")
	return path == AgentsPath
}

// agentsCheck answers GET AgentsPath: the agents whose user_access lets the caller
// in, like GitLab's userAccessAuthorizedAgents. The caller is authenticated as for
// any request (authenticate, on the request as it would be sent under
// PathPrefix, so it is refused exactly alike); any agent id the gateway serves
// will do in the credential, since the identity source is shared. Then, for each
// agent in service, the caller's memberships of what that agent lists are
// resolved and the agent's own engine says whether they qualify (Engine.Admits,
// the rule every decision starts with). An agent the caller cannot reach, or one
// with no configuration in service, is never named.
func agentsCheck(ctx context.Context, s *Server, r *httpRequest) (outcome, *authv3.CheckResponse) {
	refuse := func(o outcome) (outcome, *authv3.CheckResponse) { return o, denyResponse(o.reason, o.message, false) }
	if r.Method != http.MethodGet {
		return refuse(deny(ReasonBadRequest, fmt.Sprintf("the agent list endpoint answers GET %s, not %s", AgentsPath, r.Method)))
	}
	_, query, _ := strings.Cut(r.Target, "?")
	inner := &httpRequest{ID: r.ID, Method: http.MethodGet, Target: PathPrefix + "api", Header: r.Header}
	if query != "" {
		inner.Target += "?" + query
	}
	o, rt, ok := authenticate(ctx, s, inner)
	if !ok {
		return refuse(o)
	}
	o.request = policy.Request{} // not a request to any cluster
	list := contract.AgentList{Agents: []contract.AgentInfo{}}
	for _, slot := range s.order {
		engine := slot.engine.Load()
		if engine == nil {
			continue
		}
		id := *o.identity
		id.AgentID = slot.spec.Agent.ID // the identity as a request for this agent carries it
		memberships, err := rt.shared.Memberships.Memberships(ctx, id.User, engine.Listed())
		if err != nil {
			return refuse(o.with(identityDenial(identity.AsError(err))))
		}
		as, admitted, err := engine.Admits(ctx, policy.Input{Identity: id, Memberships: memberships})
		if err != nil {
			o.reason, o.message, o.cause = Reason(policy.ReasonPolicyError), "the gateway's policy could not be evaluated", fmt.Errorf("agent %d: %w", slot.spec.Agent.ID, err)
			return refuse(o)
		}
		if admitted {
			list.Agents = append(list.Agents, contract.AgentInfo{ID: slot.spec.Agent.ID, Name: slot.spec.Name, ConfigProjectID: slot.spec.Agent.ConfigProjectID, AccessAs: string(as)})
		}
	}
	body, err := json.Marshal(list)
	if err != nil {
		o.reason, o.message, o.cause = ReasonMisconfigured, "the agent list could not be encoded", err
		return refuse(o)
	}
	o.reason = ReasonAgentsListed
	return o, answerResponse(ReasonAgentsListed, body)
}
