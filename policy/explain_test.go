package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
)

// explainOperatorModules deny some requests, so that generated inputs reach all
// three outcomes: refused by the built-in policy, refused by a module, allowed.
var explainOperatorModules = []Module{
	{File: "a.rego", Source: "package kubegate.operator.nosecrets\n\ndeny contains \"no secrets\" if input.request.resource == \"secrets\"\n"},
	{File: "b.rego", Source: "package kubegate.operator.readonly\n\ndeny contains msg if {\n\tinput.request.verb == \"delete\"\n\tmsg := sprintf(\"%s may not delete\", [input.user.username])\n}\n"},
}

// TestExplainAgreesWithDecide: over generated memberships, both access modes and
// requests that operator modules refuse or not, what Explain says adds up to the
// decision Decide makes: some entry qualifies exactly when the built-in policy
// allows; the groups of the qualifying entries, after gitlab:user, are the
// impersonated groups in order; the modules' denials are the refusal's message. Each
// membership's verdict is also held against the Rego specification, evaluated on
// that membership alone.
func TestExplainAgreesWithDecide(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("user_access:\n  access_as: {%s: {}}\n  projects:\n")
	for i := range 40 {
		fmt.Fprintf(&doc, "  - id: G%d/Proj-%d\n", i%7, i)
	}
	doc.WriteString("  groups:\n")
	for i := range 30 {
		fmt.Fprintf(&doc, "  - id: g%d/sub.%d\n", i%5, i)
	}
	doc.WriteString("  - id: g1\n")
	requests := []Request{
		mustRequest(t, "GET", "/api/v1/namespaces/demo/pods"),
		mustRequest(t, "GET", "/api/v1/namespaces/demo/secrets/s"),
		mustRequest(t, "DELETE", "/api/v1/namespaces/demo/pods/p"),
	}
	for _, mode := range []string{"user", "agent"} {
		for _, withModules := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s mode/modules %v", mode, withModules), func(t *testing.T) {
				cfg := mustConfig(t, fmt.Sprintf(doc.String(), mode))
				var mods []Module
				if withModules {
					mods = explainOperatorModules
				}
				e := mustEngine(t, cfg, mods...)
				ref := newRegoBuiltin(t, sandboxAgent, cfg)
				r := rand.New(rand.NewPCG(3, 11))
				outcomes := map[Reason]int{}
				for i := range 300 {
					in := Input{
						Identity:    identity.Identity{User: identity.User{ID: int64(i), Username: fmt.Sprintf("user-%d", i)}, AccessType: identity.AccessPersonalAccessToken, AgentID: sandboxAgent.ID},
						Memberships: genMemberships(r, cfg),
						Request:     requests[i%len(requests)],
					}
					want, err := e.Decide(context.Background(), in)
					if err != nil {
						t.Fatal(err)
					}
					x, err := e.Explain(context.Background(), in)
					if err != nil {
						t.Fatal(err)
					}
					outcomes[want.Reason]++
					checkExplanation(t, ref, in, want, x, withModules)
				}
				if outcomes[ReasonAllowed] == 0 || outcomes[ReasonNotMember] == 0 || (withModules && outcomes[ReasonPolicyDenied] == 0) {
					t.Fatalf("outcomes %v: the generator does not reach every outcome", outcomes)
				}
			})
		}
	}
}

