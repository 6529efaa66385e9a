package policy

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/maypok86/otter/v2"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"kubegate.dev/kubegate/identity"
)

//go:embed rego/kubegate.rego
var builtinModule string

const builtinQuery = "data.kubegate.builtin.decision"

// identityCacheSize bounds the per-identity decisions an Engine remembers.
const identityCacheSize = 10_000

// Engine makes decisions for one agent and one configuration. It is immutable: a
// change of configuration or modules builds a new Engine, which callers swap in
// atomically, so a request is decided by one consistent version from start to end.
//
// The built-in policy depends only on the identity and its memberships, so its
// result (with the Rego input operator modules see) is computed once per
// (identity, memberships) and cached for the Engine's life; per request, only the
// operator modules run, over a small, pre-converted input. This keeps the decision
// flat in configuration size and in the number of memberships (README, performance).
type Engine struct {
	agent    Agent
	config   *AgentConfig
	listed   identity.Listed
	builtin  rego.PreparedEvalQuery
	operator *operatorPolicy // nil without operator modules
	cache    *otter.Cache[string, *identityDecision]
}

// identityDecision is the built-in policy's answer for one identity.
type identityDecision struct {
	allowed     bool
	reason      Reason
	message     string
	accessAs    AccessAs
	impersonate *Impersonation
	// operatorInput holds the request-independent part of the operator modules'
	// input, already converted to Rego values.
	operatorInput [][2]*ast.Term
}

