package policy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/maypok86/otter/v2"
	"github.com/open-policy-agent/opa/v1/ast"

	"kubegate.dev/kubegate/identity"
)

// DefaultCacheBytes bounds the memory an Engine's per-identity decisions may take
// (`kubegate authz --decision-cache-bytes`). At the real-size shape (243
// impersonated groups) one decision weighs about 11 KB, most of it the identity
// encoded for ext_proc (Impersonation), so the default holds some 6,000 such
// identities, and more of smaller ones.
const DefaultCacheBytes = 64 << 20

// minCacheBytes keeps a bound too small to hold one real-size decision from
// turning the cache into a loop of evictions.
const minCacheBytes = 1 << 20

// Engine makes decisions for one agent and one configuration. It is immutable: a
// change of configuration or modules builds a new Engine, which callers swap in
// atomically, so a request is decided by one consistent version from start to end.
//
// The built-in decision (rego/kubegate.rego is its specification; the Go code in
// builtin.go implements it, and TestBuiltinAgreesWithRego holds the two together)
// depends only on the identity and its memberships, so it is computed once per
// (identity, memberships) and cached for the Engine's life, bounded by bytes; per
// request, only the operator modules run, over a pre-converted input. Concurrent
// first requests of one identity share one computation, and never wait for another
// identity's (README, performance).
type Engine struct {
	agent    Agent
	config   *AgentConfig
	listed   identity.Listed
	builtin  *builtin
	operator *operatorPolicy // nil without operator modules
	terms    *terms          // the operator input's shared terms (nil without modules)
	cache    *otter.Cache[string, *identityDecision]
	// prefix starts every key this Engine puts in cache: empty with a cache of its
	// own, a number unique to the Engine in a DecisionCache shared with others.
	prefix string
	shared bool
	// onLoad, when set (tests only), runs at the start of every built-in
	// computation with the identity's username.
	onLoad func(username string)
}

// identityDecision is the built-in policy's answer for one identity.
type identityDecision struct {
	allowed     bool
	reason      Reason
	message     string
	accessAs    AccessAs
	impersonate *Impersonation
	// operatorInput holds the request-independent part of the operator modules'
	// input, already converted to Rego values (nil without operator modules).
	operatorInput [][2]*ast.Term
	weight        uint32 // estimated bytes, for the cache's bound
}

// Option adjusts an Engine.
type Option func(*engineOptions)

type engineOptions struct {
	cacheBytes int64
	shared     *DecisionCache
}

// WithCacheBytes bounds the memory the per-identity decisions may take (default
// DefaultCacheBytes; at least 1 MiB). A cache at its bound evicts the least
// valuable decisions; an evicted identity's next request computes its decision again.
func WithCacheBytes(n int64) Option { return func(o *engineOptions) { o.cacheBytes = n } }

// WithDecisionCache keeps the Engine's decisions in c, shared with the other
// engines built with it, instead of a cache of its own: one memory bound for every
// agent of a gateway (`kubegate authz --decision-cache-bytes`). It overrides
// WithCacheBytes. Call Release on an Engine taken out of service.
func WithDecisionCache(c *DecisionCache) Option { return func(o *engineOptions) { o.shared = c } }

// DecisionCache is a per-identity decision cache several engines share, each under
// keys of its own, with one bound in bytes for all of them.
type DecisionCache struct {
	cache *otter.Cache[string, *identityDecision]
	next  atomic.Uint64 // numbers the engines' key prefixes
}

// NewDecisionCache makes a shared cache bounded by bytes (at least 1 MiB).
func NewDecisionCache(bytes int64) (*DecisionCache, error) {
	if bytes < minCacheBytes {
		return nil, fmt.Errorf("policy: the decision cache bound %d bytes is below the minimum of %d (1 MiB)", bytes, minCacheBytes)
	}
	return &DecisionCache{cache: newDecisionCache(bytes)}, nil
}

func newDecisionCache(bytes int64) *otter.Cache[string, *identityDecision] {
	return otter.Must(&otter.Options[string, *identityDecision]{
		MaximumWeight: uint64(bytes),
		Weigher:       func(k string, d *identityDecision) uint32 { return uint32(len(k)) + d.weight },
	})
}

// Release drops the Engine's decisions from a shared DecisionCache, so a replaced
// Engine's entries do not hold memory until they are evicted (a request still in
// flight on it may add one back; the bound still holds). Without a shared cache it
// does nothing: the Engine's own cache goes with it.
func (e *Engine) Release() {
	if !e.shared {
		return
	}
	var mine []string
	for k := range e.cache.Keys() {
		if strings.HasPrefix(k, e.prefix) {
			mine = append(mine, k)
		}
	}
	for _, k := range mine {
		e.cache.Invalidate(k)
	}
}

