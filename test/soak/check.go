package soak

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/stack"
)

// Report is the outcome of a run: its figures and every violation found. The
// security checks are exact; availability is only tolerant inside fault windows.
type Report struct {
	Start, End time.Time
	Config     Config
	Members    int // member users in the traffic
	Records    []Record
	Faults     []FaultResult
	Kinds      []KindStats
	Audit      AuditStats
	Streams    StreamStats
	Resources  []Slope
	Samples    []Sample
	// Upstream counts the requests the data plane sent the API server; Rotations
	// are the agent-token rotations' figures.
	Upstream  int
	Rotations []RotationResult
	// Floor is the probe's get straight to the API server (p50, p99), measured in
	// the same run; ProbeClean is the gateway probe's, both outside fault windows.
	Floor, ProbeClean [2]time.Duration

	// Security: refused-by-design requests that succeeded or reached the API server,
	// requests through without a decision, decisions the model does not allow.
	Security []string
	// Availability: allowed requests that failed outside a fault window, or inside
	// one other than closed (401, 403, 503), or inside a strict window at all.
	Availability []string
	// Streams and resources: stream cuts outside windows, streams that never came
	// back, skipped updates, resource growth beyond its bound.
	Other []string
	// Incidents are allowed requests that failed closed where no failure was due:
	// outside every fault window, or inside a strict one. More than
	// Config.IncidentBudget of them are availability violations.
	Incidents []string
}

// Passed says no check found a violation.
func (r *Report) Passed() bool {
	return len(r.Security) == 0 && len(r.Availability) == 0 && len(r.Other) == 0
}

// FaultResult is one fault window with what it cost.
type FaultResult struct {
	FaultWindow
	// Recovery is from the fault's start to the first successful probe after the
	// last failed one (0: the probe never failed).
	Recovery time.Duration
	// Failed counts allowed requests that failed in the window (plus grace), by status.
	Failed map[int]int
	// StreamsCut counts long streams (watches, logs -f) that ended in the window.
	StreamsCut int
}

// RotationResult is one agent-token rotation: how long until the data plane sent
// the new token upstream, and how many requests still carried the old one after
// that (requests already past ext_proc, or an old connection's).
type RotationResult struct {
	At       time.Time
	Lag      time.Duration
	OldAfter int
}

// KindStats are the figures of one kind of request.
type KindStats struct {
	Kind               string
	Total, OK, Refused int // Refused: with the expected status
	FailedInWindow     int // tolerated: closed, inside a fault window
	P50, P99           time.Duration
	Codes              map[int]int
	FirstErr           string
	expectDeny         bool
}

// AuditStats is the cross-check of the API server's audit log.
type AuditStats struct {
	Events          int // distinct requests the API server logged from the gateway (the agent identity)
	Marked          int // of which carried a harness marker and matched a record
	Kubectl         int // of which came from the harness's kubectl
	WithoutDecision int // through the gateway without impersonation
	// ImpersonationRefused counts requests with a decision whose impersonation the
	// API server refused (403 "cannot impersonate": a restarted API server before
	// its RBAC caches sync); nothing of them was served.
	ImpersonationRefused int
	NotAllowed           int // impersonating a user the model does not allow, or a refused-by-design request
	Unknown              int // neither marked nor kubectl
	SuccessWithoutLog    int // allowed requests that succeeded with no event, outside apiserver-kill windows
	LostInAPIServerKill  int // the same, inside an apiserver-kill window (the event died with the process)
}

// StreamStats are the long watches' and logs -f's figures.
type StreamStats struct {
	Ends, Clean, Unclean, NotReconnected int
	MaxReconnect                         time.Duration
	WatchEvents, Gaps, Relists           int
	Lines, LineGaps                      int
}

// Slope is a fitted growth rate of one resource of one kubegate process over the
// run after warm-up (per-process-lifetime intercepts, one common slope).
type Slope struct {
	Service, Metric string
	PerHour         float64 // units per hour
	Growth          float64 // over the measured span
	Bound           float64
	Median          float64
	Samples         int
	Checked         bool
}

