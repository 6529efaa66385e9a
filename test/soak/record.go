package soak

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Kinds of request the harness sends. The deny-* kinds are refused by design.
const (
	KindGet         = "get"
	KindList        = "list"
	KindLogs        = "logs"
	KindExec        = "exec"
	KindPortForward = "port-forward"
	KindWatch       = "watch"   // one connection of a long watch
	KindFollow      = "logs-f"  // one connection of a long logs -f
	KindKubectl     = "kubectl" // a real kubectl get
	KindKubectlLogs = "kubectl-logs-f"
	KindProbe       = "probe" // the recovery probe: a member's get, every 200 ms

	KindNonMember   = "deny-non-member"  // authenticated, no qualifying membership: 403
	KindBadToken    = "deny-bad-token"   // revoked, expired or wrong-scope token: 401
	KindUnknown     = "deny-unknown"     // a token nobody issued: 401
	KindImpersonate = "deny-impersonate" // a member sending Impersonate-User: 403
	KindPolicy      = "deny-policy"      // a member reading secrets, which the operator module denies: 403
)

// Record is one request as the harness saw it.
type Record struct {
	Seq    int64
	User   string
	Kind   string
	Expect int // 0: allowed by the gateway; otherwise the status code it must refuse with
	Start  time.Time
	End    time.Time
	// Code is the HTTP status the request ended with: 200 for success, 0 when the
	// connection failed without one.
	Code int
	Err  string
	// Cancelled: the run ended while the request was in flight; not an outcome.
	Cancelled bool
}

// Duration is how long the request took.
func (r Record) Duration() time.Duration { return r.End.Sub(r.Start) }

// OK says the request succeeded.
func (r Record) OK() bool { return r.Code >= 200 && r.Code < 300 }

// Recorder keeps every Record; it is the harness's side of the audit cross-check.
type Recorder struct {
	seq  atomic.Int64
	mu   sync.Mutex
	recs []Record
}

// begin allocates a sequence number; the caller puts it in the request's User-Agent.
func (r *Recorder) begin(user, kind string, expect int) Record {
	return Record{Seq: r.seq.Add(1), User: user, Kind: kind, Expect: expect, Start: time.Now()}
}

// end records rec with the outcome of err.
func (r *Recorder) end(rec Record, err error) Record {
	rec.End = time.Now()
	rec.Code = statusOf(err)
	if err != nil {
		rec.Err = err.Error()
		if len(rec.Err) > 300 {
			rec.Err = rec.Err[:300]
		}
	}
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
	return rec
}

// Records returns a copy of everything recorded so far.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}

// httpError is a non-2xx answer outside client-go's error types.
type httpError struct {
	code int
	body string
}

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

// statusOf maps a request error to its HTTP status: 200 for nil, the status of a
// Kubernetes Status error or of an upgrade refused with one, 0 for a transport
// failure.
func statusOf(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var he *httpError
	if errors.As(err, &he) {
		return he.code
	}
	if s, ok := err.(apierrors.APIStatus); ok || errors.As(err, &s) {
		return int(s.Status().Code)
	}
	// client-go's SPDY and WebSocket dialers report a refused upgrade as text
	// ("unable to upgrade connection: ... (403)" or "... 503 Service Unavailable").
	msg := err.Error()
	for _, code := range []int{401, 403, 429, 500, 502, 503, 504} {
		c := strconv.Itoa(code)
		if strings.Contains(msg, "("+c+")") || strings.Contains(msg, c+" "+http.StatusText(code)) || strings.Contains(msg, "status "+c) {
			return code
		}
	}
	return 0
}

// markerKey carries a request's sequence number to the transport wrapper that puts
// it in the User-Agent, which the API server's audit log records.
type markerKey struct{}

func withMarker(ctx context.Context, seq int64) context.Context {
	return context.WithValue(ctx, markerKey{}, seq)
}

// uaPrefix starts the User-Agent of every request the harness sends through
// client-go: kubegate-soak/<seq>.
const uaPrefix = "kubegate-soak/"

func marker(seq int64) string { return uaPrefix + strconv.FormatInt(seq, 10) }

// seqOf parses a User-Agent the harness set; ok is false for any other.
func seqOf(ua string) (int64, bool) {
	rest, ok := strings.CutPrefix(ua, uaPrefix)
	if !ok {
		return 0, false
	}
	if i := strings.IndexByte(rest, ' '); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return n, err == nil
}

// markingTransport sets the User-Agent from the request context's marker.
type markingTransport struct{ next http.RoundTripper }

func (t markingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if seq, ok := req.Context().Value(markerKey{}).(int64); ok {
		req = req.Clone(req.Context())
		req.Header.Set("User-Agent", marker(seq))
	}
	return t.next.RoundTrip(req)
}
