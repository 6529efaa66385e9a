package soak

import (
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// write puts report.txt, report.svg and records.csv in dir.
func (r *Report) write(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "report.txt"), []byte(r.Text()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.svg"), []byte(r.SVG()), 0o644); err != nil {
		return err
	}
	var samples strings.Builder
	samples.WriteString("t_s,service,pid,rss_bytes,threads,fds,goroutines\n")
	for _, s := range r.Samples {
		fmt.Fprintf(&samples, "%.1f,%s,%d,%d,%d,%d,%d\n", s.At.Sub(r.Start).Seconds(), s.Service, s.PID, s.RSS, s.Threads, s.FDs, s.Goroutines)
	}
	if err := os.WriteFile(filepath.Join(dir, "samples.csv"), []byte(samples.String()), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "records.csv"))
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"seq", "kind", "user", "expect", "start_ms", "duration_ms", "code", "cancelled", "error"})
	for _, rec := range r.Records {
		_ = w.Write([]string{strconv.FormatInt(rec.Seq, 10), rec.Kind, rec.User, strconv.Itoa(rec.Expect),
			strconv.FormatInt(rec.Start.Sub(r.Start).Milliseconds(), 10), strconv.FormatFloat(float64(rec.Duration().Microseconds())/1000, 'f', 3, 64),
			strconv.Itoa(rec.Code), strconv.FormatBool(rec.Cancelled), rec.Err})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Text is the human-readable report.
func (r *Report) Text() string {
	var b strings.Builder
	verdict := "PASSED"
	if !r.Passed() {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "kubegate soak: %s\n", verdict)
	fmt.Fprintf(&b, "run: %s of traffic (%s warm-up), %d member users of the large directory, %d workers (pause %s), %d watches, %d logs -f, kubectl %v; grace after each fault window %s\n",
		r.End.Sub(r.Start).Round(time.Second), r.Config.WarmUp, r.Members, r.Config.Workers, r.Config.Pause, r.Config.Watchers, r.Config.Follows, r.Config.Kubectl, r.Config.Grace)

	total, ok, refused, tolerated := 0, 0, 0, 0
	for _, k := range r.Kinds {
		total += k.Total
		ok += k.OK
		refused += k.Refused
		tolerated += k.FailedInWindow
	}
	fmt.Fprintf(&b, "\nrequests: %d (allowed and served %d, refused by design as expected %d, failed closed inside fault windows %d = %.4f of all)\n",
		total, ok, refused, tolerated, ratio(tolerated, total))
	fmt.Fprintf(&b, "%-16s %7s %7s %8s %9s %9s %9s  %s\n", "kind", "total", "ok", "refused", "in-window", "p50", "p99", "statuses")
	for _, k := range r.Kinds {
		fmt.Fprintf(&b, "%-16s %7d %7d %8d %9d %9s %9s  %s\n", k.Kind, k.Total, k.OK, k.Refused, k.FailedInWindow,
			k.P50.Round(10*time.Microsecond), k.P99.Round(10*time.Microsecond), codes(k.Codes))
	}
	if r.Floor[0] > 0 && r.ProbeClean[0] > 0 {
		fmt.Fprintf(&b, "gateway get outside fault windows: p50 %s = %.1f× the floor, p99 %s = %.1f× the floor (floor: the same get straight to the API server in this run, p50 %s, p99 %s)\n",
			r.ProbeClean[0].Round(10*time.Microsecond), float64(r.ProbeClean[0])/float64(r.Floor[0]), r.ProbeClean[1].Round(10*time.Microsecond), float64(r.ProbeClean[1])/float64(r.Floor[1]),
			r.Floor[0].Round(10*time.Microsecond), r.Floor[1].Round(10*time.Microsecond))
	}
	a := r.Audit
	fmt.Fprintf(&b, "\naudit cross-check: %d requests logged by the API server from the gateway; %d matched a harness record by marker, %d came from the harness's kubectl\n", a.Events, a.Marked, a.Kubectl)
	fmt.Fprintf(&b, "  through without a decision: %d; allowed that the model denies (or refused-by-design requests that reached it): %d; unknown: %d\n", a.WithoutDecision, a.NotAllowed, a.Unknown)
	fmt.Fprintf(&b, "  with a decision whose impersonation the API server refused (403 while its RBAC cache syncs after a restart): %d\n", a.ImpersonationRefused)
	fmt.Fprintf(&b, "  served without an audit event: %d outside apiserver-kill windows, %d inside (the event died with the process)\n", a.SuccessWithoutLog, a.LostInAPIServerKill)

	fmt.Fprintf(&b, "\nfaults (window = injection; +%s grace; streams = long watches and logs -f that ended in the window):\n", r.Config.Grace)
	fmt.Fprintf(&b, "%-18s %9s %9s %10s %8s  %-22s %s\n", "fault", "at", "window", "recovery", "streams", "failed (allowed reqs)", "detail")
	for _, f := range r.Faults {
		rec := "no failure"
		if f.Recovery > 0 {
			rec = f.Recovery.Round(time.Millisecond).String()
		}
		strict := ""
		if f.Strict {
			strict = " [strict: no failure allowed]"
		}
		fmt.Fprintf(&b, "%-18s %9s %9s %10s %8d  %-22s %s%s\n", f.Name, f.Start.Sub(r.Start).Round(100*time.Millisecond), f.End.Sub(f.Start).Round(100*time.Millisecond), rec, f.StreamsCut, codes(f.Failed), f.Detail, strict)
	}
	if len(r.Rotations) > 0 {
		fmt.Fprintf(&b, "agent-token rotations (xds-kill-rotate) among %d upstream requests:", r.Upstream)
		for _, rot := range r.Rotations {
			fmt.Fprintf(&b, " new token upstream after %s (old one %d times after that);", rot.Lag.Round(time.Millisecond), rot.OldAfter)
		}
		b.WriteString("\n")
	}
	s := r.Streams
	fmt.Fprintf(&b, "\nlong streams: %d ends (%d clean, %d cut inside fault windows), %d never reconnected, longest reconnect %s\n",
		s.Ends, s.Clean, s.Unclean, s.NotReconnected, s.MaxReconnect.Round(time.Millisecond))
	fmt.Fprintf(&b, "  watches: %d ticker updates seen, %d skipped, %d relists (410 Gone); logs -f: %d lines, %d skipped\n", s.WatchEvents, s.Gaps, s.Relists, s.Lines, s.LineGaps)

	left := ""
	if r.Config.Settle > 0 {
		left = " and fault windows +15 s"
	}
	fmt.Fprintf(&b, "\nresources after warm-up (least-squares slope, one intercept per process lifetime, each lifetime's first %s%s left out):\n", max(r.Config.Settle, r.Config.WarmUp), left)
	fmt.Fprintf(&b, "%-8s %-11s %8s %14s %14s %14s %s\n", "service", "metric", "samples", "median", "growth/run", "bound", "per hour")
	for _, sl := range r.Resources {
		mark := "ok"
		switch {
		case !sl.Checked:
			mark = "reported only"
		case !sl.OK():
			mark = "OVER BOUND"
		}
		fmt.Fprintf(&b, "%-8s %-11s %8d %14s %14s %14s %s  %s\n", sl.Service, sl.Metric, sl.Samples, human(sl.Metric, sl.Median), human(sl.Metric, sl.Growth), human(sl.Metric, sl.Bound), human(sl.Metric, sl.PerHour), mark)
	}
	for _, sec := range []struct {
		name string
		list []string
	}{{"SECURITY violations", r.Security}, {"availability violations", r.Availability}, {"stream and resource violations", r.Other},
		{fmt.Sprintf("incidents: allowed requests that failed closed where no failure was due (budget %d)", r.Config.IncidentBudget), r.Incidents}} {
		fmt.Fprintf(&b, "\n%s: %d\n", sec.name, len(sec.list))
		for i, v := range sec.list {
			if i == 20 {
				fmt.Fprintf(&b, "  ... and %d more\n", len(sec.list)-20)
				break
			}
			fmt.Fprintf(&b, "  %s\n", v)
		}
	}
	return b.String()
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func codes(m map[int]int) string {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := strconv.Itoa(k)
		if k == 0 {
			name = "cut"
		}
		parts = append(parts, fmt.Sprintf("%s×%d", name, m[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func human(metric string, v float64) string {
	if metric == "rss-bytes" {
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
	return fmt.Sprintf("%.1f", v)
}

// SVG plots latency (p50, p99 of allowed short requests), the error rate and each
// process's resident memory over time, one panel each, with the fault windows
// shaded and named.
func (r *Report) SVG() string {
	const (
		width, left, right = 1000.0, 70.0, 20.0
		panelH, gapH, top  = 170.0, 40.0, 40.0
	)
	span := r.End.Sub(r.Start).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 { return left + (width-left-right)*t.Sub(r.Start).Seconds()/span }
	bucket := time.Duration(math.Max(1, math.Round(span/200))) * time.Second
	n := int(r.End.Sub(r.Start)/bucket) + 1
	lat := make([][]float64, n)
	reqs, fails := make([]int, n), make([]int, n)
	for _, rec := range r.Records {
		if rec.Cancelled || rec.Expect != 0 || rec.Start.Before(r.Start) {
			continue
		}
		i := int(rec.Start.Sub(r.Start) / bucket)
		if i >= n {
			continue
		}
		reqs[i]++
		if !rec.OK() {
			fails[i]++
		}
		if rec.OK() && (rec.Kind == KindGet || rec.Kind == KindList || rec.Kind == KindProbe) {
			lat[i] = append(lat[i], float64(rec.Duration().Microseconds())/1000)
		}
	}
	var p50, p99, errRate []point
	for i := range n {
		t := r.Start.Add(time.Duration(i)*bucket + bucket/2)
		if len(lat[i]) > 0 {
			slices.Sort(lat[i])
			p50 = append(p50, point{t, lat[i][len(lat[i])/2]})
			p99 = append(p99, point{t, lat[i][len(lat[i])*99/100]})
		}
		if reqs[i] > 0 {
			errRate = append(errRate, point{t, 100 * float64(fails[i]) / float64(reqs[i])})
		}
	}
	mem := map[string][]point{}
	for _, s := range r.Samples {
		mem[s.Service] = append(mem[s.Service], point{s.At, float64(s.RSS) / (1 << 20)})
	}
	height := top + 3*panelH + 2*gapH + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14">kubegate soak, %s: latency, error rate and memory; fault windows (+grace) shaded: red may fail closed, blue must cost nothing</text>`+"\n", left, r.Start.UTC().Format(time.RFC3339))
	panels := []struct {
		title  string
		unit   string
		series []namedSeries
	}{
		{"latency of allowed get/list (ms)", "ms", []namedSeries{{"p50", "#1f77b4", p50, 3 * bucket / 2}, {"p99", "#d62728", p99, 3 * bucket / 2}}},
		{"allowed requests failing (%)", "%", []namedSeries{{"failed", "#d62728", errRate, 3 * bucket / 2}}},
		{"resident memory (MiB)", "MiB", memSeries(mem, 3*r.Config.Sample)},
	}
	for pi, p := range panels {
		y0 := top + float64(pi)*(panelH+gapH)
		maxV := 0.0
		for _, s := range p.series {
			for _, pt := range s.pts {
				maxV = math.Max(maxV, pt.v)
			}
		}
		if maxV == 0 {
			maxV = 1
		}
		maxV *= 1.1
		y := func(v float64) float64 { return y0 + panelH - panelH*v/maxV }
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12">%s</text>`+"\n", left, y0-6, p.title)
		for _, f := range r.Faults {
			fill := "#fdd"
			if f.Strict {
				fill = "#ddf"
			}
			x1, x2 := x(f.Start), x(f.End.Add(r.Config.Grace))
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" opacity="0.7"/>`+"\n", x1, y0, math.Max(x2-x1, 1), panelH, fill)
			if pi == 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n", x1+9, y0+panelH-4, x1+9, y0+panelH-4, f.Name)
			}
		}
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.1f" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`+"\n", left, y0, width-left-right, panelH)
		for _, frac := range []float64{0, 0.5, 1} {
			v := maxV / 1.1 * frac
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-4, y(v)+4, v)
		}
		for si, s := range p.series {
			var path strings.Builder
			for i, pt := range s.pts {
				cmd := "L"
				if i == 0 || pt.t.Sub(s.pts[i-1].t) > s.gap {
					cmd = "M"
				}
				fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, x(pt.t), y(pt.v))
			}
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.2"/>`+"\n", strings.TrimSpace(path.String()), s.color)
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" fill="%s">%s</text>`+"\n", width-right-80, y0+14+12*float64(si), s.color, s.name)
		}
	}
	yAxis := top + 3*panelH + 2*gapH + 14
	for i := 0; i <= 10; i++ {
		t := r.Start.Add(time.Duration(float64(r.End.Sub(r.Start)) * float64(i) / 10))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%ss</text>`+"\n", x(t), yAxis, strconv.Itoa(int(t.Sub(r.Start).Seconds())))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

type point struct {
	t time.Time
	v float64
}

type namedSeries struct {
	name, color string
	pts         []point
	gap         time.Duration // a longer pause between points breaks the line (no data)
}

func memSeries(m map[string][]point, gap time.Duration) []namedSeries {
	colors := map[string]string{"authz": "#2ca02c", "extproc": "#9467bd", "xds": "#ff7f0e"}
	var out []namedSeries
	for _, svc := range []string{"authz", "extproc", "xds"} {
		if pts, ok := m[svc]; ok {
			out = append(out, namedSeries{svc, colors[svc], pts, gap})
		}
	}
	return out
}
