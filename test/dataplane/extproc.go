package dataplane

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
	extprocfiltv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// extProcFilter is envoy.filters.http.ext_proc with request headers SEND and
// everything else SKIP/NONE (source/extensions/filters/http/ext_proc/ext_proc.cc,
// processor_state.cc, mutation_utils.cc).
type extProcFilter struct {
	name    string
	cfg     *extProcConfig
	client  extprocv3.ExternalProcessorClient
	breaker *breaker
	hcm     *hcmConfig
	log     *slog.Logger
}

func newExtProcFilter(name string, cfg *extProcConfig, conn *grpc.ClientConn, br *breaker, hcm *hcmConfig, log *slog.Logger) *extProcFilter {
	return &extProcFilter{name: name, cfg: cfg, client: extprocv3.NewExternalProcessorClient(conn), breaker: br, hcm: hcm, log: log}
}

// errorPrefix prefixes the response code details of ext_proc's own errors.
const errorPrefix = "ext_proc_error"

// decodeHeaders is Filter::decodeHeaders → onHeaders for the request direction.
// Unlike ext_authz, ext_proc does not skip requests without a route: its
// decodeHeaders only consults per-route overrides (mergePerRouteConfig).
func (f *extProcFilter) decodeHeaders(ctx context.Context, s *stream) *localReply {
	if !f.cfg.sendReqHeaders {
		return nil // processing_mode.request_header_mode SKIP
	}
	// mergePerRouteConfig: the route's ExtProcPerRoute{disabled: true} is a
	// processing mode that skips every callback; no stream is opened (browser.go).
	if s.route != nil && s.route.disabled[f.name] == "ext_proc" {
		return nil
	}
	release, ok := f.breaker.acquire()
	if !ok {
		return f.onGrpcError(status.Error(codes.Unavailable, "circuit breaker overflow"))
	}
	defer release()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel() // closes the stream, as closeStreamMaybeGraceful after the last response
	stream, err := f.client.Process(sctx)
	if err != nil {
		return f.onGrpcError(err)
	}
	if err := stream.Send(f.headersRequest(s)); err != nil {
		// A failed send surfaces as the stream's error on Recv.
		_, err = stream.Recv()
		return f.onGrpcError(err)
	}

	type recvResult struct {
		resp *extprocv3.ProcessingResponse
		err  error
	}
	results := make(chan recvResult, 1)
	recv := func() {
		r, err := stream.Recv()
		results <- recvResult{r, err}
	}
	go recv()
	// ProcessorState::onStartProcessorCall arms message_timeout for the message.
	timer := time.NewTimer(f.cfg.messageTimeout)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return f.onMessageTimeout()
		case <-ctx.Done():
			return nil // the downstream went away; nothing is answered
		case r := <-results:
			if r.err != nil {
				return f.onGrpcError(r.err)
			}
			if r.resp.GetOverrideMessageTimeout() != nil {
				// Filter::onNewTimeout: a new timeout must be ≤ max_message_timeout,
				// which is 0 (unset) here, so the message is ignored and the timer
				// keeps running.
				go recv()
				continue
			}
			reply, cont := f.onReceiveMessage(s, r.resp)
			if cont {
				_ = stream.CloseSend() // the last response for this request: half-close
			}
			return reply
		}
	}
}

// headersRequest is Filter::buildHeaderRequest for request headers.
func (f *extProcFilter) headersRequest(s *stream) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{}
	for _, e := range s.headers.entries {
		// MutationUtils::headersToProto with send_header_raw_value (on by default):
		// values go in raw_value; no forward_rules, so every header goes.
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)})
	}
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers:     hm,
			EndOfStream: s.endStream,
		}},
		MetadataContext: f.forwardedMetadata(s),
		// encodeProtocolConfig: sent on the first message of the stream.
		ProtocolConfig: &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  extprocfiltv3.ProcessingMode_NONE,
			ResponseBodyMode: extprocfiltv3.ProcessingMode_NONE,
		},
	}
}

// forwardedMetadata is Filter::addDynamicMetadata: the namespaces listed in
// metadata_options.forwarding_namespaces, taken from the stream's dynamic metadata.
// Typed metadata is forwarded the same way; kubegate's filters never set any.
func (f *extProcFilter) forwardedMetadata(s *stream) *corev3.Metadata {
	md := &corev3.Metadata{}
	for _, ns := range f.cfg.forwardUntyped {
		if v, ok := s.metadata[ns]; ok {
			if md.FilterMetadata == nil {
				md.FilterMetadata = map[string]*structpb.Struct{}
			}
			md.FilterMetadata[ns] = v
		}
	}
	return md
}