func checkExplanation(t *testing.T, ref *regoBuiltin, in Input, want Decision, x Explanation, withModules bool) {
	t.Helper()
	if !reflect.DeepEqual(x.Decision, want) {
		t.Fatalf("Explain's decision %+v, Decide's %+v", x.Decision, want)
	}
	if len(x.Entries) < len(in.Memberships) {
		t.Fatalf("%d entries for %d memberships", len(x.Entries), len(in.Memberships))
	}
	qualifying := 0
	projectGroups, groupGroups := []string{}, []string{}
	for i, m := range in.Memberships {
		ex := x.Entries[i]
		if ex.Kind != m.Kind || ex.Path != m.Path || ex.AccessLevel != m.AccessLevel {
			t.Fatalf("entry %d is %+v for membership %+v", i, ex, m)
		}
		// The Rego specification on this membership alone allows exactly when the
		// verdict says it qualifies.
		alone, err := ref.decide(Input{Identity: in.Identity, Memberships: []identity.Membership{m}})
		if err != nil {
			t.Fatal(err)
		}
		if alone.allowed != (ex.Verdict == VerdictQualifies) {
			t.Fatalf("membership %+v: verdict %s, but the Rego policy on it alone allows=%v", m, ex.Verdict, alone.allowed)
		}
		switch ex.Verdict {
		case VerdictQualifies:
			qualifying++
			if m.Kind == identity.KindProject {
				projectGroups = append(projectGroups, ex.Groups...)
			} else {
				groupGroups = append(groupGroups, ex.Groups...)
			}
		case VerdictBelowDeveloper:
			if m.AccessLevel >= identity.Developer || !ex.Listed {
				t.Fatalf("membership %+v: below_developer, listed=%v", m, ex.Listed)
			}
		case VerdictNotListed:
			if ex.Listed {
				t.Fatalf("membership %+v: not_listed but Listed", m)
			}
		default:
			t.Fatalf("membership %+v: verdict %s", m, ex.Verdict)
		}
		if ex.Verdict != VerdictQualifies && len(ex.Groups) > 0 {
			t.Fatalf("membership %+v: %s yet contributes groups %v", m, ex.Verdict, ex.Groups)
		}
	}
	for _, ex := range x.Entries[len(in.Memberships):] {
		if ex.Verdict != VerdictNoMembership || !ex.Listed {
			t.Fatalf("listed entry without membership: %+v", ex)
		}
	}
	builtinAllows := qualifying > 0
	if builtinAllows != (want.Reason != ReasonNotMember) {
		t.Fatalf("%d qualifying entries, decision %s", qualifying, want.Reason)
	}
	var denials []string
	for _, m := range x.Modules {
		denials = append(denials, m.Denials...)
	}
	switch {
	case !builtinAllows || !withModules:
		if x.ModulesEvaluated || len(x.Modules) > 0 {
			t.Fatalf("modules reported %+v although the decision did not run them", x.Modules)
		}
	case len(x.Modules) != len(explainOperatorModules):
		t.Fatalf("%d module results for %d packages", len(x.Modules), len(explainOperatorModules))
	case (len(denials) > 0) != (want.Reason == ReasonPolicyDenied):
		t.Fatalf("module denials %v, decision %s", denials, want.Reason)
	case len(denials) > 0 && strings.Join(denials, "; ") != want.Message:
		t.Fatalf("module denials %v, decision message %q", denials, want.Message)
	}
	if x.ConfiguredAccessAs == AccessAsUser && builtinAllows {
		groups := append(append([]string{"gitlab:user"}, projectGroups...), groupGroups...)
		if x.Identity == nil || !reflect.DeepEqual(x.Identity.Groups(), groups) {
			t.Fatalf("entries' groups %v, identity %+v", groups, x.Identity)
		}
		if want.Allowed && !reflect.DeepEqual(want.Impersonate.Groups(), groups) {
			t.Fatalf("entries' groups %v, decision's %v", groups, want.Impersonate.Groups())
		}
	} else if x.Identity != nil {
		t.Fatalf("identity %+v in agent mode or without a qualifying entry", x.Identity)
	}
}