// NewEngine prepares the built-in decision for cfg and compiles the operator modules.
func NewEngine(ctx context.Context, agent Agent, cfg *AgentConfig, modules []Module, opts ...Option) (*Engine, error) {
	if cfg == nil {
		return nil, errors.New("policy: no agent configuration")
	}
	o := engineOptions{cacheBytes: DefaultCacheBytes}
	for _, opt := range opts {
		opt(&o)
	}
	e := &Engine{
		agent:   agent,
		config:  cfg,
		listed:  listed(cfg),
		builtin: newBuiltin(agent, cfg),
	}
	switch {
	case o.shared != nil:
		// A prefix-free number: no key of one engine is a prefix of another's.
		e.cache, e.shared = o.shared.cache, true
		e.prefix = string(binary.AppendUvarint(nil, o.shared.next.Add(1)))
	case o.cacheBytes < minCacheBytes:
		return nil, fmt.Errorf("policy: the decision cache bound %d bytes is below the minimum of %d (1 MiB)", o.cacheBytes, minCacheBytes)
	default:
		e.cache = newDecisionCache(o.cacheBytes)
	}
	if len(modules) > 0 {
		var err error
		if e.operator, err = newOperatorPolicy(ctx, modules); err != nil {
			return nil, err
		}
		e.terms = newTerms()
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

// Admits reports whether the built-in policy lets in's identity, with its
// memberships, in at all (a Developer or higher membership of a listed entry),
// and in which mode: the rule every decision starts with, read from the same
// cached computation, without a request (the agent list endpoint). Operator
// modules, which judge requests, are not consulted.
func (e *Engine) Admits(ctx context.Context, in Input) (AccessAs, bool, error) {
	d, err := e.identityDecision(ctx, in)
	if err != nil {
		return "", false, err
	}
	return d.accessAs, d.allowed, nil
}

// identityDecision returns the cached built-in decision for in's identity and
// memberships, computing it on a miss. otter's Get runs one computation per key at a
// time: concurrent first requests of one identity (after a reload, say) wait for
// that one, and other identities compute theirs in parallel.
func (e *Engine) identityDecision(ctx context.Context, in Input) (*identityDecision, error) {
	d, err := e.cache.Get(ctx, e.cacheKey(in), otter.LoaderFunc[string, *identityDecision](func(context.Context, string) (*identityDecision, error) {
		if e.onLoad != nil {
			e.onLoad(in.Identity.User.Username)
		}
		d, parts := e.builtin.decideParts(in)
		if e.operator != nil {
			d.operatorInput = append(e.terms.identityInput(e.agent, in), ast.Item(termDecision, e.terms.decision(d.accessAs, parts)))
			d.weight += operatorInputWeight(in, d)
		}
		return d, nil
	}))
	if err != nil {
		return nil, fmt.Errorf("policy: the built-in decision: %w", err)
	}
	return d, nil
}

// cacheKey identifies everything the built-in policy and the operator modules'
// identity input read. Two inputs with the same key get the same answer, so the key
// must be exact (no hash that could collide and hand one user another's identity):
// it is a prefix-free binary encoding of the input. A membership whose path is
// spelled exactly as a listed entry is written as that entry's index, which keeps
// the key small (~10 bytes per membership) without losing exactness.
func (e *Engine) cacheKey(in Input) string {
	id := in.Identity
	b := make([]byte, 0, 32+len(e.prefix)+len(id.AccessType)+len(id.User.Username)+8*len(in.Memberships))
	b = append(b, e.prefix...)
	b = binary.AppendVarint(b, id.AgentID)
	b = appendString(b, string(id.AccessType))
	b = binary.AppendVarint(b, id.User.ID)
	b = appendString(b, id.User.Username)
	b = binary.AppendUvarint(b, uint64(len(in.Memberships)))
	for _, m := range in.Memberships {
		var exact map[string]int32
		switch m.Kind {
		case identity.KindProject:
			b, exact = append(b, 'p'), e.builtin.projectPaths
		case identity.KindGroup:
			b, exact = append(b, 'g'), e.builtin.groupPaths
		default:
			b = appendString(append(b, 'k'), string(m.Kind))
		}
		b = binary.AppendVarint(b, m.ID)
		b = binary.AppendVarint(b, int64(m.AccessLevel))
		if i, ok := exact[m.Path]; ok {
			b = binary.AppendUvarint(append(b, 'L'), uint64(i))
		} else {
			b = appendString(append(b, 'P'), m.Path)
		}
	}
	return string(b)
}

// appendString appends a length-prefixed string, so that no choice of strings can
// make two different inputs produce the same key.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// operatorIdentityInput is the request-independent part of the operator modules'
// input (README, operator policies): agent, user, access_type and every membership.
func operatorIdentityInput(agent Agent, in Input) [][2]*ast.Term {
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
			ast.Item(ast.StringTerm("id"), ast.IntNumberTerm(int(agent.ID))),
			ast.Item(ast.StringTerm("config_project_id"), ast.IntNumberTerm(int(agent.ConfigProjectID))),
		)),
		ast.Item(ast.StringTerm("user"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("id"), ast.IntNumberTerm(int(in.Identity.User.ID))),
			ast.Item(ast.StringTerm("username"), ast.StringTerm(in.Identity.User.Username)),
		)),
		ast.Item(ast.StringTerm("access_type"), ast.StringTerm(string(in.Identity.AccessType))),
		ast.Item(ast.StringTerm("memberships"), ast.ArrayTerm(ms...)),
	}
}

// operatorInputWeight estimates the bytes of a pre-converted operator input: Rego
// terms and object tables are several times the size of the strings they hold.
func operatorInputWeight(in Input, d *identityDecision) uint32 {
	w := 1024 + 400*len(in.Memberships)
	if d.impersonate != nil {
		// ~96 bytes of terms per group of ~35 encoded bytes.
		w += 3 * d.impersonate.Handoff().Bytes()
	}
	return uint32(w)
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
