package policy

import (
	"context"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
)

func cachedKeys(c *DecisionCache) int {
	n := 0
	for range c.cache.Keys() {
		n++
	}
	return n
}

// TestSharedDecisionCache: engines of two agents share one bounded cache without
// ever answering from each other's entries, and Release drops only the released
// engine's entries.
func TestSharedDecisionCache(t *testing.T) {
	ctx := context.Background()
	shared, err := NewDecisionCache(minCacheBytes)
	if err != nil {
		t.Fatal(err)
	}
	// Agent 1 lets group-1/project-1's developers in as themselves; agent 2
	// lists another project, so the same identity is not a member there.
	one, err := NewEngine(ctx, Agent{ID: 1, ConfigProjectID: 1}, mustConfig(t, "user_access:\n  access_as: {user: {}}\n  projects: [{id: group-1/project-1}]\n"), nil, WithDecisionCache(shared))
	if err != nil {
		t.Fatal(err)
	}
	two, err := NewEngine(ctx, Agent{ID: 2, ConfigProjectID: 2}, mustConfig(t, "user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-9/other}]\n"), nil, WithDecisionCache(shared))
	if err != nil {
		t.Fatal(err)
	}
	pods := mustRequest(t, "GET", "/api/v1/pods")
	ms := []identity.Membership{proj(1, "group-1/project-1", identity.Developer)}
	for i := 0; i < 2; i++ { // the second round answers from the cache
		alice := who("alice", 1)
		d1, err := one.Decide(ctx, Input{Identity: alice, Memberships: ms, Request: pods})
		if err != nil || !d1.Allowed || d1.AccessAs != AccessAsUser {
			t.Fatalf("round %d, agent 1: %+v %v", i, d1, err)
		}
		// The identity as agent 2 would see it, and, worse, exactly agent 1's
		// input: neither may reuse agent 1's entry.
		for _, id := range []int64{2, 1} {
			alice.AgentID = id
			d2, err := two.Decide(ctx, Input{Identity: alice, Memberships: ms, Request: pods})
			if err != nil || d2.Allowed || d2.Reason != ReasonNotMember {
				t.Fatalf("round %d, agent 2 with identity of agent %d: %+v %v", i, id, d2, err)
			}
		}
	}
	if n := cachedKeys(shared); n != 3 {
		t.Fatalf("the shared cache holds %d entries, want 3 (one per engine and input)", n)
	}
	two.Release()
	if n := cachedKeys(shared); n != 1 {
		t.Fatalf("after releasing agent 2's engine the cache holds %d entries, want agent 1's one", n)
	}
	if d, err := one.Decide(ctx, Input{Identity: who("alice", 1), Memberships: ms, Request: pods}); err != nil || !d.Allowed {
		t.Fatalf("agent 1 after agent 2's release: %+v %v", d, err)
	}
}

func TestDecisionCacheBound(t *testing.T) {
	if _, err := NewDecisionCache(minCacheBytes - 1); err == nil || !strings.Contains(err.Error(), "below the minimum") {
		t.Fatalf("a bound below 1 MiB: %v", err)
	}
}

// TestAdmits: Admits is the decision's own membership rule, whatever the request.
func TestAdmits(t *testing.T) {
	userMode := mustEngine(t, mustConfig(t, seedUserConfig))
	agentMode := mustEngine(t, mustConfig(t, strings.Replace(seedUserConfig, "user: {}", "agent: {}", 1)))
	tests := []struct {
		name   string
		engine *Engine
		ms     []identity.Membership
		want   AccessAs
		admits bool
	}{
		{"developer of a listed project", userMode, []identity.Membership{proj(1, "group-1/project-1", identity.Developer)}, AccessAsUser, true},
		{"listed path in another case", agentMode, []identity.Membership{proj(1, "Group-1/Project-1", identity.Maintainer)}, AccessAsAgent, true},
		{"reporter of a listed project", userMode, []identity.Membership{proj(1, "group-1/project-1", identity.Reporter)}, "", false},
		{"developer of an unlisted project", userMode, []identity.Membership{proj(9, "group-9/other", identity.Owner)}, "", false},
		{"developer of a listed group", agentMode, []identity.Membership{grp(2, "group-2", identity.Developer)}, AccessAsAgent, true},
		{"no memberships", userMode, nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Identity: who("alice", 1), Memberships: tt.ms}
			as, ok, err := tt.engine.Admits(context.Background(), in)
			if err != nil || ok != tt.admits || (ok && as != tt.want) {
				t.Fatalf("Admits = %s %v %v, want %s %v", as, ok, err, tt.want, tt.admits)
			}
			// The same rule as a decision's, for any request.
			d, err := tt.engine.Decide(context.Background(), Input{Identity: in.Identity, Memberships: tt.ms, Request: mustRequest(t, "GET", "/api/v1/pods")})
			if err != nil || d.Allowed != ok {
				t.Fatalf("Decide = %+v %v, Admits = %v", d, err, ok)
			}
		})
	}
}