// onReceiveMessage is Filter::onReceiveMessage for the one message the request
// headers ask for. It reports whether the request continues.
func (f *extProcFilter) onReceiveMessage(s *stream, resp *extprocv3.ProcessingResponse) (*localReply, bool) {
	// mode_override is ignored: allow_mode_override is false (the stand-in refuses
	// true). dynamic_metadata is ignored: no receiving_namespaces.
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if reply := f.handleHeadersResponse(s, r.RequestHeaders); reply != nil {
			return reply, false
		}
		return nil, true
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		// disable_immediate_response is false (true is refused).
		return f.immediateResponse(r.ImmediateResponse), false
	default:
		// "Any other message is considered spurious": with fail-close for spurious
		// messages (ext_proc_fail_close_spurious_resp) and failure_mode_allow false,
		// handleErrorResponse answers with status_on_error.
		if f.cfg.failureModeAllow {
			return nil, true
		}
		return f.errorResponse("spurious message"), false
	}
}

// handleHeadersResponse is ProcessorState::handleHeadersResponse.
func (f *extProcFilter) handleHeadersResponse(s *stream, hr *extprocv3.HeadersResponse) *localReply {
	cr := hr.GetResponse()
	replace := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
	if replace && cr.GetBodyMutation() != nil {
		return &localReply{status: http.StatusInternalServerError, body: "test data plane: ext_proc CONTINUE_AND_REPLACE with a body_mutation is not emulated\n", details: errorPrefix + "_not_emulated"}
	}
	if cr.GetHeaderMutation() != nil {
		if err := f.applyHeaderMutations(cr.GetHeaderMutation(), s.headers, replace); err != nil {
			return f.errorResponse(err.Error())
		}
	}
	// ProcessorState::clearRouteCache by route_cache_action (ext_proc.proto
	// RouteCacheAction): DEFAULT clears "only when the clear_route_cache field is
	// set in an external processor response", CLEAR "irrespective of the
	// clear_route_cache bit" when the response mutates headers, RETAIN never. A
	// cleared route is picked again from the mutated headers.
	switch f.cfg.routeCacheAction {
	case extprocfiltv3.ExternalProcessor_DEFAULT:
		if cr.GetClearRouteCache() {
			s.clearRouteCache()
		}
	case extprocfiltv3.ExternalProcessor_CLEAR:
		if cr.GetHeaderMutation() != nil {
			s.clearRouteCache()
		}
	case extprocfiltv3.ExternalProcessor_RETAIN:
	}
	return nil
}

// applyHeaderMutations is MutationUtils::applyHeaderMutations: size check,
// remove_headers first, then set_headers, then the result's size check. Any error
// fails the request (handleErrorResponse). The error texts are Envoy's own, kept
// verbatim so a logged one can be found in Envoy's source (hence the ST1005 ignores).
func (f *extProcFilter) applyHeaderMutations(m *extprocv3.HeaderMutation, h *headerMap, replacing bool) error {
	return applyHeaderMutations(m, h, replacing, f.cfg.rules, f.hcm.maxHeadersCount, f.hcm.maxHeadersKB)
}

