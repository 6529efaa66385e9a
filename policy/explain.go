package policy

import (
	"context"
	"fmt"
	"strings"

	"kubegate.dev/kubegate/identity"
)

// Verdict says what the built-in policy made of one membership or listed entry
// (`kubegate explain`). Values are stable: they appear in explain's JSON output.
type Verdict string

const (
	// VerdictQualifies: a Developer-or-higher membership of a listed entry.
	VerdictQualifies Verdict = "qualifies"
	// VerdictBelowDeveloper: the entry is listed, but the access level is below Developer.
	VerdictBelowDeveloper Verdict = "below_developer"
	// VerdictNotListed: user_access does not list this project or group directly.
	VerdictNotListed Verdict = "not_listed"
	// VerdictNoMembership: the entry is listed, and the identity source reported no
	// access to it (no membership there or in an ancestor group, or the source
	// does not know the path).
	VerdictNoMembership Verdict = "no_membership"
)

// EntryExplanation is the built-in policy's verdict on one membership the identity
// source reported, or on one listed entry it reported nothing for.
type EntryExplanation struct {
	Kind        identity.Kind        `json:"kind"`
	Path        string               `json:"path"`
	ID          int64                `json:"id,omitempty"`
	AccessLevel identity.AccessLevel `json:"access_level"`
	Role        string               `json:"role,omitempty"`
	Listed      bool                 `json:"listed"`
	Verdict     Verdict              `json:"verdict"`
	Why         string               `json:"why"`
	// Groups are the Impersonate-Group values this entry contributes (user mode,
	// qualifying entries only), in the order the decision sends them.
	Groups []string `json:"groups,omitempty"`
}

// ModuleResult is one operator package's answer for the request.
type ModuleResult struct {
	Package string   `json:"package"`
	Denials []string `json:"denials"` // empty: the package did not deny
}

// Explanation is a decision with the reasons behind it: what Engine.Decide answers,
// the built-in verdict on every membership and listed entry, and every operator
// package's result. It is computed by the same steps as the decision (builtin's
// qualifies, roleStrings and rolesAtOrBelow; the operator query), and
// TestExplainAgreesWithDecide holds the two together.
type Explanation struct {
	Decision Decision `json:"decision"`
	// ConfiguredAccessAs is user_access.access_as (the decision's access_as is
	// "agent" on a refusal).
	ConfiguredAccessAs AccessAs           `json:"configured_access_as"`
	Entries            []EntryExplanation `json:"entries"`
	// Identity is the identity the built-in policy would have the API server see in
	// user mode, also when an operator module refused the request (nil in agent
	// mode and when no entry qualifies).
	Identity *Impersonation `json:"identity,omitempty"`
	// ModulesEvaluated is false when the operator modules did not run: there are
	// none, or the built-in policy already refused (the decision never runs them then).
	ModulesEvaluated bool           `json:"modules_evaluated"`
	Modules          []ModuleResult `json:"modules,omitempty"`
}

// Explain makes the decision for in and says why. An error means the policy could
// not be evaluated; the Explanation's Decision is then a denial.
func (e *Engine) Explain(ctx context.Context, in Input) (Explanation, error) {
	d, err := e.Decide(ctx, in)
	x := Explanation{Decision: d, ConfiguredAccessAs: e.config.UserAccess.AccessAs}
	if err != nil {
		return x, err
	}
	x.Entries = e.builtin.explainEntries(in.Memberships, e.config)
	id, err := e.identityDecision(ctx, in)
	if err != nil {
		return x, err
	}
	x.Identity = id.impersonate
	if id.allowed && e.operator != nil {
		sets, err := e.operator.denialSets(ctx, id.operatorInput, in.Request)
		if err != nil {
			return x, err
		}
		x.ModulesEvaluated = true
		for i, pkg := range e.operator.packages {
			x.Modules = append(x.Modules, ModuleResult{Package: pkg, Denials: appendDenials([]string{}, pkg, sets[i])})
		}
	}
	return x, nil
}

// verdict classifies one membership. Whether it qualifies is builtin.qualifies
// itself, the condition the decision counts; the rest only says which part of it
// failed.
func (b *builtin) verdict(m identity.Membership) Verdict {
	if b.qualifies(m) {
		return VerdictQualifies
	}
	if !b.listed(m.Kind, m.Path) {
		return VerdictNotListed
	}
	return VerdictBelowDeveloper
}

// listed reports whether user_access lists the path under kind (compared lower-case).
func (b *builtin) listed(kind identity.Kind, path string) bool {
	var listed map[string]int32
	switch kind {
	case identity.KindProject:
		listed = b.projects
	case identity.KindGroup:
		listed = b.groups
	default:
		return false
	}
	_, ok := listed[strings.ToLower(path)]
	return ok
}

// explainEntries gives a verdict on each membership, in order, then one entry per
// listed project or group no membership names.
func (b *builtin) explainEntries(ms []identity.Membership, cfg *AgentConfig) []EntryExplanation {
	out := make([]EntryExplanation, 0, len(ms))
	seen := map[identity.Kind]map[string]bool{identity.KindProject: {}, identity.KindGroup: {}}
	for _, m := range ms {
		v := b.verdict(m)
		x := EntryExplanation{Kind: m.Kind, Path: m.Path, ID: m.ID, AccessLevel: m.AccessLevel, Role: roleName(m.AccessLevel),
			Listed: v != VerdictNotListed, Verdict: v, Why: why(v, m)}
		if v == VerdictQualifies && b.accessAs == AccessAsUser {
			// The decision's own expression (builtin.decide).
			x.Groups = b.roleStrings(m.Kind, m.ID)[:rolesAtOrBelow(m.AccessLevel)]
		}
		if x.Listed {
			seen[m.Kind][strings.ToLower(m.Path)] = true
		}
		out = append(out, x)
	}
	for _, l := range []struct {
		kind    identity.Kind
		entries []Entry
	}{{identity.KindProject, cfg.UserAccess.Projects}, {identity.KindGroup, cfg.UserAccess.Groups}} {
		for _, e := range l.entries {
			if !seen[l.kind][e.Key] {
				m := identity.Membership{Kind: l.kind, Path: e.Path}
				out = append(out, EntryExplanation{Kind: l.kind, Path: e.Path, Listed: true, Verdict: VerdictNoMembership, Why: why(VerdictNoMembership, m)})
			}
		}
	}
	return out
}

func why(v Verdict, m identity.Membership) string {
	switch v {
	case VerdictQualifies:
		return fmt.Sprintf("%s (%d) is Developer (30) or higher on a listed %s", orNoRole(m.AccessLevel), m.AccessLevel, m.Kind)
	case VerdictBelowDeveloper:
		return fmt.Sprintf("%s (%d) is below Developer (30)", orNoRole(m.AccessLevel), m.AccessLevel)
	case VerdictNotListed:
		if m.Kind != identity.KindProject && m.Kind != identity.KindGroup {
			return fmt.Sprintf("kind %q is neither project nor group", m.Kind)
		}
		return fmt.Sprintf("user_access does not list %s %s directly (only listed entries count)", m.Kind, m.Path)
	default:
		return fmt.Sprintf("no membership of this %s or of an ancestor group (a membership only in a subgroup does not count)", m.Kind)
	}
}

func orNoRole(l identity.AccessLevel) string {
	if n := roleName(l); n != "" {
		return n
	}
	return "no role"
}