// NewEngine compiles the built-in policy against cfg and the operator modules.
func NewEngine(ctx context.Context, agent Agent, cfg *AgentConfig, modules []Module) (*Engine, error) {
	if cfg == nil {
		return nil, errors.New("policy: no agent configuration")
	}
	store := inmem.NewFromObjectWithOpts(map[string]any{"user_access": userAccessData(cfg)}, inmem.OptReturnASTValuesOnRead(true))
	builtin, err := rego.New(
		rego.Query(builtinQuery),
		rego.Module("kubegate.rego", builtinModule),
		rego.Store(store),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: compiling the built-in policy: %w", err)
	}
	e := &Engine{
		agent:   agent,
		config:  cfg,
		listed:  listed(cfg),
		builtin: builtin,
		cache:   otter.Must(&otter.Options[string, *identityDecision]{MaximumSize: identityCacheSize}),
	}
	if len(modules) > 0 {
		if e.operator, err = newOperatorPolicy(ctx, modules); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Config is the agent configuration this Engine decides with.
func (e *Engine) Config() *AgentConfig { return e.config }

// Listed is what membership sources must resolve for this configuration.
func (e *Engine) Listed() identity.Listed { return e.listed }

func listed(cfg *AgentConfig) identity.Listed {
	var projects, groups []string
	for _, p := range cfg.UserAccess.Projects {
		projects = append(projects, p.Path)
	}
	for _, g := range cfg.UserAccess.Groups {
		groups = append(groups, g.Path)
	}
	return identity.NewListed(projects, groups)
}

// userAccessData shapes user_access for Rego: listed paths as object keys
// (lower-case), so a membership is checked with one lookup whatever the list length.
func userAccessData(cfg *AgentConfig) map[string]any {
	projects, groups := map[string]any{}, map[string]any{}
	for _, p := range cfg.UserAccess.Projects {
		projects[p.Key] = true
	}
	for _, g := range cfg.UserAccess.Groups {
		groups[g.Key] = true
	}
	return map[string]any{"access_as": string(cfg.UserAccess.AccessAs), "projects": projects, "groups": groups}
}

// Decide makes the decision for one request. An error means the policy could not be
// evaluated; the Decision returned with it is a denial, so a caller that ignores the
// error still fails closed.
func (e *Engine) Decide(ctx context.Context, in Input) (Decision, error) {
	deny := func(reason Reason, msg string) Decision {
		return Decision{Reason: reason, Message: msg, AccessAs: e.config.UserAccess.AccessAs, Request: in.Request}
	}
	id, err := e.identityDecision(ctx, in)
	if err != nil {
		return deny(ReasonPolicyError, "the gateway's policy could not be evaluated"), err
	}
	if !id.allowed {
		return deny(id.reason, id.message), nil
	}
	if e.operator != nil {
		denials, err := e.operator.denials(ctx, id.operatorInput, in.Request)
		if err != nil {
			return deny(ReasonPolicyError, "the gateway's policy could not be evaluated"), err
		}
		if len(denials) > 0 {
			return deny(ReasonPolicyDenied, strings.Join(denials, "; ")), nil
		}
	}
	return Decision{Allowed: true, Reason: ReasonAllowed, AccessAs: id.accessAs, Impersonate: id.impersonate, Request: in.Request}, nil
}

func (e *Engine) identityDecision(ctx context.Context, in Input) (*identityDecision, error) {
	key := cacheKey(in)
	if d, ok := e.cache.GetIfPresent(key); ok {
		return d, nil
	}
	d, err := e.evalBuiltin(ctx, in)
	if err != nil {
		return nil, err
	}
	e.cache.Set(key, d)
	return d, nil
}

// cacheKey identifies everything the built-in policy reads from the input. Two
// inputs with the same key get the same answer, so the key must be exact (no hash
// that could collide and hand one user another's identity).
func cacheKey(in Input) string {
	id := in.Identity
	b := make([]byte, 0, 48+len(id.User.Username)+(24+32)*len(in.Memberships))
	b = strconv.AppendInt(b, id.AgentID, 10)
	b = appendField(b, string(id.AccessType))
	b = append(b, '|')
	b = strconv.AppendInt(b, id.User.ID, 10)
	b = appendField(b, id.User.Username)
	for _, m := range in.Memberships {
		b = appendField(b, string(m.Kind))
		b = append(b, ':')
		b = strconv.AppendInt(b, m.ID, 10)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(m.AccessLevel), 10)
		b = appendField(b, m.Path)
	}
	return string(b)
}

// appendField appends a length-prefixed string, so that no choice of strings can
// make two different inputs produce the same key.
func appendField(b []byte, s string) []byte {
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

func (e *Engine) evalBuiltin(ctx context.Context, in Input) (*identityDecision, error) {
	input := e.builtinInput(in)
	rs, err := e.builtin.Eval(ctx, rego.EvalParsedInput(ast.NewObject(input...)))
	if err != nil {
		return nil, fmt.Errorf("policy: evaluating the built-in policy: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return nil, errors.New("policy: the built-in policy returned no decision")
	}
	d, err := parseBuiltinDecision(rs[0].Expressions[0].Value)
	if err != nil {
		return nil, err
	}
	d.operatorInput = append(input, ast.Item(ast.StringTerm("decision"), decisionTerm(d)))
	return d, nil
}

func (e *Engine) builtinInput(in Input) [][2]*ast.Term {
	ms := make([]*ast.Term, len(in.Memberships))
	for i, m := range in.Memberships {
		ms[i] = ast.ObjectTerm(
			ast.Item(ast.StringTerm("kind"), ast.StringTerm(string(m.Kind))),
			ast.Item(ast.StringTerm("id"), ast.IntNumberTerm(int(m.ID))),
			ast.Item(ast.StringTerm("path"), ast.StringTerm(m.Path)),
			ast.Item(ast.StringTerm("access_level"), ast.IntNumberTerm(int(m.AccessLevel))),
			ast.Item(ast.StringTerm("role"), ast.StringTerm(roleName(m.AccessLevel))),
		)
	}
	return [][2]*ast.Term{
		ast.Item(ast.StringTerm("agent"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("id"), ast.IntNumberTerm(int(e.agent.ID))),
			ast.Item(ast.StringTerm("config_project_id"), ast.IntNumberTerm(int(e.agent.ConfigProjectID))),
		)),
		ast.Item(ast.StringTerm("user"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("id"), ast.IntNumberTerm(int(in.Identity.User.ID))),
			ast.Item(ast.StringTerm("username"), ast.StringTerm(in.Identity.User.Username)),
		)),
		ast.Item(ast.StringTerm("access_type"), ast.StringTerm(string(in.Identity.AccessType))),
		ast.Item(ast.StringTerm("memberships"), ast.ArrayTerm(ms...)),
	}
}

func roleName(l identity.AccessLevel) string {
	name := ""
	for _, r := range identity.Roles {
		if r.Level <= l {
			name = r.Name
		}
	}
	return name
}

// parseBuiltinDecision reads the built-in policy's result strictly: any unexpected
// shape is an error (and so a denial), never a guess.
func parseBuiltinDecision(v any) (*identityDecision, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("policy: built-in decision: %w", err)
	}
	var raw struct {
		Allowed     *bool          `json:"allowed"`
		Reason      Reason         `json:"reason"`
		Message     string         `json:"message"`
		AccessAs    AccessAs       `json:"access_as"`
		Impersonate *Impersonation `json:"impersonate"`
	}
	if err := json.Unmarshal(b, &raw); err != nil || raw.Allowed == nil {
		return nil, fmt.Errorf("policy: the built-in decision has an unexpected shape: %s", b)
	}
	d := &identityDecision{allowed: *raw.Allowed, reason: raw.Reason, message: raw.Message, accessAs: raw.AccessAs, impersonate: raw.Impersonate}
	if d.allowed {
		switch {
		case d.accessAs == AccessAsUser && (d.impersonate == nil || d.impersonate.User == "" || len(d.impersonate.Groups) == 0):
			return nil, fmt.Errorf("policy: the built-in decision allows user mode without an identity: %s", b)
		case d.accessAs == AccessAsAgent && d.impersonate != nil:
			return nil, fmt.Errorf("policy: the built-in decision impersonates in agent mode: %s", b)
		case d.accessAs != AccessAsUser && d.accessAs != AccessAsAgent:
			return nil, fmt.Errorf("policy: the built-in decision has access_as %q", d.accessAs)
		}
	}
	return d, nil
}

// decisionTerm is the built-in decision as operator modules see it (input.decision).
func decisionTerm(d *identityDecision) *ast.Term {
	items := [][2]*ast.Term{ast.Item(ast.StringTerm("access_as"), ast.StringTerm(string(d.accessAs)))}
	if imp := d.impersonate; imp != nil {
		groups := make([]*ast.Term, len(imp.Groups))
		for i, g := range imp.Groups {
			groups[i] = ast.StringTerm(g)
		}
		extra := make([][2]*ast.Term, 0, len(imp.Extra))
		for k, vs := range imp.Extra {
			vals := make([]*ast.Term, len(vs))
			for i, v := range vs {
				vals[i] = ast.StringTerm(v)
			}
			extra = append(extra, ast.Item(ast.StringTerm(k), ast.ArrayTerm(vals...)))
		}
		items = append(items, ast.Item(ast.StringTerm("impersonate"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("user"), ast.StringTerm(imp.User)),
			ast.Item(ast.StringTerm("groups"), ast.ArrayTerm(groups...)),
			ast.Item(ast.StringTerm("extra"), ast.ObjectTerm(extra...)),
		)))
	}
	return ast.ObjectTerm(items...)
}
