// Package extproc is kubegate's Envoy external processor
// (envoy.service.ext_proc.v3.ExternalProcessor). On each request's headers it reads
// the decision ext_authz left in Envoy's metadata and writes the impersonation
// headers the API server acts on. It never lets a request through without a valid
// decision: missing or malformed metadata is answered with an immediate denial.
package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"kubegate.dev/kubegate/contract/handoff"
)

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	log     *slog.Logger
	metrics *metrics
	// responses holds the answer built for each identity (see cache.go): every
	// request of a user carries the same encoded identity, and building ~250 header
	// options per request cost several times gRPC's own work.
	responses *otter.Cache[responseKey, *cachedResponse]
	// preEncoded is set by ServerOptions, before serving.
	preEncoded bool
}

// Option adjusts a Server.
type Option func(*serverOptions)

type serverOptions struct{ responseCacheBytes int64 }

// WithResponseCacheBytes bounds the memory of the answers kept per identity
// (default DefaultResponseCacheBytes; at least MinResponseCacheBytes). At the bound
// the least valuable are evicted and built again on their next request.
func WithResponseCacheBytes(n int64) Option {
	return func(o *serverOptions) { o.responseCacheBytes = n }
}

// NewServer makes the processor. reg receives its metrics (nil: not registered).
func NewServer(log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Server, error) {
	o := serverOptions{responseCacheBytes: DefaultResponseCacheBytes}
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	responses, err := newResponseCache(o.responseCacheBytes)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Server{log: log, metrics: m, responses: responses}, nil
}

// Process serves one HTTP request's stream of processing messages.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return err
		}
		// SendMsg, not Send: the answer may be pre-encoded (cache.go).
		if err := stream.SendMsg(s.handle(ctx, req)); err != nil {
			return err
		}
	}
}

// handle answers one message: a *extprocv3.ProcessingResponse, or for request
// headers possibly the same answer pre-encoded (*encodedResponse).
func (s *Server) handle(ctx context.Context, req *extprocv3.ProcessingRequest) (resp any) {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		start := time.Now()
		defer func() {
			// A panic here must still be a denial, never a dropped stream that a
			// misconfigured Envoy might treat as "continue".
			if p := recover(); p != nil {
				s.log.ErrorContext(ctx, "ext_proc panic", "panic", fmt.Sprint(p))
				resp = denial(http.StatusInternalServerError, "internal_error", "the gateway failed to process the request")
			}
		}()
		return s.requestHeaders(ctx, req.GetMetadataContext(), r.RequestHeaders.GetHeaders(), start)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	// An unknown message: refuse rather than guess what "continue" would mean.
	return denial(http.StatusInternalServerError, "unknown_message", "the gateway received an unknown processing message")
}

func (s *Server) requestHeaders(ctx context.Context, md *corev3.Metadata, headers *corev3.HeaderMap, start time.Time) any {
	env, err := handoff.ReadEnvelope(md)
	if err != nil {
		return s.noDecision(ctx, err)
	}
	removes := clientImpersonation(headers)
	if env.AccessAs != handoff.AccessAsUser {
		// Agent mode: nothing to set, nothing worth keeping.
		d, err := env.Decode()
		if err != nil {
			return s.noDecision(ctx, err)
		}
		if msg := checkUserHeader(headers, d.AccessAs, ""); msg != "" {
			return s.mismatch(ctx, d.ID, d.AccessAs, msg)
		}
		s.metrics.continued(d.AccessAs)
		s.metrics.duration.Observe(time.Since(start).Seconds())
		return continueWith(mutation(removes, d))
	}
	key := responseKey{identity: env.Identity, removes: joinNames(removes)}
	c, ok := s.responses.GetIfPresent(key)
	if !ok {
		// First request of this identity (or after an eviction): decode strictly
		// and build. Only a decoded identity is ever kept, so a hit is an exact
		// string that once decoded, and decodes the same way again.
		d, err := env.Decode()
		if err != nil {
			return s.noDecision(ctx, err)
		}
		if c, err = s.newCachedResponse(d.User, len(d.Groups), continueWith(mutation(removes, d))); err != nil {
			s.log.ErrorContext(ctx, "ext_proc could not encode its answer: denied", "decision_id", env.ID, "error", err.Error())
			return denial(http.StatusInternalServerError, "internal_error", "the gateway failed to process the request")
		}
		key.identity, key.removes = strings.Clone(key.identity), strings.Clone(key.removes)
		s.responses.Set(key, c)
	}
	if msg := checkUserHeader(headers, env.AccessAs, c.user); msg != "" {
		return s.mismatch(ctx, env.ID, env.AccessAs, msg)
	}
	s.metrics.continued(env.AccessAs)
	s.metrics.duration.Observe(time.Since(start).Seconds())
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.DebugContext(ctx, "impersonation headers set", "decision_id", env.ID, "access_as", env.AccessAs, "user", c.user, "groups", c.groups, "removed", removes, "cached", ok)
	}
	return c.reply
}

