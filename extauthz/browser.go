package extauthz

import (
	"context"
	"fmt"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// AgentsFor lists the agents u can reach, for the browser session's
// contract.SessionInfo (login.Agents): the same rule as the agent list endpoint
// (agentsCheck) — per agent in service, u's memberships of what it lists, and its
// engine's Admits — for a user the browser login already authenticated. An agent
// without a configuration in service is not named; an error of the membership
// source or the policy is returned (the caller answers 503).
func (s *Server) AgentsFor(ctx context.Context, u identity.User) ([]contract.AgentInfo, error) {
	shared := s.shared.Load()
	out := []contract.AgentInfo{}
	for _, slot := range s.order {
		engine := slot.engine.Load()
		if engine == nil {
			continue
		}
		memberships, err := shared.Memberships.Memberships(ctx, u, engine.Listed())
		if err != nil {
			return nil, err
		}
		id := identity.Identity{User: u, AccessType: identity.AccessSessionCookie, AgentID: slot.spec.Agent.ID}
		as, admitted, err := engine.Admits(ctx, policy.Input{Identity: id, Memberships: memberships})
		if err != nil {
			return nil, fmt.Errorf("agent %d: the policy could not be evaluated: %w", slot.spec.Agent.ID, err)
		}
		if admitted {
			out = append(out, contract.AgentInfo{ID: slot.spec.Agent.ID, Name: slot.spec.Name, ConfigProjectID: slot.spec.Agent.ConfigProjectID, AccessAs: string(as)})
		}
	}
	return out, nil
}
