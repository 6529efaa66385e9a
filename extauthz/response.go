package extauthz

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
)

// HeaderError marks a response as the gateway's own (not the cluster's) and names
// the reason; it is set on every denial.
const HeaderError = contract.HeaderError

// busyRetryAfter is the Retry-After (seconds) of an identity_busy denial.
const busyRetryAfter = "1"

// credentialHeaders and credentialQuery are removed from every allowed request, so
// the user's own credential never reaches the cluster (access.md §4). Envoy applies
// OkHttpResponse.headers_to_remove and query_parameters_to_remove before the request
// continues (external_auth.proto).
var (
	credentialHeaders = contract.CredentialHeaders
	credentialQuery   = contract.CredentialQuery
)

// allowResponse is Envoy's OK answer: route the request to the agent's cluster,
// scrub the credential, and hand the decision to ext_proc in dynamic metadata.
// ident is the decision's encoded identity (nil in agent mode); in user mode the
// answer also sets Impersonate-User itself, so a request ext_proc never touches
// still goes upstream as the user, without groups, and never as the agent (see
// package handoff). Envoy applies OkHttpResponse.headers before headers_to_remove
// (ext_authz.cc Filter::onComplete).
//
// The upstream header (contract.HeaderUpstream) is set on every OK answer,
// overwriting any copy: Envoy's route picks the agent's cluster from it
// (cluster_header) once ext_authz has cleared the route cache. An outcome with no
// served agent cannot become an OK answer.
func allowResponse(o outcome, decisionID string, ident *handoff.Identity) (*authv3.CheckResponse, error) {
	if o.agent == nil || o.agent.route == nil {
		return nil, errors.New("an allowed request has no agent to route to")
	}
	md, err := handoff.Encode(decisionID, string(o.decision.AccessAs), ident)
	if err != nil {
		return nil, err
	}
	ok := &authv3.OkHttpResponse{
		Headers:                 []*corev3.HeaderValueOption{o.agent.route},
		HeadersToRemove:         credentialHeaders,
		QueryParametersToRemove: credentialQuery,
	}
	if ident != nil {
		ok.Headers = append(ok.Headers, ident.UserHeader())
	}
	return &authv3.CheckResponse{
		Status:          &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse:    &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: md,
	}, nil
}

// upstreamHeader routes a request to agent id's cluster. OVERWRITE_IF_EXISTS_OR_ADD
// replaces every copy already on the request rather than adding one beside it
// (base.proto HeaderValueOption.HeaderAppendAction).
func upstreamHeader(agentID int64) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: contract.HeaderUpstream, Value: contract.UpstreamCluster(agentID)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// denyResponse is a Kubernetes Status answered by Envoy on kubegate's behalf, or, for
// a discovery request (see discoveryRequest), the same message as plain text. Envoy
// reads DeniedHttpResponse headers from HeaderValue.value (ext_authz_grpc_impl.cc).
func denyResponse(reason Reason, message string, discovery bool) *authv3.CheckResponse {
	code := statusFor(reason)
	contentType, body := "application/json", string(StatusBody(code, message))
	if discovery {
		contentType, body = "text/plain; charset=utf-8", "kubegate: "+message+"\n"
	}
	headers := []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: "content-type", Value: contentType}},
		{Header: &corev3.HeaderValue{Key: HeaderError, Value: publicReason(reason)}},
	}
	if code == http.StatusUnauthorized {
		headers = append(headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{
			Key: "www-authenticate", Value: `Bearer realm="kubegate", error="invalid_token"`,
		}})
	}
	if reason == Reason(identity.ReasonBusy) {
		// client-go, and so kubectl, waits and retries a 5xx that carries Retry-After
		// in seconds, up to its retry limit (k8s.io/client-go/rest/with_retry.go,
		// checkWait): a user refused while a flood holds every slot gets in without
		// doing anything.
		headers = append(headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "retry-after", Value: busyRetryAfter}})
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpcCode(code)), Message: publicReason(reason)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: headers,
			Body:    body,
		}},
	}
}

// discoveryRequest reports whether method and target (the client's request target,
// gateway prefix included) are an API discovery read: GET of /api, /api/<version>,
// /apis, /apis/<group> or /apis/<group>/<version>. kubectl's discovery client reads
// those with Result.Raw(), which shows the body of a text/* error and "unknown" for
// any other (k8s.io/client-go rest/request.go: newUnstructuredResponseError,
// isTextResponse). Discovery is kubectl's first request, so a refused user with a
// fresh discovery cache would read only "Error from server (Forbidden): unknown";
// a plain-text denial there reads "Error from server (Forbidden): kubegate: …".
func discoveryRequest(method, target string) bool {
	if method != http.MethodGet && method != http.MethodHead {
		return false
	}
	path, _, _ := strings.Cut(target, "?")
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return false
	}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	switch {
	case len(parts) == 0 || parts[0] == "" || slices.Contains(parts, ""):
		return false
	case parts[0] == "api":
		return len(parts) <= 2
	case parts[0] == "apis":
		return len(parts) <= 3
	}
	return false
}

// StatusBody is a Kubernetes Status object, so kubectl prints the message as it
// prints the API server's own errors (contract.StatusBody).
func StatusBody(code int, message string) []byte { return contract.StatusBody(code, message) }

func grpcCode(httpCode int) codes.Code {
	switch httpCode {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	}
	return codes.Internal
}