// OK says the growth is within the bound.
func (s Slope) OK() bool { return !s.Checked || s.Growth <= s.Bound }

// closedCodes are the statuses a failing request may end with: refused, never
// served open. 504 is the data plane's answer when ext_proc misses its
// message_timeout (1 s): the request was not forwarded either.
var closedCodes = map[int]bool{http.StatusUnauthorized: true, http.StatusForbidden: true, http.StatusServiceUnavailable: true, http.StatusGatewayTimeout: true}

func (r *run) check(ctx context.Context) (*Report, error) {
	rep := &Report{Start: r.begin, End: r.endAt, Config: r.cfg, Members: len(r.members), Samples: r.samples}
	rep.Config.Logf, rep.Config.Started = nil, nil
	rep.Records = r.rec.Records()
	sort.Slice(rep.Records, func(i, j int) bool { return rep.Records[i].Start.Before(rep.Records[j].Start) })
	grace := r.cfg.Grace
	inWindow := func(rec Record) (FaultWindow, bool) {
		for _, w := range r.faults {
			if !rec.Start.After(w.End.Add(grace)) && !rec.End.Before(w.Start) {
				return w, true
			}
		}
		return FaultWindow{}, false
	}

	// 1. Every request against the model and the windows.
	kinds := map[string]*KindStats{}
	durations := map[string][]time.Duration{}
	for _, rec := range rep.Records {
		if rec.Cancelled {
			continue
		}
		k := kinds[rec.Kind]
		if k == nil {
			k = &KindStats{Kind: rec.Kind, Codes: map[int]int{}, expectDeny: rec.Expect != 0}
			kinds[rec.Kind] = k
		}
		k.Total++
		k.Codes[rec.Code]++
		durations[rec.Kind] = append(durations[rec.Kind], rec.Duration())
		w, in := inWindow(rec)
		switch {
		case rec.Expect != 0 && rec.OK():
			rep.Security = append(rep.Security, fmt.Sprintf("%s #%d as %s at %s: refused by design, yet it succeeded", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano)))
		case rec.Expect != 0 && rec.Code == rec.Expect:
			k.Refused++
		case rec.Expect != 0 && in && !w.Strict && rec.Code == http.StatusServiceUnavailable:
			k.FailedInWindow++
		case rec.Expect != 0:
			rep.Availability = append(rep.Availability, fmt.Sprintf("%s #%d as %s at %s: refused with %d (%s), want %d", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), rec.Code, rec.Err, rec.Expect))
		case rec.OK():
			k.OK++
		case in && !w.Strict && (closedCodes[rec.Code] || rec.Code == 0 && cutTolerated(rec.Kind, w.Name)):
			k.FailedInWindow++
		case in && w.Strict && closedCodes[rec.Code]:
			rep.Incidents = append(rep.Incidents, fmt.Sprintf("%s #%d as %s at %s: failed closed (%d %s) during %s, which must cost nothing", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), rec.Code, rec.Err, w.Name))
		case in && w.Strict:
			rep.Availability = append(rep.Availability, fmt.Sprintf("%s #%d as %s at %s: failed (%d %s) during %s, which must cost nothing", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), rec.Code, rec.Err, w.Name))
		case in:
			rep.Availability = append(rep.Availability, fmt.Sprintf("%s #%d as %s at %s: failed during %s, but not closed: %d %s", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), w.Name, rec.Code, rec.Err))
		case closedCodes[rec.Code]:
			rep.Incidents = append(rep.Incidents, fmt.Sprintf("%s #%d as %s at %s: failed closed outside every fault window: %d %s", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), rec.Code, rec.Err))
		default:
			rep.Availability = append(rep.Availability, fmt.Sprintf("%s #%d as %s at %s: failed outside every fault window, and not closed: %d %s", rec.Kind, rec.Seq, rec.User, rec.Start.Format(time.RFC3339Nano), rec.Code, rec.Err))
		}
		if !rec.OK() && rec.Code != rec.Expect && k.FirstErr == "" {
			k.FirstErr = fmt.Sprintf("%d %s", rec.Code, rec.Err)
		}
	}
	for name, k := range kinds {
		d := durations[name]
		slices.Sort(d)
		k.P50, k.P99 = d[len(d)/2], d[len(d)*99/100]
		rep.Kinds = append(rep.Kinds, *k)
	}
	sort.Slice(rep.Kinds, func(i, j int) bool { return rep.Kinds[i].Kind < rep.Kinds[j].Kind })
	if len(rep.Incidents) > r.cfg.IncidentBudget {
		rep.Availability = append(rep.Availability, fmt.Sprintf("%d allowed requests failed closed where no failure was due (budget %d):", len(rep.Incidents), r.cfg.IncidentBudget))
		rep.Availability = append(rep.Availability, rep.Incidents...)
	}

	// The floor: the same get straight to the API server, against the gateway's
	// probe outside every window.
	r.floorMu.Lock()
	rep.Floor = percentiles(r.floor)
	r.floorMu.Unlock()
	var clean []time.Duration
	for _, rec := range rep.Records {
		if _, in := inWindow(rec); rec.Kind == KindProbe && rec.OK() && !in {
			clean = append(clean, rec.Duration())
		}
	}
	rep.ProbeClean = percentiles(clean)

	// 2. The audit log against the record and the model.
	if err := r.checkAudit(ctx, rep, inWindow); err != nil {
		return nil, err
	}

	// The user's credential never goes upstream; each agent-token rotation takes
	// effect (the first request after it with the new token, and how many still
	// carried the old one after that).
	r.upMu.Lock()
	rep.Upstream = len(r.upstream)
	for _, u := range r.upstream {
		if u.token < 0 {
			rep.Security = append(rep.Security, fmt.Sprintf("at %s the data plane sent the API server a request whose Authorization is not the agent's token", u.at.Format(time.RFC3339Nano)))
		}
	}
	for i, rot := range r.rotations {
		rr := RotationResult{At: rot.at}
		until := r.endAt
		if i+1 < len(r.rotations) {
			until = r.rotations[i+1].at // the next rotation makes the old token new again
		}
		for _, u := range r.upstream {
			switch {
			case u.at.Before(rot.at) || !u.at.Before(until):
			case rr.Lag == 0 && u.token == rot.token:
				rr.Lag = u.at.Sub(rot.at)
			case rr.Lag > 0 && u.token != rot.token && u.token >= 0:
				rr.OldAfter++
			}
		}
		if rr.Lag == 0 {
			rep.Other = append(rep.Other, fmt.Sprintf("the agent-token rotation at %s never reached the data plane", rot.at.Format(time.RFC3339Nano)))
		}
		rep.Rotations = append(rep.Rotations, rr)
	}
	r.upMu.Unlock()

	// 3. Recovery after each fault, from the probe.
	for _, w := range r.faults {
		fr := FaultResult{FaultWindow: w, Failed: map[int]int{}}
		var lastFail time.Time
		for _, rec := range rep.Records {
			if rec.Cancelled || rec.Expect != 0 || rec.OK() {
				continue
			}
			if !rec.Start.After(w.End.Add(grace)) && !rec.End.Before(w.Start) {
				fr.Failed[rec.Code]++
				if rec.Kind == KindProbe && rec.End.After(lastFail) {
					lastFail = rec.End
				}
			}
		}
		if !lastFail.IsZero() {
			for _, rec := range rep.Records {
				if rec.Kind == KindProbe && rec.OK() && rec.Start.After(lastFail) {
					fr.Recovery = rec.End.Sub(w.Start)
					break
				}
			}
			if fr.Recovery == 0 {
				rep.Availability = append(rep.Availability, fmt.Sprintf("%s: the probe never succeeded again", w.Name))
			}
		}
		r.streams.mu.Lock()
		for _, e := range r.streams.ends {
			if !e.At.Before(w.Start) && !e.At.After(w.End.Add(grace)) {
				fr.StreamsCut++
			}
		}
		r.streams.mu.Unlock()
		rep.Faults = append(rep.Faults, fr)
	}

	// 4. Long streams.
	r.checkStreams(rep, inWindow)

	// 5. Resources after warm-up.
	settle := max(r.cfg.Settle, r.cfg.WarmUp)
	quiet := r.samples
	if r.cfg.Settle > 0 {
		// Long runs: outside every fault window and 15 s after it. (The CI run's
		// windows leave too little outside them.)
		quiet = nil
		for _, s := range r.samples {
			in := false
			for _, w := range r.faults {
				in = in || (!s.At.Before(w.Start) && s.At.Before(w.End.Add(r.cfg.Grace+time.Minute/4)))
			}
			if !in {
				quiet = append(quiet, s)
			}
		}
	}
	rep.Resources = slopes(quiet, r.begin.Add(r.cfg.WarmUp), settle, r.endAt)
	for _, s := range rep.Resources {
		if !s.OK() {
			rep.Other = append(rep.Other, fmt.Sprintf("%s %s grew by %.0f over the run (%.0f/h), more than its bound %.0f (median %.0f)", s.Service, s.Metric, s.Growth, s.PerHour, s.Bound, s.Median))
		}
	}
	return rep, nil
}

