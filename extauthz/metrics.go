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
			Help: "Check decisions by result (allowed, denied) and reason.",
		}, []string{"result", "reason"}),
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
