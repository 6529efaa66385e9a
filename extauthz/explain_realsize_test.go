package extauthz

import (
	"context"
	"reflect"
	"sort"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/realsize"
)

// TestExplainAgreesAtRealSize: for every user of the real-size data (test/realsize:
// 1,000 users, 500 + 500 listed entries, inheritance up to 4 levels), the
// explanation is the decision: the same Decision, some entry qualifies exactly when
// the built-in policy allows, each entry's effective level is the highest of the
// source's grants that count, and the qualifying entries' groups are the
// impersonated groups in order. The user under test matches the generator's own
// account of her (qualifying entries, how many only through an ancestor, groups).
func TestExplainAgreesAtRealSize(t *testing.T) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := directory.Parse("directory.yaml", data.Directory)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.ParseAgentConfig("agent-config.yaml", data.AgentConfig)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), agent, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	req, err := APIRequest("GET", "/api/v1/namespaces/demo/pods")
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(data.Tokens))
	for n := range data.Tokens {
		names = append(names, n)
	}
	sort.Strings(names)
	allowed := 0
	for _, name := range names {
		u, ok := dir.UserByName(name)
		if !ok {
			t.Fatalf("user %s is not in the directory", name)
		}
		id := identity.Identity{User: u, AccessType: identity.AccessPersonalAccessToken, AgentID: agent.ID}
		ms, err := dir.Memberships(context.Background(), u, engine.Listed())
		if err != nil {
			t.Fatal(err)
		}
		want, err := engine.Decide(context.Background(), policy.Input{Identity: id, Memberships: ms, Request: req})
		if err != nil {
			t.Fatal(err)
		}
		x, err := Explain(context.Background(), agent, engine, dir, id, req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(x.Gateway.Decision, want) {
			t.Fatalf("%s: Explain's decision %+v, Decide's %+v", name, x.Gateway.Decision, want)
		}
		sources := map[string]identity.EntrySource{}
		for _, s := range x.Sources {
			sources[string(s.Kind)+" "+strings.ToLower(s.Path)] = s
		}
		groups := []string{"gitlab:user"}
		var projectGroups, groupGroups []string
		qualifying, onlyInherited := 0, 0
		for _, e := range x.Gateway.Entries {
			s := sources[string(e.Kind)+" "+strings.ToLower(e.Path)]
			level, direct := identity.NoAccess, false
			for _, g := range s.Grants {
				if g.Relation != identity.RelationSubgroupOnly {
					level = max(level, g.AccessLevel)
				}
				direct = direct || g.Relation == identity.RelationDirect
			}
			if e.Verdict != policy.VerdictNoMembership && level != e.AccessLevel {
				t.Fatalf("%s: %s %s at %d, but its grants %+v give %d", name, e.Kind, e.Path, e.AccessLevel, s.Grants, level)
			}
			if e.Verdict == policy.VerdictNoMembership && level != identity.NoAccess {
				t.Fatalf("%s: %s %s has no membership, but grants %+v count", name, e.Kind, e.Path, s.Grants)
			}
			if e.Verdict == policy.VerdictQualifies {
				qualifying++
				if !direct {
					onlyInherited++
				}
				if e.Kind == identity.KindProject {
					projectGroups = append(projectGroups, e.Groups...)
				} else {
					groupGroups = append(groupGroups, e.Groups...)
				}
			}
		}
		if (qualifying > 0) != want.Allowed {
			t.Fatalf("%s: %d qualifying entries, decision %+v", name, qualifying, want)
		}
		if want.Allowed {
			allowed++
			groups = append(append(groups, projectGroups...), groupGroups...)
			if !reflect.DeepEqual(groups, want.Impersonate.Groups()) {
				t.Fatalf("%s: the entries' groups differ from the impersonated groups", name)
			}
		}
		if name == data.User && (qualifying != data.Qualifying || onlyInherited != data.Inherited || len(groups) != data.ImpersonatedGroups) {
			t.Fatalf("%s: %d qualifying (%d only inherited), %d groups; the generator says %d (%d), %d",
				name, qualifying, onlyInherited, len(groups), data.Qualifying, data.Inherited, data.ImpersonatedGroups)
		}
	}
	if allowed < 100 || allowed == len(names) {
		t.Fatalf("%d of %d users allowed: the data does not exercise both outcomes", allowed, len(names))
	}
}