// percentiles are p50 and p99 (zero for no data).
func percentiles(d []time.Duration) [2]time.Duration {
	if len(d) == 0 {
		return [2]time.Duration{}
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return [2]time.Duration{d[len(d)/2], d[len(d)*99/100]}
}

// cutTolerated says whether a request of kind may lose its connection (no status)
// in a window of fault: streams and upgrades outlive the request line, and a
// crashed API server cuts whatever it was serving.
func cutTolerated(kind, fault string) bool {
	switch kind {
	case KindExec, KindPortForward, KindWatch, KindFollow, KindKubectlLogs:
		return true
	}
	return fault == "apiserver-kill"
}

func (r *run) checkAudit(ctx context.Context, rep *Report, inWindow func(Record) (FaultWindow, bool)) error {
	// A sentinel through the gateway, found in the log, shows the log caught up.
	u := r.members[0]
	sentinel := r.rec.begin(u, KindProbe, 0)
	cs, err := r.client(r.data.Tokens[u])
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := sentinelGet(wctx, cs, sentinel.Seq); err != nil {
		return fmt.Errorf("soak: the audit sentinel request failed: %w", err)
	}
	if _, err := r.st.Cluster.WaitForAuditEvent(wctx, func(e *auditv1.Event) bool { return e.UserAgent == marker(sentinel.Seq) }); err != nil {
		return fmt.Errorf("soak: the audit log did not catch up: %w", err)
	}
	events, err := r.st.Cluster.AuditEvents()
	if err != nil {
		return err
	}
	bySeq := map[int64]*Record{}
	for i := range rep.Records {
		bySeq[rep.Records[i].Seq] = &rep.Records[i]
	}
	logged := map[int64]bool{}
	seen := map[types.UID]bool{}
	for _, e := range events {
		if e.User.Username != cluster.AgentUser || seen[e.AuditID] || e.UserAgent == marker(sentinel.Seq) || e.RequestReceivedTimestamp.Time.Before(r.begin) {
			continue // not through the gateway, seen, the sentinel, or the test bed's own set-up checks
		}
		seen[e.AuditID] = true
		a := &rep.Audit
		a.Events++
		seq, marked := seqOf(e.UserAgent)
		rec := bySeq[seq]
		if e.ImpersonatedUser == nil && impersonationRefused(e) {
			// The request carried a decision, but the API server refused the
			// impersonation: a restarted API server answers so until its RBAC
			// informers have synced. Nothing was served.
			a.ImpersonationRefused++
			if marked && rec != nil {
				a.Marked++
				logged[seq] = true
				if rec.Expect != 0 {
					a.NotAllowed++
					rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s #%d (refused by design) reached the API server: %s %s", e.AuditID, rec.Kind, seq, e.Verb, e.RequestURI))
				}
			}
			continue
		}
		if e.ImpersonatedUser == nil {
			a.WithoutDecision++
			rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s %s reached the API server as the agent without impersonation (no decision)", e.AuditID, e.Verb, e.RequestURI))
			continue
		}
		user := strings.TrimPrefix(e.ImpersonatedUser.Username, "gitlab:user:")
		id, name := e.ImpersonatedUser.Extra["agent.gitlab.com/id"], e.ImpersonatedUser.Extra["agent.gitlab.com/username"]
		if !slices.Contains(e.ImpersonatedUser.Groups, "gitlab:user") || !slices.Equal(id, []string{strconv.Itoa(stack.AgentID)}) || !slices.Equal(name, []string{user}) {
			a.NotAllowed++
			rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s %s impersonated %s without kubegate's identity shape (groups %v, agent id %v)", e.AuditID, e.Verb, e.RequestURI, e.ImpersonatedUser.Username, e.ImpersonatedUser.Groups, id))
		}
		if !r.model.Qualifies(user) {
			a.NotAllowed++
			rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s %s reached the API server as %s, whom the model does not allow", e.AuditID, e.Verb, e.RequestURI, user))
		}
		switch {
		case marked && rec != nil:
			a.Marked++
			logged[seq] = true
			if rec.Expect != 0 {
				a.NotAllowed++
				rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s #%d (refused by design) reached the API server: %s %s", e.AuditID, rec.Kind, seq, e.Verb, e.RequestURI))
			}
			if rec.User != user {
				a.NotAllowed++
				rep.Security = append(rep.Security, fmt.Sprintf("audit %s: request #%d of %s reached the API server as %s", e.AuditID, seq, rec.User, user))
			}
		case (strings.HasPrefix(e.UserAgent, "kubectl/") || strings.HasPrefix(e.UserAgent, "kubectl-dispatcher/")) && r.kubectlers[user]:
			a.Kubectl++
		default:
			a.Unknown++
			rep.Security = append(rep.Security, fmt.Sprintf("audit %s: %s %s as %s with User-Agent %q matches no request the harness sent", e.AuditID, e.Verb, e.RequestURI, user, e.UserAgent))
		}
	}
	for _, rec := range rep.Records {
		if rec.Cancelled || !rec.OK() || rec.Expect != 0 || logged[rec.Seq] || strings.HasPrefix(rec.Kind, "kubectl") {
			continue
		}
		if w, in := inWindow(rec); in && w.Name == "apiserver-kill" {
			rep.Audit.LostInAPIServerKill++
			continue
		}
		rep.Audit.SuccessWithoutLog++
		rep.Other = append(rep.Other, fmt.Sprintf("%s #%d as %s succeeded, but the API server logged no such request", rec.Kind, rec.Seq, rec.User))
	}
	return nil
}

// impersonationRefused says the API server answered 403 because the agent may not
// impersonate (as it does before its RBAC informers sync after a restart).
func impersonationRefused(e auditv1.Event) bool {
	return e.ResponseStatus != nil && e.ResponseStatus.Code == http.StatusForbidden && strings.Contains(e.ResponseStatus.Message, "cannot impersonate")
}

func sentinelGet(ctx context.Context, cs *kubernetes.Clientset, seq int64) error {
	_, err := cs.CoreV1().Pods(Namespace).Get(withMarker(ctx, seq), PodName, metav1.GetOptions{})
	return err
}

func (r *run) checkStreams(rep *Report, inWindow func(Record) (FaultWindow, bool)) {
	s := &rep.Streams
	r.streams.mu.Lock()
	defer r.streams.mu.Unlock()
	s.WatchEvents, s.Gaps, s.Relists, s.Lines, s.LineGaps = r.streams.events, r.streams.gaps, r.streams.relists, r.streams.lines, r.streams.lineGap
	for _, e := range r.streams.ends {
		s.Ends++
		if e.Clean {
			s.Clean++
		} else {
			s.Unclean++
			if w, in := inWindow(Record{Start: e.At, End: e.At}); !in || w.Strict {
				rep.Other = append(rep.Other, fmt.Sprintf("%s of %s cut at %s outside a fault window: %s", e.Kind, e.User, e.At.Format(time.RFC3339Nano), e.Reason))
			}
		}
		switch {
		case !e.Reconnected.IsZero():
			s.MaxReconnect = max(s.MaxReconnect, e.Reconnected.Sub(e.At))
		case e.At.Before(r.endAt.Add(-10 * time.Second)):
			s.NotReconnected++
			rep.Other = append(rep.Other, fmt.Sprintf("%s of %s ended at %s and never reconnected", e.Kind, e.User, e.At.Format(time.RFC3339Nano)))
		}
	}
	if s.Gaps > 0 {
		rep.Other = append(rep.Other, fmt.Sprintf("watches skipped %d ticker updates while resuming from their resourceVersion", s.Gaps))
	}
	if s.LineGaps > 0 {
		rep.Other = append(rep.Other, fmt.Sprintf("logs -f skipped %d lines inside one connection", s.LineGaps))
	}
	if r.cfg.Watchers > 0 && s.WatchEvents == 0 {
		rep.Other = append(rep.Other, "the watches saw no ticker update at all")
	}
}

// slopeBounds are the growth each metric may show over a run after warm-up: a
// fraction of its median or an absolute floor, whichever is larger (GC and the
// runtime's page scavenger make RSS wander by megabytes).
var slopeBounds = []struct {
	metric   string
	fraction float64
	floor    float64
	checked  bool
	get      func(Sample) float64
}{
	{"rss-bytes", 0.25, 32 << 20, true, func(s Sample) float64 { return float64(s.RSS) }},
	{"goroutines", 0.25, 40, true, func(s Sample) float64 { return float64(s.Goroutines) }},
	{"open-fds", 0.25, 16, true, func(s Sample) float64 { return float64(s.FDs) }},
	{"threads", 0, 0, false, func(s Sample) float64 { return float64(s.Threads) }},
}

// slopes fits, per service and metric, one growth rate over every process lifetime
// after warm-up: least squares with an intercept per PID (a restart resets memory),
// each lifetime's first `settle` dropped (a restarted authz refills its decision
// cache, ~120 KB per identity, as its users come back). The caller leaves out the
// samples taken inside fault windows and 15 s after (a reload's new snapshot).
func slopes(samples []Sample, from time.Time, settle time.Duration, to time.Time) []Slope {
	var out []Slope
	services := []string{}
	for _, s := range samples {
		if !slices.Contains(services, s.Service) {
			services = append(services, s.Service)
		}
	}
	span := to.Sub(from).Hours()
	for _, svc := range services {
		firstOf := map[int]time.Time{}
		for _, s := range samples {
			if s.Service == svc {
				if _, ok := firstOf[s.PID]; !ok {
					firstOf[s.PID] = s.At
				}
			}
		}
		for _, b := range slopeBounds {
			byPID := map[int][][2]float64{}
			var all []float64
			for _, s := range samples {
				if s.Service != svc || s.At.Before(from) || s.At.Before(firstOf[s.PID].Add(settle)) {
					continue
				}
				v := b.get(s)
				if v < 0 {
					continue
				}
				byPID[s.PID] = append(byPID[s.PID], [2]float64{s.At.Sub(from).Hours(), v})
				all = append(all, v)
			}
			if len(all) < 3 {
				continue
			}
			var sxy, sxx float64
			for _, pts := range byPID {
				var mx, my float64
				for _, p := range pts {
					mx += p[0]
					my += p[1]
				}
				mx /= float64(len(pts))
				my /= float64(len(pts))
				for _, p := range pts {
					sxy += (p[0] - mx) * (p[1] - my)
					sxx += (p[0] - mx) * (p[0] - mx)
				}
			}
			slope := 0.0
			if sxx > 0 {
				slope = sxy / sxx
			}
			slices.Sort(all)
			med := all[len(all)/2]
			out = append(out, Slope{Service: svc, Metric: b.metric, PerHour: slope, Growth: slope * span,
				Bound: math.Max(b.fraction*med, b.floor), Median: med, Samples: len(all), Checked: b.checked})
		}
	}
	return out
}
