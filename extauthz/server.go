package extauthz

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/agentconfig"
	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/internal/filewatch"
	"kubegate.dev/kubegate/policy"
)

// AgentSpec is one agent a Server decides for: its id, config project and name
// (from the gateway configuration, or the single-agent flags).
type AgentSpec struct {
	Agent policy.Agent
	Name  string
}

// Shared is what every agent's decisions share, built once per process or
// reload, never per agent: the identity source (its authenticator and membership
// resolver, over the directory when there is one) and the operator's Rego
// modules, which every agent's engine is built with.
type Shared struct {
	Authenticator identity.Authenticator
	Memberships   identity.MembershipResolver
	Modules       []policy.Module
}

func (sh *Shared) validate() error {
	if sh == nil || sh.Authenticator == nil || sh.Memberships == nil {
		return errors.New("extauthz: the shared state needs an authenticator and a membership resolver")
	}
	return nil
}

// agentSlot is one agent's place in the Server. Its engine is nil until a valid
// agent configuration has been loaded; requests for it are then answered 503.
type agentSlot struct {
	spec  AgentSpec
	label string // the agent label of metrics
	// route is the OK answer's header naming this agent's cluster, built once: it
	// never changes, and every allowed request sends it (read-only, so shared by
	// concurrent answers as the credential header lists are).
	route  *corev3.HeaderValueOption
	engine atomic.Pointer[policy.Engine]

	// Guarded by Server.build.
	config   *policy.AgentConfig // the last good configuration (nil: none yet)
	failures filewatch.Repeats
	tried    chan struct{} // closed after the first attempt to load a configuration
	once     sync.Once
	lastErr  atomic.Pointer[error] // the last failure to load a configuration (nil after a success)
}

func newAgentSlot(a AgentSpec) *agentSlot {
	return &agentSlot{spec: a, label: strconv.FormatInt(a.Agent.ID, 10), route: upstreamHeader(a.Agent.ID), tried: make(chan struct{})}
}

// Server implements envoy.service.auth.v3.Authorization for every agent of a
// gateway. The credential's agent id picks the agent; each agent's engine is
// reloaded on its own (a configuration that does not validate leaves that agent's
// last good engine, or no engine, and never touches another agent's).
type Server struct {
	authv3.UnimplementedAuthorizationServer
	agents     map[int64]*agentSlot
	order      []*agentSlot // as configured
	shared     atomic.Pointer[Shared]
	engineOpts []policy.Option
	preparsed  *Preparsed
	build      sync.Mutex // serialises engine builds, so a module change and an agent's reload never interleave
	log        *slog.Logger
	metrics    *metrics
	reloads    *ReloadMetrics

	// lastSwap is the snapshot last installed through the single-agent API
	// (NewServer, Swap), for its tests.
	lastSwap atomic.Pointer[Snapshot]
	// origins are the gateway's own origins, normalized (GatewayOptions.
	// AllowedOrigins): a session-cookie request from any other is refused
	// (origin.go). Nil: every session-cookie request is refused.
	origins atomic.Pointer[[]string]
}

// GatewayOptions are NewGateway's optional parts.
type GatewayOptions struct {
	Log *slog.Logger
	// Registerer receives the decision and reload metrics (nil: not registered).
	Registerer prometheus.Registerer
	// EngineOptions are passed to every engine built (policy.WithDecisionCache
	// gives all agents one decision-cache bound).
	EngineOptions []policy.Option
	// AllowedOrigins are the gateway's public URLs (kubegate authz --public-url,
	// e.g. https://gateway.example:8443), normalized to origins (NormalizeOrigin).
	// A request with the session cookie whose Origin is not exactly one of them,
	// or whose Sec-Fetch-Site is not same-origin or none, is refused (403
	// cross_origin); with none, every session-cookie request is. PAT and OIDC
	// requests are not checked (origin.go says why).
	AllowedOrigins []string
	// Preparsed, if set, holds agent configurations parsed ahead of their first
	// load (see Preparsed).
	Preparsed *Preparsed
}