func applyHeaderMutations(m *extprocv3.HeaderMutation, h *headerMap, replacing bool, rules *mutationChecker, maxCount, maxKB int) error {
	// responseHeaderSizeCheck.
	if len(m.GetRemoveHeaders()) > maxCount || len(m.GetSetHeaders()) > maxCount {
		//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
		return fmt.Errorf("Header mutation remove header count %d or set header count %d exceed the HCM header countlimit %d", len(m.GetRemoveHeaders()), len(m.GetSetHeaders()), maxCount)
	}
	for _, name := range m.GetRemoveHeaders() {
		if !validHeaderName(name) {
			//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
			return errors.New("Invalid character in remove_headers mutation.")
		}
		lk := strings.ToLower(name)
		switch rules.check(opRemove, lk, "") {
		case checkOK:
			h.remove(lk)
		case checkFail:
			//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
			return fmt.Errorf("Invalid attempt to remove %s", lk)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		if sh.GetHeader() == nil {
			continue
		}
		hv := sh.GetHeader()
		if hv.GetValue() != "" && len(hv.GetRawValue()) > 0 {
			//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
			return errors.New("Only one of value or raw_value in the HeaderValue message should be set.")
		}
		// With send_header_raw_value (on by default) the value is raw_value; a
		// processor that fills only `value` sets an empty header.
		value := string(hv.GetRawValue())
		if !validHeaderName(hv.GetKey()) || !validHeaderValue(value) {
			//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
			return errors.New("Invalid character in set_headers mutation.")
		}
		key := strings.ToLower(hv.GetKey())
		action := setAction(sh)
		op := opSet
		if action == actionAdd && h.has(key) {
			op = opAppend
		}
		result := rules.check(op, key, value)
		if replacing && key == ":method" {
			// "Special handling to allow changing :method when the CONTINUE_AND_REPLACE
			// option is selected."
			result = checkOK
		}
		switch result {
		case checkOK:
			headerMutation{key: key, value: value, action: action}.apply(h)
		case checkFail:
			//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
			return fmt.Errorf("Invalid attempt to modify %s", key)
		}
	}
	// headerMutationResultCheck.
	if h.byteSize() > maxKB*1024 || h.size() > maxCount {
		//lint:ignore ST1005 Envoy's own message (mutation_utils.cc), kept verbatim
		return fmt.Errorf("Header mutation causes end result header count %d or header size %d bytes, exceeding the count limit %d or the size limit %d kilobytes", h.size(), h.byteSize(), maxCount, maxKB)
	}
	return nil
}

// setAction decides what a set_headers entry does: only the legacy append
// BoolValue, defaulting to false. MutationUtils::applyHeaderMutations
// (source/extensions/filters/http/ext_proc/mutation_utils.cc, Envoy 1.40) reads
// `PROTOBUF_GET_WRAPPED_OR_DEFAULT(sh, append, false)` and never looks at
// append_action: true adds a new header line (HeaderMap::addCopy, checked as
// APPEND when the header exists, SET otherwise), false or unset overwrites every
// line (setCopy). An append_action of any value, ADD_IF_ABSENT and
// OVERWRITE_IF_EXISTS included, changes nothing.
func setAction(o *corev3.HeaderValueOption) mutationAction {
	if legacyAppend(o).GetValue() {
		return actionAdd
	}
	return actionSet
}

// immediateResponse is Filter::sendImmediateResponse: status (default 200, and
// any code below 200 becomes 200), headers applied through the filter's own
// mutation_rules (config().mutationChecker() under the runtime guard
// envoy.reloadable_features.immediate_response_use_filter_mutation_rule, on by
// default in 1.40; the permissive ImmediateMutationChecker only when it is off),
// where a refusal stops the remaining header mutations and is logged, not fatal;
// then body and details. prepareLocalReply adds text/plain to a body without a
// content-type.
func (f *extProcFilter) immediateResponse(ir *extprocv3.ImmediateResponse) *localReply {
	code := 200
	if ir.GetStatus() != nil {
		code = int(ir.GetStatus().GetCode())
	}
	if code < 200 {
		code = 200
	}
	reply := &localReply{status: code, body: string(ir.GetBody()), details: strings.Join(strings.Fields(ir.GetDetails()), "_")}
	if ir.GetHeaders() != nil {
		h := &headerMap{}
		if err := applyHeaderMutations(ir.GetHeaders(), h, false, f.cfg.rules, f.hcm.maxHeadersCount, f.hcm.maxHeadersKB); err != nil {
			f.log.Error("Immediate response mutations failed", "filter", f.name, "error", err)
		}
		for _, e := range h.entries {
			reply.headers = append(reply.headers, headerMutation{key: e.key, value: e.value, action: actionAdd})
		}
	}
	return reply
}

// errorResponse is Filter::handleErrorResponse: status_on_error.
func (f *extProcFilter) errorResponse(details string) *localReply {
	return &localReply{status: f.cfg.statusOnError, details: strings.Join(strings.Fields(details), "_")}
}

// onGrpcError is Filter::onGrpcError, reached for a stream that cannot be opened,
// fails, or ends with a non-OK status. A stream the processor ends with OK before
// answering is onGrpcClose: the request continues unchanged, whatever
// failure_mode_allow says (onGrpcCloseWithStatus → clearAsyncState).
func (f *extProcFilter) onGrpcError(err error) *localReply {
	if errors.Is(err, io.EOF) {
		f.log.Warn("ext_proc stream closed by the processor without a response; the request continues unchanged, as Envoy does", "filter", f.name)
		return nil
	}
	if f.cfg.failureModeAllow {
		return nil
	}
	st := status.Convert(err)
	return &localReply{status: f.cfg.statusOnError, details: fmt.Sprintf("%s_gRPC_error_%d{%s}", errorPrefix, st.Code(), strings.Join(strings.Fields(st.Message()), "_"))}
}

// onMessageTimeout is Filter::onMessageTimeout: without failure_mode_allow, a 504
// (StatusCode::GatewayTimeout) — not status_on_error.
func (f *extProcFilter) onMessageTimeout() *localReply {
	if f.cfg.failureModeAllow {
		return nil
	}
	return &localReply{status: http.StatusGatewayTimeout, details: errorPrefix + "_per-message_timeout_exceeded"}
}
