package extproc

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration prometheus.Histogram
	// The two counters of continued requests, resolved once (every request counts).
	continuedUser, continuedAgent prometheus.Counter
}

func (m *metrics) continued(accessAs string) {
	if accessAs == "user" {
		m.continuedUser.Inc()
	} else {
		m.continuedAgent.Inc()
	}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubegate_extproc_requests_total",
			Help: "Request-headers messages processed, by result (continued, denied) and access mode or denial reason.",
		}, []string{"result", "mode"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubegate_extproc_headers_duration_seconds",
			Help:    "Time to build the header mutation for one request.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005},
		}),
	}
	m.continuedUser = m.requests.WithLabelValues("continued", "user")
	m.continuedAgent = m.requests.WithLabelValues("continued", "agent")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("extproc metrics: %w", err)
			}
		}
	}
	return m, nil
}
