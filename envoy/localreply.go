package envoy

import (
	"net/http"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"kubegate.dev/kubegate/contract"
)

// HeaderKubegateError marks a response as the gateway's own, naming the reason
// (the same header kubegate authz sets on its denials).
const HeaderKubegateError = contract.HeaderError

// ReasonAgentTokenMissing is the X-Kubegate-Error of a request the gateway
// allowed but could not forward because it has no agent token.
const ReasonAgentTokenMissing = "agent_token_missing"

// agentTokenMissingRuntimeKey is the runtime key of the mapper's status filter.
// RuntimeUInt32 requires one; no runtime layer sets it, so default_value applies.
const agentTokenMissingRuntimeKey = "kubegate.local_reply.agent_token_missing_status"

// ReasonRateLimited is the X-Kubegate-Error of a request the per-client local rate
// limit refused (the local_ratelimit filter's 429).
const ReasonRateLimited = "rate_limited"

// rateLimitedRuntimeKey is the runtime key of the rate-limit mapper's status filter.
const rateLimitedRuntimeKey = "kubegate.local_reply.rate_limited_status"

// RateLimitedMessage is the Status message of a rate-limited request.
const RateLimitedMessage = "kubegate: too many requests from your address; slow down and retry in a few seconds " +
	"(the gateway limits each client address: kubegate envoy render --client-rate-limit and --client-rate-burst)"

// AgentTokenMissingMessage is the Status message of that answer.
const AgentTokenMissingMessage = "kubegate: the gateway has no service-account token for the agent yet (SDS secret " +
	TokenSecretPrefix + "<agent id> from kubegate xds), so it cannot forward the request; your own credential was accepted. " +
	"Tell the gateway's operator: is kubegate xds running, and is its --token-file readable?"

// LocalReplyConfig rewrites one local reply: credential_injector's 401 "Failed to
// inject credential." (credential_injector_filter.cc, when the generic injector
// has no secret: before the first SDS secret, after initial_fetch_timeout or a
// rejected update). A user would take that bare text/plain 401 for a rejection of
// their own token; it is the gateway's fault. The mapper matches a local reply
// with status 401 on a request ext_authz allowed — the kubegate decision is in the
// envoy.filters.http.ext_authz dynamic metadata only then; kubegate authz's own
// 401 denials carry none — and answers 503 with a Kubernetes Status,
// content-type application/json and X-Kubegate-Error: agent_token_missing.
//
// How Envoy applies it (source/common/local_reply/local_reply.cc
// ResponseMapper::matchAndRewrite; source/common/http/utility.cc
// prepareLocalReply): the mapper's filter is an access-log filter evaluated on
// the reply (status in stream_info); a match replaces the body and status and
// adds headers_to_add; since the rewrite set content-type itself, Envoy keeps it
// instead of its text/plain. metadata_filter's match_if_key_not_found defaults
// to true (accesslog.proto), so it is set to false: without the decision the
// mapper must not match.
func LocalReplyConfig() (*hcmv3.LocalReplyConfig, error) {
	// The same Status kubegate authz answers its denials with (contract.StatusBody
	// adds the "kubegate: " the message already starts with).
	body := contract.StatusBody(http.StatusServiceUnavailable, strings.TrimPrefix(AgentTokenMissingMessage, "kubegate: "))
	header := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	// The second mapper: the local rate limit's 429 "local_rate_limited"
	// (local_ratelimit.cc sendLocalReply) becomes the same kind of Status, with
	// Retry-After so client-go (kubectl) waits and retries (rest/with_retry.go).
	// Only local replies pass through mappers, so the API server's own 429s (API
	// priority and fairness) are untouched.
	rateLimited := &hcmv3.ResponseMapper{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{StatusCodeFilter: &accesslogv3.StatusCodeFilter{
			Comparison: &accesslogv3.ComparisonFilter{Op: accesslogv3.ComparisonFilter_EQ, Value: &corev3.RuntimeUInt32{DefaultValue: http.StatusTooManyRequests, RuntimeKey: rateLimitedRuntimeKey}},
		}}},
		Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(contract.StatusBody(http.StatusTooManyRequests, strings.TrimPrefix(RateLimitedMessage, "kubegate: ")))}},
		HeadersToAdd: []*corev3.HeaderValueOption{
			header("content-type", "application/json"),
			header(HeaderKubegateError, ReasonRateLimited),
			header("retry-after", "1"),
		},
	}
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{Filters: []*accesslogv3.AccessLogFilter{
			{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{StatusCodeFilter: &accesslogv3.StatusCodeFilter{
				Comparison: &accesslogv3.ComparisonFilter{Op: accesslogv3.ComparisonFilter_EQ, Value: &corev3.RuntimeUInt32{DefaultValue: 401, RuntimeKey: agentTokenMissingRuntimeKey}},
			}}},
			{FilterSpecifier: &accesslogv3.AccessLogFilter_MetadataFilter{MetadataFilter: &accesslogv3.MetadataFilter{
				Matcher: &matcherv3.MetadataMatcher{
					Filter: ExtAuthzMetadataNamespace,
					Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: "kubegate"}}},
					Value:  &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_PresentMatch{PresentMatch: true}},
				},
				MatchIfKeyNotFound: wrapperspb.Bool(false),
			}}},
		}}}},
		StatusCode: wrapperspb.UInt32(503),
		Body:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(body)}},
		HeadersToAdd: []*corev3.HeaderValueOption{
			header("content-type", "application/json"),
			header(HeaderKubegateError, ReasonAgentTokenMissing),
		},
	}, rateLimited}}, nil
}