func continueWith(m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{Status: extprocv3.CommonResponse_CONTINUE, HeaderMutation: m},
	}}}
}

func (s *Server) noDecision(ctx context.Context, err error) *extprocv3.ProcessingResponse {
	s.metrics.requests.WithLabelValues("denied", "no_decision").Inc()
	s.log.ErrorContext(ctx, "request without a valid ext_authz decision: denied", "error", err.Error())
	return denial(http.StatusForbidden, "no_decision", "the request carries no authorization decision from the gateway; tell the gateway's operator (is ext_authz before ext_proc, with metadata forwarding?)")
}

func (s *Server) mismatch(ctx context.Context, id, accessAs, msg string) *extprocv3.ProcessingResponse {
	s.metrics.requests.WithLabelValues("denied", "identity_mismatch").Inc()
	s.log.ErrorContext(ctx, "Impersonate-User does not match the ext_authz decision: denied", "decision_id", id, "access_as", accessAs, "problem", msg)
	return denial(http.StatusForbidden, "identity_mismatch", "the identity the gateway's authorization service set does not match its decision ("+msg+"); tell the gateway's operator (are kubegate authz and extproc the same version?)")
}

// denial answers the request directly. Envoy 1.40 checks an immediate response's
// headers against the filter's mutation_rules (ext_proc.cc
// Filter::sendImmediateResponse, runtime guard
// immediate_response_use_filter_mutation_rule, on by default), and kubegate's rules
// allow only impersonate-* names: a content-type or X-Kubegate-Error header would
// be refused (with disallow_is_error, the first refusal drops it and every later
// one, and logs "Immediate response mutations failed"). Envoy then labels the body
// text/plain (Utility::prepareLocalReply). So the answer carries no headers and a
// plain-text body: client-go turns a text/* error body into the message of the
// error it returns (rest/request.go newUnstructuredResponseError), so kubectl
// prints "Error from server (Forbidden): kubegate: <message>". A Status JSON body
// labelled text/plain would be printed as raw JSON instead. Allowing those two
// names in mutation_rules would let the processor set them on the request too.
func denial(code int, reason, message string) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
		Body:    []byte("kubegate: " + message + "\n"),
		Details: "kubegate_" + reason,
	}}}
}

// checkUserHeader compares the Impersonate-User lines Envoy sent with the decision.
// In user mode kubegate authz sets exactly one, the decision's user (see package
// handoff); in agent mode none. Anything else means the two services disagree on
// who the request is, or something other than kubegate authz set the header, and
// the request is refused rather than guessed at. It returns what is wrong, or "".
func checkUserHeader(h *corev3.HeaderMap, accessAs, user string) string {
	n, same := 0, true
	for _, e := range h.GetHeaders() {
		if strings.EqualFold(e.GetKey(), handoff.HeaderImpersonateUser) {
			n++
			same = same && headerValue(e) == user
		}
	}
	switch {
	case accessAs != handoff.AccessAsUser && n > 0:
		return "Impersonate-User is set on an agent-mode request"
	case accessAs != handoff.AccessAsUser:
		return ""
	case n == 0:
		return "Impersonate-User is missing on a user-mode request"
	case n > 1:
		return fmt.Sprintf("%d Impersonate-User lines", n)
	case !same:
		return "Impersonate-User names another user than the decision"
	}
	return ""
}

// headerValue is a header's value: raw_value, which Envoy fills with
// send_header_raw_value (on by default; mutation_utils.cc headersToProto), else value.
func headerValue(e *corev3.HeaderValue) string {
	if len(e.GetRawValue()) > 0 {
		return string(e.GetRawValue())
	}
	return e.GetValue()
}
