package policy

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"kubegate.dev/kubegate/identity"
)

// builtinModule is the specification of the built-in decision; builtin.go
// implements it in Go.
//
//go:embed rego/kubegate.rego
var builtinModule string

// regoBuiltin evaluates rego/kubegate.rego for one configuration, as the engine did
// before the decision moved to Go: the reference the Go path is checked against.
type regoBuiltin struct {
	agent Agent
	query rego.PreparedEvalQuery
}

func newRegoBuiltin(t testing.TB, agent Agent, cfg *AgentConfig) *regoBuiltin {
	t.Helper()
	projects, groups := map[string]any{}, map[string]any{}
	for _, p := range cfg.UserAccess.Projects {
		projects[p.Key] = true
	}
	for _, g := range cfg.UserAccess.Groups {
		groups[g.Key] = true
	}
	data := map[string]any{"user_access": map[string]any{"access_as": string(cfg.UserAccess.AccessAs), "projects": projects, "groups": groups}}
	q, err := rego.New(
		rego.Query("data.kubegate.builtin.decision"),
		rego.Module("kubegate.rego", builtinModule),
		rego.Store(inmem.NewFromObjectWithOpts(data, inmem.OptReturnASTValuesOnRead(true))),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(context.Background())
	if err != nil {
		t.Fatalf("compiling the built-in policy: %v", err)
	}
	return &regoBuiltin{agent: agent, query: q}
}

// decide evaluates the policy with the input the engine gave it (the operator
// modules' identity input, which is the policy's documented input plus role names).
func (r *regoBuiltin) decide(in Input) (*identityDecision, error) {
	rs, err := r.query.Eval(context.Background(), rego.EvalParsedInput(ast.NewObject(operatorIdentityInput(r.agent, in)...)))
	if err != nil {
		return nil, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return nil, errors.New("the built-in policy returned no decision")
	}
	b, err := json.Marshal(rs[0].Expressions[0].Value)
	if err != nil {
		return nil, err
	}
	var raw struct {
		Allowed     *bool          `json:"allowed"`
		Reason      Reason         `json:"reason"`
		Message     string         `json:"message"`
		AccessAs    AccessAs       `json:"access_as"`
		Impersonate *Impersonation `json:"impersonate"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil || raw.Allowed == nil {
		return nil, fmt.Errorf("the built-in decision has an unexpected shape: %s", b)
	}
	return &identityDecision{allowed: *raw.Allowed, reason: raw.Reason, message: raw.Message, accessAs: raw.AccessAs, impersonate: raw.Impersonate}, nil
}

// sameDecision compares what a decision says (not its cache weight).
func sameDecision(a, b *identityDecision) bool {
	ja, _ := json.Marshal(a.impersonate)
	jb, _ := json.Marshal(b.impersonate)
	return a.allowed == b.allowed && a.reason == b.reason && a.message == b.message && a.accessAs == b.accessAs &&
		string(ja) == string(jb)
}

// genMemberships draws memberships against a configuration: listed entries (some
// spelled in another case), unlisted ones, every access level GitLab has and some it
// has not, unknown kinds, duplicates.
func genMemberships(r *rand.Rand, cfg *AgentConfig) []identity.Membership {
	levels := []identity.AccessLevel{0, 5, identity.Guest, identity.Planner, identity.Reporter, 25, identity.Developer, 35, identity.Maintainer, identity.Owner, 60}
	n := r.IntN(14)
	ms := make([]identity.Membership, 0, n)
	for range n {
		m := identity.Membership{ID: r.Int64N(1 << 40), AccessLevel: levels[r.IntN(len(levels))]}
		entries, kind := cfg.UserAccess.Projects, identity.KindProject
		if r.IntN(2) == 0 {
			entries, kind = cfg.UserAccess.Groups, identity.KindGroup
		}
		m.Kind = kind
		switch k := r.IntN(10); {
		case k < 6 && len(entries) > 0:
			m.Path = entries[r.IntN(len(entries))].Path
		case k == 6 && len(entries) > 0:
			m.Path = strings.ToUpper(entries[r.IntN(len(entries))].Path)
		case k == 7:
			m.Path = fmt.Sprintf("unlisted-%d/x", r.IntN(5))
		case k == 8:
			m.Kind, m.Path = "namespace", "g1"
		default:
			if len(ms) > 0 {
				m = ms[r.IntN(len(ms))] // a duplicate
			} else {
				m.Path = "g1"
			}
		}
		ms = append(ms, m)
	}
	return ms
}

// TestBuiltinAgreesWithRego is the contract between rego/kubegate.rego (the
// specification) and builtin.go (what runs): over thousands of generated membership
// sets, identities and both access modes, the two give the same decision, groups
// in the same order included.
func TestBuiltinAgreesWithRego(t *testing.T) {
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
	agents := []Agent{{ID: 1, ConfigProjectID: 1}, {ID: 987654321012, ConfigProjectID: 42}}
	for _, mode := range []string{"user", "agent"} {
		cfg := mustConfig(t, fmt.Sprintf(doc.String(), mode))
		for _, agent := range agents {
			t.Run(fmt.Sprintf("%s mode/agent %d", mode, agent.ID), func(t *testing.T) {
				ref, impl := newRegoBuiltin(t, agent, cfg), newBuiltin(agent, cfg)
				r := rand.New(rand.NewPCG(uint64(agent.ID), 7))
				types := []identity.AccessType{identity.AccessPersonalAccessToken, identity.AccessOIDCIDToken, identity.AccessSessionCookie}
				allowed := 0
				for i := range 600 {
					in := Input{
						Identity:    identity.Identity{User: identity.User{ID: int64(i), Username: fmt.Sprintf("user-%d.x", i)}, AccessType: types[i%3], AgentID: agent.ID},
						Memberships: genMemberships(r, cfg),
					}
					want, err := ref.decide(in)
					if err != nil {
						t.Fatal(err)
					}
					if got := impl.decide(in); !sameDecision(got, want) {
						t.Fatalf("memberships %+v:\n Go   %+v %+v\n Rego %+v %+v", in.Memberships, got, got.impersonate, want, want.impersonate)
					}
					if want.allowed {
						allowed++
					}
				}
				if allowed < 100 || allowed > 500 {
					t.Fatalf("%d of 600 generated inputs allowed: the generator does not exercise both outcomes", allowed)
				}
			})
		}
	}
	// The documented cases, through the table of TestDecisionAccessRules' shape.
	t.Run("empty configuration", func(t *testing.T) {
		cfg := mustConfig(t, "ci_access: {}")
		in := Input{Identity: who("alice", 1), Memberships: []identity.Membership{proj(1, "group-1/project-1", identity.Owner)}}
		want, err := newRegoBuiltin(t, sandboxAgent, cfg).decide(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := newBuiltin(sandboxAgent, cfg).decide(in); !sameDecision(got, want) {
			t.Fatalf("Go %+v, Rego %+v", got, want)
		}
	})
}

// TestFirstRequestsAfterReload: a new Engine (what a reload installs) starts with an
// empty cache. Many concurrent first requests of one identity compute its decision
// once; while that computation is held up, another identity's decision does not
// wait for it.
func TestFirstRequestsAfterReload(t *testing.T) {
	e := mustEngine(t, mustConfig(t, seedUserConfig))
	var loads sync.Map // username → *atomic.Int32
	release := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	e.onLoad = func(user string) {
		n, _ := loads.LoadOrStore(user, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if user == "alice" {
			once.Do(func() { close(entered) })
			<-release
		}
	}
	pods := mustRequest(t, "GET", "/api/v1/pods")
	ms := []identity.Membership{proj(1, "group-1/project-1", identity.Developer)}
	const callers = 32
	results := make(chan Decision, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := e.Decide(context.Background(), Input{Identity: who("alice", 1), Memberships: ms, Request: pods})
			if err != nil {
				t.Error(err)
			}
			results <- d
		}()
	}
	<-entered
	// alice's computation is held: bob's first request still completes.
	done := make(chan Decision)
	go func() {
		d, _ := e.Decide(context.Background(), Input{Identity: who("bob", 2), Memberships: ms, Request: pods})
		done <- d
	}()
	select {
	case d := <-done:
		if !d.Allowed || d.Impersonate.User() != "gitlab:user:bob" {
			t.Fatalf("bob: %+v", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bob's first request waited for alice's decision")
	}
	close(release)
	wg.Wait()
	close(results)
	for d := range results {
		if !d.Allowed || d.Impersonate.User() != "gitlab:user:alice" {
			t.Fatalf("alice: %+v", d)
		}
	}
	for _, u := range []string{"alice", "bob"} {
		n, _ := loads.Load(u)
		if got := n.(*atomic.Int32).Load(); got != 1 {
			t.Errorf("%s's decision computed %d times, want 1", u, got)
		}
	}
}

// TestDecisionCacheIsBoundedByBytes: a cache at its byte bound evicts; it does not
// grow with the number of identities.
func TestDecisionCacheIsBoundedByBytes(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("user_access:\n  access_as: {user: {}}\n  groups:\n")
	for i := range 60 {
		fmt.Fprintf(&doc, "  - id: g%d\n", i)
	}
	e, err := NewEngine(context.Background(), sandboxAgent, mustConfig(t, doc.String()), nil, WithCacheBytes(minCacheBytes))
	if err != nil {
		t.Fatal(err)
	}
	var ms []identity.Membership
	for i := range 60 {
		ms = append(ms, grp(int64(i+1), fmt.Sprintf("g%d", i), identity.Owner))
	}
	pods := mustRequest(t, "GET", "/api/v1/pods")
	for i := range 2000 {
		d, err := e.Decide(context.Background(), Input{Identity: who(fmt.Sprintf("user-%d", i), int64(i+1)), Memberships: ms, Request: pods})
		if err != nil || len(d.Impersonate.Groups()) != 361 {
			t.Fatalf("user %d: %v %v", i, d, err)
		}
	}
	e.cache.CleanUp() // eviction runs in the cache's maintenance; let it catch up
	var weight uint64
	entries := 0
	for k, d := range e.cache.All() {
		weight += uint64(len(k)) + uint64(d.weight)
		entries++
	}
	if weight > minCacheBytes || entries >= 2000 {
		t.Fatalf("the cache holds %d entries weighing %d bytes; the bound is %d", entries, weight, minCacheBytes)
	}
	if entries == 0 {
		t.Fatal("the cache holds nothing")
	}
	if _, err := NewEngine(context.Background(), sandboxAgent, mustConfig(t, doc.String()), nil, WithCacheBytes(1000)); err == nil {
		t.Fatal("a bound below one decision's size was accepted")
	}
}
