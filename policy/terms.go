package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"

	"kubegate.dev/kubegate/identity"
)

// terms builds the request-independent part of the operator modules' input (README,
// operator policies) from Rego terms shared across identities. A new identity's
// input holds its memberships (each an object of five fields) and its decision's
// few hundred group strings; converting them afresh for every new identity cost
// more than the modules' evaluation. The memberships of the listed entries and the
// role group strings repeat from one identity to the next, so each is built once
// per Engine and reused. Terms are only read by evaluation, so sharing them between
// identities and concurrent requests is safe (the cached input already is shared).
// Both tables are bounded; past the bound, terms are built per identity.
type terms struct {
	mu          sync.Mutex
	memberships map[identity.Membership]*ast.Term
	strs        map[string]*ast.Term
}

// maxInternedTerms bounds each table: a listed entry's memberships take one term
// per access level, its role groups one per role.
const maxInternedTerms = 8 * (MaxProjects + MaxGroups)

// Keys and constants of the input, built once.
var (
	termKind, termID, termPath    = ast.StringTerm("kind"), ast.StringTerm("id"), ast.StringTerm("path")
	termAccessLevel, termRole     = ast.StringTerm("access_level"), ast.StringTerm("role")
	termAgent, termUser           = ast.StringTerm("agent"), ast.StringTerm("user")
	termConfigProjectID, termName = ast.StringTerm("config_project_id"), ast.StringTerm("username")
	termAccessType, termMembers   = ast.StringTerm("access_type"), ast.StringTerm("memberships")
	termDecision, termAccessAs    = ast.StringTerm("decision"), ast.StringTerm("access_as")
	termImpersonate, termGroups   = ast.StringTerm("impersonate"), ast.StringTerm("groups")
	termExtra                     = ast.StringTerm("extra")
)

func newTerms() *terms {
	return &terms{memberships: map[identity.Membership]*ast.Term{}, strs: map[string]*ast.Term{}}
}

// membership is m as the modules see it: {kind, id, path, access_level, role}.
func (t *terms) membership(m identity.Membership) *ast.Term {
	t.mu.Lock()
	defer t.mu.Unlock()
	if term, ok := t.memberships[m]; ok {
		return term
	}
	term := ast.ObjectTerm(
		ast.Item(termKind, ast.StringTerm(string(m.Kind))),
		ast.Item(termID, ast.IntNumberTerm(int(m.ID))),
		ast.Item(termPath, ast.StringTerm(m.Path)),
		ast.Item(termAccessLevel, ast.IntNumberTerm(int(m.AccessLevel))),
		ast.Item(termRole, ast.StringTerm(roleName(m.AccessLevel))),
	)
	if len(t.memberships) < maxInternedTerms {
		t.memberships[m] = term
	}
	return term
}

// strings are string terms for the role group strings ss, shared (only group
// strings come here: they repeat across identities, a username would not).
func (t *terms) strings(ss []string) []*ast.Term {
	out := make([]*ast.Term, len(ss))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, s := range ss {
		term, ok := t.strs[s]
		if !ok {
			term = ast.StringTerm(s)
			if len(t.strs) < maxInternedTerms {
				t.strs[s] = term
			}
		}
		out[i] = term
	}
	return out
}

// identityInput is the agent, user, access_type and memberships part of the input.
func (t *terms) identityInput(agent Agent, in Input) [][2]*ast.Term {
	ms := make([]*ast.Term, len(in.Memberships))
	for i, m := range in.Memberships {
		ms[i] = t.membership(m)
	}
	return [][2]*ast.Term{
		ast.Item(termAgent, ast.ObjectTerm(
			ast.Item(termID, ast.IntNumberTerm(int(agent.ID))),
			ast.Item(termConfigProjectID, ast.IntNumberTerm(int(agent.ConfigProjectID))),
		)),
		ast.Item(termUser, ast.ObjectTerm(
			ast.Item(termID, ast.IntNumberTerm(int(in.Identity.User.ID))),
			ast.Item(termName, ast.StringTerm(in.Identity.User.Username)),
		)),
		ast.Item(termAccessType, ast.StringTerm(string(in.Identity.AccessType))),
		ast.Item(termMembers, ast.ArrayTerm(ms...)),
	}
}

// decision is the built-in decision as operator modules see it (input.decision):
// access_as, and in user mode the impersonation's user, groups and extra.
func (t *terms) decision(accessAs AccessAs, imp *impersonationParts) *ast.Term {
	items := [][2]*ast.Term{ast.Item(termAccessAs, ast.StringTerm(string(accessAs)))}
	if imp != nil {
		extra := make([][2]*ast.Term, 0, len(imp.extra))
		for k, vs := range imp.extra { // the username is among them: not interned
			vals := make([]*ast.Term, len(vs))
			for i, v := range vs {
				vals[i] = ast.StringTerm(v)
			}
			extra = append(extra, ast.Item(ast.StringTerm(k), ast.ArrayTerm(vals...)))
		}
		items = append(items, ast.Item(termImpersonate, ast.ObjectTerm(
			ast.Item(termUser, ast.StringTerm(imp.user)),
			ast.Item(termGroups, ast.ArrayTerm(t.strings(imp.groups)...)),
			ast.Item(termExtra, ast.ObjectTerm(extra...)),
		)))
	}
	return ast.ObjectTerm(items...)
}
