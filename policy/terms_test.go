package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"kubegate.dev/kubegate/identity"
)

// plainDecisionTerm converts a decision to Rego terms without sharing any: the
// reference the shared conversion is held to.
func plainDecisionTerm(d *identityDecision) *ast.Term {
	items := [][2]*ast.Term{ast.Item(ast.StringTerm("access_as"), ast.StringTerm(string(d.accessAs)))}
	if imp := d.impersonate; imp != nil {
		var groups []*ast.Term
		for _, g := range imp.Groups() {
			groups = append(groups, ast.StringTerm(g))
		}
		var extra [][2]*ast.Term
		for k, vs := range imp.Extra() {
			var vals []*ast.Term
			for _, v := range vs {
				vals = append(vals, ast.StringTerm(v))
			}
			extra = append(extra, ast.Item(ast.StringTerm(k), ast.ArrayTerm(vals...)))
		}
		items = append(items, ast.Item(ast.StringTerm("impersonate"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("user"), ast.StringTerm(imp.User())),
			ast.Item(ast.StringTerm("groups"), ast.ArrayTerm(groups...)),
			ast.Item(ast.StringTerm("extra"), ast.ObjectTerm(extra...)),
		)))
	}
	return ast.ObjectTerm(items...)
}

// TestSharedOperatorInputIsThePlainOne: the operator modules' input built from
// shared terms equals the plain conversion, for many identities drawn against one
// configuration in turn (so later ones reuse what earlier ones shared), in both
// access modes: sharing never carries one identity's values into another's input.
func TestSharedOperatorInputIsThePlainOne(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("user_access:\n  access_as: {%s: {}}\n  projects:\n")
	for i := range 40 {
		fmt.Fprintf(&doc, "  - id: G%d/Proj-%d\n", i%7, i)
	}
	doc.WriteString("  groups:\n")
	for i := range 30 {
		fmt.Fprintf(&doc, "  - id: g%d/sub.%d\n", i%5, i)
	}
	for _, mode := range []string{"user", "agent"} {
		t.Run(mode+" mode", func(t *testing.T) {
			cfg := mustConfig(t, fmt.Sprintf(doc.String(), mode))
			b, shared := newBuiltin(sandboxAgent, cfg), newTerms()
			r := rand.New(rand.NewPCG(3, 9))
			for i := range 300 {
				in := Input{
					Identity:    identity.Identity{User: identity.User{ID: int64(i), Username: fmt.Sprintf("user-%d", i)}, AccessType: identity.AccessPersonalAccessToken, AgentID: 1},
					Memberships: genMemberships(r, cfg),
				}
				d, parts := b.decideParts(in)
				got := ast.NewObject(append(shared.identityInput(sandboxAgent, in), ast.Item(ast.StringTerm("decision"), shared.decision(d.accessAs, parts)))...)
				want := ast.NewObject(append(operatorIdentityInput(sandboxAgent, in), ast.Item(ast.StringTerm("decision"), plainDecisionTerm(d)))...)
				if got.Compare(want) != 0 {
					t.Fatalf("identity %d: shared input\n%v\nplain input\n%v", i, got, want)
				}
			}
			if len(shared.memberships) == 0 || (mode == "user" && len(shared.strs) == 0) {
				t.Fatalf("nothing was shared (%d memberships, %d strings)", len(shared.memberships), len(shared.strs))
			}
		})
	}
}