// TestExplainVerdicts names the verdict and the reason for each case of access.md §3.
func TestExplainVerdicts(t *testing.T) {
	e := mustEngine(t, mustConfig(t, seedUserConfig))
	tests := []struct {
		name        string
		m           identity.Membership
		wantVerdict Verdict
		wantWhy     string
		wantGroups  []string
	}{
		{"developer of a listed project", proj(1, "group-1/project-1", identity.Developer), VerdictQualifies, "developer (30) is Developer (30) or higher",
			[]string{"gitlab:project_role:1:guest", "gitlab:project_role:1:planner", "gitlab:project_role:1:reporter", "gitlab:project_role:1:developer"}},
		{"listed path in another case", grp(7, "GROUP-2", identity.Owner), VerdictQualifies, "owner (50)", nil},
		{"reporter of a listed group", grp(7, "group-2", identity.Reporter), VerdictBelowDeveloper, "reporter (20) is below Developer (30)", nil},
		{"minimal access", grp(7, "group-2", 5), VerdictBelowDeveloper, "no role (5) is below Developer (30)", nil},
		{"unlisted project", proj(9, "group-9/other", identity.Owner), VerdictNotListed, "does not list project group-9/other directly", nil},
		{"parent of a listed group, as the source would never report it", grp(3, "group-3", identity.Owner), VerdictNotListed, "does not list group group-3", nil},
		{"unknown kind", identity.Membership{Kind: "namespace", Path: "group-2", AccessLevel: identity.Owner}, VerdictNotListed, `kind "namespace"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, err := e.Explain(context.Background(), Input{Identity: who("alice", 1), Memberships: []identity.Membership{tt.m}, Request: mustRequest(t, "GET", "/api/v1/pods")})
			if err != nil {
				t.Fatal(err)
			}
			got := x.Entries[0]
			if got.Verdict != tt.wantVerdict || !strings.Contains(got.Why, tt.wantWhy) {
				t.Fatalf("verdict %s (%s), want %s (%s)", got.Verdict, got.Why, tt.wantVerdict, tt.wantWhy)
			}
			if tt.wantGroups != nil && !reflect.DeepEqual(got.Groups, tt.wantGroups) {
				t.Fatalf("groups %v, want %v", got.Groups, tt.wantGroups)
			}
			// Every other listed entry is reported as without membership.
			if n := len(x.Entries); n != 1+4-map[bool]int{true: 1, false: 0}[got.Listed] {
				t.Fatalf("%d entries: %+v", n, x.Entries)
			}
			for _, rest := range x.Entries[1:] {
				if rest.Verdict != VerdictNoMembership {
					t.Fatalf("entry %+v", rest)
				}
			}
		})
	}
}

// FuzzExplainAgreesWithDecide: memberships drawn from the fuzzer's bytes (listed,
// re-cased, unlisted, unknown kinds, any level), in both modes and with operator
// modules: Explain adds up to Decide and to the Rego specification
// (checkExplanation).
func FuzzExplainAgreesWithDecide(f *testing.F) {
	f.Add([]byte{0, 0, 0, 30})
	f.Add([]byte{1, 1, 1, 50, 0, 2, 20, 1, 0, 40})
	f.Add([]byte{2, 2, 3, 10, 1, 200, 30})
	cfg := map[bool]*AgentConfig{}
	for _, user := range []bool{true, false} {
		mode := "agent"
		if user {
			mode = "user"
		}
		cfg[user] = mustConfig(f, "user_access:\n  access_as: {"+mode+": {}}\n  projects: [{id: G1/Proj-1}, {id: g2/proj-2}]\n  groups: [{id: g1}, {id: g3/sub}]\n")
	}
	engines := map[bool]*Engine{true: mustEngine(f, cfg[true], explainOperatorModules...), false: mustEngine(f, cfg[false], explainOperatorModules...)}
	refs := map[bool]*regoBuiltin{true: newRegoBuiltin(f, sandboxAgent, cfg[true]), false: newRegoBuiltin(f, sandboxAgent, cfg[false])}
	requests := []Request{
		mustRequest(f, "GET", "/api/v1/namespaces/demo/pods"),
		mustRequest(f, "GET", "/api/v1/namespaces/demo/secrets/s"),
		mustRequest(f, "DELETE", "/api/v1/namespaces/demo/pods/p"),
	}
	levels := []identity.AccessLevel{0, 5, identity.Guest, identity.Planner, identity.Reporter, 25, identity.Developer, 35, identity.Maintainer, identity.Owner, 60, -10}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 1 || len(b) > 64 {
			return
		}
		user := b[0]&1 == 1
		c := cfg[user]
		in := Input{Identity: who("fuzz.user", 9), Request: requests[int(b[0]>>1)%len(requests)]}
		for i := 1; i+2 < len(b); i += 3 {
			m := identity.Membership{ID: int64(b[i+1]), AccessLevel: levels[int(b[i+2])%len(levels)]}
			entries := c.UserAccess.Projects
			switch b[i] % 3 {
			case 0:
				m.Kind = identity.KindProject
			case 1:
				m.Kind, entries = identity.KindGroup, c.UserAccess.Groups
			default:
				m.Kind = "namespace"
			}
			switch k := int(b[i+1]) % (len(entries) + 2); {
			case k < len(entries):
				m.Path = entries[k].Path
			case k == len(entries):
				m.Path = strings.ToUpper(entries[0].Path)
			default:
				m.Path = fmt.Sprintf("unlisted/%d", b[i+1])
			}
			in.Memberships = append(in.Memberships, m)
		}
		want, err := engines[user].Decide(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		x, err := engines[user].Explain(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		checkExplanation(t, refs[user], in, want, x, true)
	})
}
