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
}

// NewServer makes the processor. reg receives its metrics (nil: not registered).
func NewServer(log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Server{log: log, metrics: m}, nil
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
		resp := s.handle(ctx, req)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (s *Server) handle(ctx context.Context, req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse) {
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

func (s *Server) requestHeaders(ctx context.Context, md *corev3.Metadata, headers *corev3.HeaderMap, start time.Time) *extprocv3.ProcessingResponse {
	d, err := handoff.FromMetadata(md)
	if err != nil {
		s.metrics.requests.WithLabelValues("denied", "no_decision").Inc()
		s.log.ErrorContext(ctx, "request without a valid ext_authz decision: denied", "error", err.Error())
		return denial(http.StatusForbidden, "no_decision", "the request carries no authorization decision from the gateway; tell the gateway's operator (is ext_authz before ext_proc, with metadata forwarding?)")
	}
	if msg := checkUserHeader(headers, d); msg != "" {
		s.metrics.requests.WithLabelValues("denied", "identity_mismatch").Inc()
		s.log.ErrorContext(ctx, "Impersonate-User does not match the ext_authz decision: denied", "decision_id", d.ID, "access_as", d.AccessAs, "problem", msg)
		return denial(http.StatusForbidden, "identity_mismatch", "the identity the gateway's authorization service set does not match its decision ("+msg+"); tell the gateway's operator (are kubegate authz and extproc the same version?)")
	}
	m := mutation(headers, d)
	s.metrics.requests.WithLabelValues("continued", d.AccessAs).Inc()
	s.metrics.duration.Observe(time.Since(start).Seconds())
	s.log.DebugContext(ctx, "impersonation headers set", "decision_id", d.ID, "access_as", d.AccessAs, "user", d.User, "groups", len(d.Groups), "removed", m.GetRemoveHeaders())
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{Status: extprocv3.CommonResponse_CONTINUE, HeaderMutation: m},
	}}}
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
func checkUserHeader(h *corev3.HeaderMap, d handoff.Decision) string {
	var got []string
	for _, e := range h.GetHeaders() {
		if strings.EqualFold(e.GetKey(), handoff.HeaderImpersonateUser) {
			got = append(got, headerValue(e))
		}
	}
	switch {
	case d.AccessAs != handoff.AccessAsUser && len(got) > 0:
		return "Impersonate-User is set on an agent-mode request"
	case d.AccessAs != handoff.AccessAsUser:
		return ""
	case len(got) == 0:
		return "Impersonate-User is missing on a user-mode request"
	case len(got) > 1:
		return fmt.Sprintf("%d Impersonate-User lines", len(got))
	case got[0] != d.User:
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
