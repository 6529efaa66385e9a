package extauthz

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/policy"
)

// Server implements envoy.service.auth.v3.Authorization for one agent.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	agent   policy.Agent
	state   atomic.Pointer[Snapshot]
	log     *slog.Logger
	metrics *metrics
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

// NewServer makes the Check service. snap is the initial state; Swap replaces it.
// reg receives the service's metrics (nil: not registered).
func NewServer(agent policy.Agent, snap *Snapshot, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := snap.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{agent: agent, log: log, metrics: m}
	s.state.Store(snap)
	return s, nil
}

func (s *Snapshot) validate() error {
	if s == nil || s.Engine == nil || s.Authenticator == nil || s.Memberships == nil {
		return errors.New("extauthz: a snapshot needs an engine, an authenticator and a membership resolver")
	}
	return nil
}

// Swap installs a new snapshot atomically: requests in flight finish with the old
// one, later requests use the new one.
func (s *Server) Swap(snap *Snapshot) error {
	if err := snap.validate(); err != nil {
		return err
	}
	s.state.Store(snap)
	return nil
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
	if explainRequest(r.Target) {
		o, resp = explainCheck(ctx, s.agent, s.state.Load(), r)
		return resp, nil
	}
	o = check(ctx, s.agent, s.state.Load(), r)
	if o.reason != ReasonAllowed {
		return denyResponse(o.reason, o.message, discovery), nil
	}
	resp, err = allowResponse(o, decisionID(r.ID), encodedIdentity(o.decision.Impersonate))
	if err != nil {
		o = outcome{reason: Reason(policy.ReasonPolicyError), message: "the gateway's decision could not be encoded", cause: err}
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
	case ReasonExplained:
		result = "explained" // answered by the explain endpoint; nothing went upstream
	}
	s.metrics.decisions.WithLabelValues(result, string(o.reason)).Inc()
	s.metrics.duration.WithLabelValues(result).Observe(took.Seconds())

	attrs := []slog.Attr{
		slog.String("decision_id", id),
		slog.String("result", result),
		slog.String("reason", string(o.reason)),
		slog.Int("status", statusFor(o.reason)),
		slog.Int64("agent", s.agent.ID),
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
