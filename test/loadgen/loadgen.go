// Package loadgen is the benchmarks' load harness: it runs a call from a number of
// concurrent callers for b.N calls in all, and reports latency percentiles and
// throughput, plus the ratio to a floor measured in the same run (a no-op server,
// a direct API-server request). Figures are reported, never asserted.
package loadgen

import (
	"sort"
	"sync"
	"testing"
	"time"
)

// Result is one measured run.
type Result struct {
	P50, P99 time.Duration
	PerSec   float64
}

// Run calls fn b.N times in all from `callers` goroutines and reports p50-µs,
// p99-µs and ops/s on b.
func Run(b *testing.B, callers int, fn func() error) Result {
	b.Helper()
	per := make([][]time.Duration, callers)
	next := make(chan struct{}, b.N)
	for range b.N {
		next <- struct{}{}
	}
	close(next)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				t0 := time.Now()
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
				per[c] = append(per[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, p := range per {
		all = append(all, p...)
	}
	if len(all) == 0 {
		return Result{}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := Result{P50: all[len(all)/2], P99: all[len(all)*99/100], PerSec: float64(len(all)) / elapsed.Seconds()}
	b.ReportMetric(float64(r.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.P99.Microseconds()), "p99-µs")
	b.ReportMetric(r.PerSec, "ops/s")
	return r
}

// Compare reports r against a floor measured in the same run: p50 and p99 as
// multiples of the floor's, and throughput as a fraction of the floor's.
func (r Result) Compare(b *testing.B, floor Result) {
	b.Helper()
	if floor.P50 > 0 {
		b.ReportMetric(float64(r.P50)/float64(floor.P50), "p50-x-floor")
	}
	if floor.P99 > 0 {
		b.ReportMetric(float64(r.P99)/float64(floor.P99), "p99-x-floor")
	}
	if floor.PerSec > 0 {
		b.ReportMetric(r.PerSec/floor.PerSec, "ops-of-floor")
	}
}
