// Package extauthz is kubegate's Envoy external authorization service
// (envoy.service.auth.v3.Authorization). For every request Envoy asks Check; the
// answer is built in three steps, each in its own file: request.go turns the
// CheckRequest into a plain HTTP request, pipeline.go decides (credential →
// identity → memberships → policy), response.go turns the outcome into Envoy's
// CheckResponse. Only server.go knows about gRPC, metrics and logs.
package extauthz

import (
	"net/http"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// Reason is the stable name of an outcome: a metric label, an audit log field, and
// the value of the X-Kubegate-Error header on denials. Identity and policy reasons
// pass through unchanged; the gateway's own are below.
type Reason string

const (
	ReasonAllowed             Reason = Reason(policy.ReasonAllowed)
	ReasonClientImpersonation Reason = "client_impersonation" // the client sent Impersonate-* headers
	ReasonOutsidePrefix       Reason = "outside_prefix"       // the path is not under /k8s-proxy/
	ReasonBadRequest          Reason = "bad_request"          // the path or query cannot be parsed
	ReasonAmbiguousQuery      Reason = "ambiguous_query"      // the query is not in the canonical form (query.go)
	ReasonForeignCredential   Reason = "foreign_credential"   // a credential the API server would try besides the agent's
	ReasonMisconfigured       Reason = "gateway_misconfigured"
	ReasonAgentNotReady       Reason = "agent_not_ready" // the credential's agent has no valid agent configuration yet
)

// statusFor maps an outcome reason to the HTTP status of access.md §4.
func statusFor(r Reason) int {
	switch r {
	case ReasonAllowed, ReasonExplained, ReasonAgentsListed:
		return http.StatusOK
	case ReasonOutsidePrefix, ReasonBadRequest, ReasonAmbiguousQuery, ReasonForeignCredential:
		return http.StatusBadRequest
	case ReasonClientImpersonation, ReasonCrossOrigin, Reason(policy.ReasonNotMember), Reason(policy.ReasonPolicyDenied):
		return http.StatusForbidden
	case Reason(identity.ReasonUnavailable), Reason(identity.ReasonBusy), ReasonAgentNotReady:
		return http.StatusServiceUnavailable
	case Reason(policy.ReasonPolicyError), ReasonMisconfigured:
		return http.StatusInternalServerError
	}
	// Every identity reason not named above is a refused credential. Anything
	// unknown is still a denial: 401 is the safe answer.
	return http.StatusUnauthorized
}

// publicReason is the reason the client may see in X-Kubegate-Error. Once a
// credential reached the identity source, the client learns only "unauthorized":
// telling revoked from expired from unknown would let it enumerate tokens and users
// (access.md §4). An agent the gateway does not serve is "unauthorized" too, so
// that agent ids cannot be enumerated. The full reason stays in the audit log and
// metrics.
func publicReason(r Reason) string {
	switch identity.Reason(r) {
	case identity.ReasonInvalid, identity.ReasonExpired, identity.ReasonRevoked,
		identity.ReasonScope, identity.ReasonInactive, identity.ReasonCSRF, identity.ReasonWrongAgent:
		return "unauthorized"
	}
	return string(r)
}
