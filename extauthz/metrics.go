package extauthz

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	decisions *prometheus.CounterVec
	duration  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubegate_authz_decisions_total",
			Help: "Check decisions by agent (the served agent's id; empty when refused before one was known), result (allowed, denied, explained) and reason.",
		}, []string{"agent", "result", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kubegate_authz_check_duration_seconds",
			Help:    "Time to answer one Check, by result.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.decisions, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("extauthz metrics: %w", err)
			}
		}
	}
	return m, nil
}

// SharedLabel is the agent label of reloads of the inputs every agent shares
// (the directory, the operator policy); new operator modules rebuild every
// agent's engine, a new directory alone keeps them.
const SharedLabel = "shared"

// ReloadMetrics count reloads by agent (an agent's id for its agent
// configuration, SharedLabel for the shared inputs) and result (success,
// failure, unchanged).
type ReloadMetrics struct {
	reloads     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
}

// NewReloadMetrics makes the reload metrics and registers them with reg (nil: not
// registered).
func NewReloadMetrics(reg prometheus.Registerer) (*ReloadMetrics, error) {
	m := &ReloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubegate_authz_reloads_total",
			Help: "Reloads by agent (an agent's id for its agent configuration; \"shared\" for the directory and operator policy) and result (success, failure, unchanged).",
		}, []string{"agent", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubegate_authz_last_reload_success_timestamp_seconds",
			Help: "When the configuration in service was built, by agent (as kubegate_authz_reloads_total).",
		}, []string{"agent"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reloads, m.lastSuccess} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("reload metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *ReloadMetrics) success(agent string) {
	m.reloads.WithLabelValues(agent, "success").Inc()
	m.lastSuccess.WithLabelValues(agent).SetToCurrentTime()
}

func (m *ReloadMetrics) failure(agent string)   { m.reloads.WithLabelValues(agent, "failure").Inc() }
func (m *ReloadMetrics) unchanged(agent string) { m.reloads.WithLabelValues(agent, "unchanged").Inc() }