// NewGateway makes the Check service for agents. Each agent is served once its
// configuration is loaded (LoadAgentConfig or RunAgent); until then its requests
// get a 503 saying the gateway cannot serve that agent yet.
func NewGateway(agents []AgentSpec, shared *Shared, o GatewayOptions) (*Server, error) {
	if len(agents) == 0 {
		return nil, errors.New("extauthz: no agent to serve")
	}
	if err := shared.validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	rm, err := NewReloadMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{agents: map[int64]*agentSlot{}, engineOpts: o.EngineOptions, preparsed: o.Preparsed, log: o.Log, metrics: m, reloads: rm}
	if err := s.SetAllowedOrigins(o.AllowedOrigins); err != nil {
		return nil, err
	}
	for _, a := range agents {
		if a.Agent.ID <= 0 {
			return nil, fmt.Errorf("extauthz: agent id %d is not a positive number", a.Agent.ID)
		}
		if _, dup := s.agents[a.Agent.ID]; dup {
			return nil, fmt.Errorf("extauthz: agent %d is listed twice", a.Agent.ID)
		}
		slot := newAgentSlot(a)
		s.agents[a.Agent.ID] = slot
		s.order = append(s.order, slot)
	}
	s.shared.Store(shared)
	return s, nil
}

// NewServer makes the Check service for one agent from a complete snapshot; Swap
// replaces it. reg receives the service's metrics (nil: not registered).
func NewServer(agent policy.Agent, snap *Snapshot, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := snap.validate(); err != nil {
		return nil, err
	}
	s, err := NewGateway([]AgentSpec{{Agent: agent}}, &Shared{Authenticator: snap.Authenticator, Memberships: snap.Memberships}, GatewayOptions{Log: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	s.order[0].engine.Store(snap.Engine)
	s.order[0].markTried()
	s.lastSwap.Store(snap)
	return s, nil
}

// SetAllowedOrigins replaces the gateway's own origins (GatewayOptions.
// AllowedOrigins), for servers built by NewServer and for a changed --public-url.
func (s *Server) SetAllowedOrigins(publicURLs []string) error {
	origins, err := NormalizeOrigins(publicURLs)
	if err != nil {
		return fmt.Errorf("extauthz: %w", err)
	}
	s.origins.Store(&origins)
	return nil
}

func (s *Server) allowedOrigins() []string {
	if o := s.origins.Load(); o != nil {
		return *o
	}
	return nil
}

func (s *Snapshot) validate() error {
	if s == nil || s.Engine == nil || s.Authenticator == nil || s.Memberships == nil {
		return errors.New("extauthz: a snapshot needs an engine, an authenticator and a membership resolver")
	}
	return nil
}

// Swap installs a new snapshot for a one-agent Server atomically: requests in
// flight finish with the old one, later requests use the new one.
func (s *Server) Swap(snap *Snapshot) error {
	if err := snap.validate(); err != nil {
		return err
	}
	if len(s.order) != 1 {
		return errors.New("extauthz: Swap replaces the snapshot of a one-agent server; use SwapShared and LoadAgentConfig")
	}
	s.build.Lock()
	defer s.build.Unlock()
	sh := *s.shared.Load()
	sh.Authenticator, sh.Memberships = snap.Authenticator, snap.Memberships
	s.shared.Store(&sh)
	s.order[0].engine.Store(snap.Engine)
	s.order[0].config = snap.Engine.Config()
	s.lastSwap.Store(snap)
	return nil
}

// current is the snapshot last installed through NewServer or Swap.
func (s *Server) current() *Snapshot { return s.lastSwap.Load() }

// ReloadMetrics are the Server's reload counters, for the Reloader of the shared
// inputs (label "shared").
func (s *Server) ReloadMetrics() *ReloadMetrics { return s.reloads }

// Agents lists the agents the Server serves, in order.
func (s *Server) Agents() []AgentSpec {
	out := make([]AgentSpec, len(s.order))
	for i, slot := range s.order {
		out[i] = slot.spec
	}
	return out
}

// Ready reports whether agent id has a configuration in service.
func (s *Server) Ready(id int64) bool {
	slot, ok := s.agents[id]
	return ok && slot.engine.Load() != nil
}

// LastError is why agent id's last configuration was not loaded (nil when the
// last one loaded, or none was tried).
func (s *Server) LastError(id int64) error {
	if slot, ok := s.agents[id]; ok {
		if p := slot.lastErr.Load(); p != nil {
			return *p
		}
	}
	return nil
}

// LoadAgentConfig validates one version of an agent's configuration and, when
// it is valid, builds the agent's engine with the shared operator modules and
// puts it in service. A version that does not validate is logged and counted,
// and the agent keeps its last good engine (or stays unserved); no other agent
// is touched.
func (s *Server) LoadAgentConfig(ctx context.Context, id int64, v agentconfig.Version) error {
	slot, ok := s.agents[id]
	if !ok {
		return fmt.Errorf("extauthz: agent %d is not served", id)
	}
	defer slot.markTried()
	err := s.loadAgentConfig(ctx, slot, v)
	if err != nil {
		s.agentConfigFailed(slot, err)
		return err
	}
	return nil
}

func (s *Server) loadAgentConfig(ctx context.Context, slot *agentSlot, v agentconfig.Version) error {
	cfg := s.preparsed.take(v.Name, v.Data)
	if cfg == nil {
		var err error
		if cfg, err = policy.ParseAgentConfig(v.Name, v.Data); err != nil {
			return err
		}
	}
	s.build.Lock()
	defer s.build.Unlock()
	e, err := policy.NewEngine(ctx, slot.spec.Agent, cfg, s.shared.Load().Modules, s.engineOpts...)
	if err != nil {
		return err
	}
	first := slot.config == nil
	slot.config = cfg
	if old := slot.engine.Swap(e); old != nil {
		old.Release()
	}
	slot.failures.Reset()
	slot.lastErr.Store(nil)
	s.reloads.success(slot.label)
	ua := cfg.UserAccess
	msg := "agent configuration reloaded"
	if first {
		msg = "agent configuration loaded"
	}
	s.log.Info(msg, "agent", slot.spec.Agent.ID, "name", slot.spec.Name, "agent_config", v.Name,
		"access_as", ua.AccessAs, "projects", len(ua.Projects), "groups", len(ua.Groups))
	return nil
}

// agentConfigFailed logs (rate-limited) and counts a version of an agent's
// configuration that could not be read or did not validate.
func (s *Server) agentConfigFailed(slot *agentSlot, err error) {
	slot.lastErr.Store(&err)
	s.reloads.failure(slot.label)
	if ok, suppressed := slot.failures.Allow(); ok {
		if slot.engine.Load() == nil {
			s.log.Error("agent configuration rejected; the gateway does not serve this agent until a valid one loads (other agents are not affected)",
				"agent", slot.spec.Agent.ID, "name", slot.spec.Name, "err", err.Error(), "suppressed", suppressed)
			return
		}
		s.log.Error("agent configuration reload failed; the agent's last good configuration stays in service",
			"agent", slot.spec.Agent.ID, "name", slot.spec.Name, "err", err.Error(), "suppressed", suppressed)
	}
}

func (slot *agentSlot) markTried() { slot.once.Do(func() { close(slot.tried) }) }

// RunAgent delivers agent id's configuration from src until ctx ends: every
// version src reports is loaded (LoadAgentConfig), every read failure logged and
// counted as a failed reload of that agent.
func (s *Server) RunAgent(ctx context.Context, id int64, src agentconfig.Source) error {
	slot, ok := s.agents[id]
	if !ok {
		return fmt.Errorf("extauthz: agent %d is not served", id)
	}
	defer slot.markTried() // a source that gave up without a word does not hold up WaitTried
	return src.Run(ctx,
		func(v agentconfig.Version) { _ = s.LoadAgentConfig(ctx, id, v) },
		func(err error) { s.agentConfigFailed(slot, err); slot.markTried() })
}

// WaitTried waits until every agent's first configuration was tried (loaded or
// refused) or ctx ends, and returns the agents then in service.
func (s *Server) WaitTried(ctx context.Context) (ready []int64) {
	for _, slot := range s.order {
		select {
		case <-slot.tried:
		case <-ctx.Done():
		}
	}
	for _, slot := range s.order {
		if slot.engine.Load() != nil {
			ready = append(ready, slot.spec.Agent.ID)
		}
	}
	return ready
}

// SwapShared installs a new identity source and operator modules. New modules
// rebuild the engine of every agent that has a configuration: either every engine
// builds and all are swapped in, or nothing changes and the error says which agent
// failed. The same modules (a directory change) keep every engine and its warm
// decisions: an engine depends on the agent, its configuration and the modules
// only, and its decisions are keyed by the identity and memberships they were made
// from, so a changed directory yields new keys rather than stale answers.
func (s *Server) SwapShared(ctx context.Context, sh *Shared) error {
	if err := sh.validate(); err != nil {
		return err
	}
	s.build.Lock()
	defer s.build.Unlock()
	if cur := s.shared.Load(); cur != nil && slices.Equal(cur.Modules, sh.Modules) {
		s.shared.Store(sh)
		return nil
	}
	fresh := make(map[*agentSlot]*policy.Engine, len(s.order))
	for _, slot := range s.order {
		if slot.config == nil {
			continue
		}
		e, err := policy.NewEngine(ctx, slot.spec.Agent, slot.config, sh.Modules, s.engineOpts...)
		if err != nil {
			for _, e := range fresh {
				e.Release()
			}
			return fmt.Errorf("agent %d: %w", slot.spec.Agent.ID, err)
		}
		fresh[slot] = e
	}
	s.shared.Store(sh)
	for slot, e := range fresh {
		if old := slot.engine.Swap(e); old != nil {
			old.Release()
		}
	}
	return nil
}

// encodedIdentity returns imp encoded for the hand-off (nil in agent mode). The
// policy engine encodes it once per identity and configuration and keeps it with
// the decision (policy.Impersonation), bounded by --decision-cache-bytes.
func encodedIdentity(imp *policy.Impersonation) *handoff.Identity {
	if imp == nil {
		return nil
	}
	return imp.Handoff()
}

// Check decides one request. It never returns an error to Envoy: every failure
// becomes a denial with a Kubernetes Status body, and a panic is recovered into one.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (resp *authv3.CheckResponse, _ error) {
	start := time.Now()
	var o outcome
	attrs := req.GetAttributes().GetRequest().GetHttp()
	discovery := discoveryRequest(attrs.GetMethod(), attrs.GetPath())
	defer func() {
		if p := recover(); p != nil {
			o = outcome{reason: ReasonMisconfigured, message: "internal error", cause: fmt.Errorf("panic: %v", p)}
			resp = denyResponse(o.reason, o.message, discovery)
		}
		s.observe(ctx, o, req.GetAttributes().GetRequest().GetHttp().GetId(), time.Since(start))
	}()

	r, err := requestFromCheck(req)
	if err != nil {
		o = outcome{reason: ReasonMisconfigured, message: "the gateway is misconfigured; tell its operator", cause: err}
		return denyResponse(o.reason, o.message, discovery), nil
	}
	switch {
	case explainRequest(r.Target):
		o, resp = explainCheck(ctx, s, r)
		return resp, nil
	case agentsRequest(r.Target):
		o, resp = agentsCheck(ctx, s, r)
		return resp, nil
	}
	o = check(ctx, s, r)
	if o.reason != ReasonAllowed {
		return denyResponse(o.reason, o.message, discovery), nil
	}
	resp, err = allowResponse(o, decisionID(r.ID), encodedIdentity(o.decision.Impersonate))
	if err != nil {
		o = o.with(outcome{reason: Reason(policy.ReasonPolicyError), message: "the gateway's decision could not be encoded", cause: err})
		return denyResponse(o.reason, o.message, discovery), nil
	}
	return resp, nil
}

// decisionID reuses Envoy's request id so the decision can be found from Envoy's
// access log; without one it makes a random id.
func decisionID(envoyID string) string {
	if envoyID != "" {
		return envoyID
	}
	return rand.Text()
}

// observe counts the outcome and writes the audit line: who, what, result, why —
// never a credential.
func (s *Server) observe(ctx context.Context, o outcome, id string, took time.Duration) {
	result := "denied"
	switch o.reason {
	case ReasonAllowed:
		result = "allowed"
	case ReasonExplained, ReasonAgentsListed:
		result = "explained" // answered by the gateway itself; nothing went upstream
	}
	// The agent label is a served agent's id, or "" before one is known: an id
	// a client made up never becomes a label value.
	agentLabel := ""
	if o.agent != nil {
		agentLabel = o.agent.label
	}
	s.metrics.decisions.WithLabelValues(agentLabel, result, string(o.reason)).Inc()
	s.metrics.duration.WithLabelValues(result).Observe(took.Seconds())

	attrs := []slog.Attr{
		slog.String("decision_id", id),
		slog.String("result", result),
		slog.String("reason", string(o.reason)),
		slog.Int("status", statusFor(o.reason)),
		slog.Int64("agent", o.credAgent),
		slog.String("access_type", string(o.credType)),
		slog.String("verb", o.request.Verb),
		slog.String("api_group", o.request.APIGroup),
		slog.String("resource", o.request.Resource),
		slog.String("subresource", o.request.Subresource),
		slog.String("namespace", o.request.Namespace),
		slog.String("name", o.request.Name),
		slog.Duration("took", took),
	}
	if o.identity != nil {
		attrs = append(attrs, slog.String("user", o.identity.User.Username), slog.Int64("user_id", o.identity.User.ID))
	}
	if o.decision != nil {
		attrs = append(attrs, slog.String("access_as", string(o.decision.AccessAs)))
	}
	if o.cause != nil {
		attrs = append(attrs, slog.String("cause", o.cause.Error()))
	}
	level := slog.LevelInfo
	if statusFor(o.reason) >= 500 {
		level = slog.LevelError
	}
	s.log.LogAttrs(ctx, level, "decision", attrs...)
}
