package cluster

import (
	"context"
	"strings"
	"testing"
)

// TestSimulatePodRefusesBadInput: a simulation that would make KWOK do nothing, or
// dial nowhere, is refused before anything is sent to the API server (this cluster
// has none: a request would fail with a connection error instead).
func TestSimulatePodRefusesBadInput(t *testing.T) {
	c := &Cluster{URL: "https://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		sim  PodSimulation
		want string
	}{
		{"empty", PodSimulation{}, "the simulation is empty"},
		{"target without a port", PodSimulation{PortForward: map[int32]string{80: "127.0.0.1"}}, `is "127.0.0.1", want host:port`},
		{"target with a bad port", PodSimulation{PortForward: map[int32]string{80: "127.0.0.1:http"}}, `want host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.SimulatePod(context.Background(), "ns", "pod", tc.sim)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SimulatePod = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
