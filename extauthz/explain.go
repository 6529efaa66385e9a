package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// ExplainPrefix is the gateway's explain endpoint (contract.ExplainPrefix).
const ExplainPrefix = contract.ExplainPrefix

// ReasonExplained is the outcome of an answered explain request (the caller's
// own explanation was returned; nothing went upstream).
const ReasonExplained Reason = "explained"

// Explanation is the gateway part of `kubegate explain`: who the caller is, what the
// gateway decides for the request, and why. The CLI computes it offline from the
// directory or GitLab; the explain endpoint computes it for the caller alone.
type Explanation struct {
	Agent      ExplainedAgent      `json:"agent"`
	User       ExplainedUser       `json:"user"`
	AccessType identity.AccessType `json:"access_type"`
	Request    policy.Request      `json:"request"`
	Gateway    policy.Explanation  `json:"gateway"`
	// Sources says where each listed entry's effective level comes from (nil when
	// the membership source cannot say: a cached GitLab source at the gateway).
	Sources []identity.EntrySource `json:"sources,omitempty"`
	// OtherListedEntries counts listed entries left out of an answer for the
	// caller: those the caller has no membership of (the endpoint does not list the
	// agent's whole configuration).
	OtherListedEntries int `json:"other_listed_entries,omitempty"`
}

// ExplainedAgent names the agent the gateway serves.
type ExplainedAgent struct {
	ID              int64 `json:"id"`
	ConfigProjectID int64 `json:"config_project_id"`
	// Name and ConfigProject are the agent's name and its configuration project's
	// path, when known (`kubegate explain --identity-source gitlab` looks them up).
	Name          string `json:"name,omitempty"`
	ConfigProject string `json:"config_project,omitempty"`
}

// ExplainedUser is the caller, by the identity source's id and username.
type ExplainedUser struct {
	ID       int64  `json:"id"`
	Username string `json:"username"`
}

// Explain explains the decision for one identity and request: the memberships
// come from resolver (and their sources, when it is an identity.MembershipExplainer),
// the verdicts from engine.Explain, which makes the decision itself.
func Explain(ctx context.Context, agent policy.Agent, engine *policy.Engine, resolver identity.MembershipResolver, id identity.Identity, req policy.Request) (Explanation, error) {
	x := Explanation{
		Agent:      ExplainedAgent{ID: agent.ID, ConfigProjectID: agent.ConfigProjectID},
		User:       ExplainedUser{ID: id.User.ID, Username: id.User.Username},
		AccessType: id.AccessType,
		Request:    req,
	}
	memberships, err := resolver.Memberships(ctx, id.User, engine.Listed())
	if err != nil {
		return x, err
	}
	if xr, ok := resolver.(identity.MembershipExplainer); ok {
		if x.Sources, err = xr.ExplainMemberships(ctx, id.User, engine.Listed()); err != nil {
			return x, err
		}
	}
	x.Gateway, err = engine.Explain(ctx, policy.Input{Identity: id, Memberships: memberships, Request: req})
	return x, err
}

// callerOnly keeps what concerns the caller: entries and sources they have some
// membership of. The rest of the agent's listing is counted, not named.
func (x *Explanation) callerOnly() {
	entries := x.Gateway.Entries[:0:0]
	for _, e := range x.Gateway.Entries {
		if e.Verdict == policy.VerdictNoMembership {
			x.OtherListedEntries++
			continue
		}
		entries = append(entries, e)
	}
	x.Gateway.Entries = entries
	var sources []identity.EntrySource
	for _, s := range x.Sources {
		if len(s.Grants) > 0 {
			sources = append(sources, s)
		}
	}
	x.Sources = sources
}

// explainMethods are the methods an explained request may name: the ones the API
// server serves.
var explainMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true,
}

// explainCheck answers GET <ExplainPrefix><METHOD>/<API path>[?query]. The caller is
// authenticated exactly as for PathPrefix (identify, on the request as it would be
// sent to /k8s-proxy/<API path>), so it is refused exactly alike. The answer is
// always a DeniedHttpResponse: Envoy sends it to the client as a local reply and
// the request never continues (ext_authz_grpc_impl.cc GrpcClientImpl::onSuccess: a
// non-OK status with denied_response takes its status code, 200 included, and
// body). There is no parameter naming a user: the answer is the credential's own.
//
// The answer is for the agent the credential names, with that agent's engine.
func explainCheck(ctx context.Context, s *Server, r *httpRequest) (outcome, *authv3.CheckResponse) {
	refuse := func(o outcome) (outcome, *authv3.CheckResponse) { return o, denyResponse(o.reason, o.message, false) }
	if r.Method != http.MethodGet {
		return refuse(deny(ReasonBadRequest, fmt.Sprintf("the explain endpoint answers GET %s<METHOD>/<API path>, not %s", ExplainPrefix, r.Method)))
	}
	rest := strings.TrimPrefix(r.Target, ExplainPrefix)
	method, target, found := strings.Cut(rest, "/")
	if !explainMethods[method] || !found || target == "" || strings.HasPrefix(target, "?") {
		return refuse(deny(ReasonBadRequest, fmt.Sprintf("the explain endpoint's path is %s<METHOD>/<API path>, METHOD one of GET, HEAD, POST, PUT, PATCH, DELETE (for example %sGET/api/v1/namespaces/default/pods)", ExplainPrefix, ExplainPrefix)))
	}
	inner := &httpRequest{ID: r.ID, Method: method, Target: PathPrefix + target, Header: r.Header}
	o, rt, _, ok := identify(ctx, s, inner)
	if !ok {
		return refuse(o)
	}
	x, err := Explain(ctx, rt.slot.spec.Agent, rt.engine, rt.shared.Memberships, *o.identity, o.request)
	x.Agent.Name = rt.slot.spec.Name
	var ie *identity.Error
	switch {
	case errors.As(err, &ie):
		return refuse(o.with(identityDenial(ie))) // the membership source failed
	case err != nil:
		o.reason, o.message, o.cause = Reason(policy.ReasonPolicyError), "the gateway's policy could not be evaluated", err
		return refuse(o)
	}
	x.callerOnly()
	body, err := json.Marshal(x)
	if err != nil {
		o.reason, o.message, o.cause = ReasonMisconfigured, "the explanation could not be encoded", err
		return refuse(o)
	}
	o.reason = ReasonExplained
	return o, answerResponse(ReasonExplained, body)
}

// answerResponse is the gateway's own 200 answer with a JSON body (the explain and
// agent list endpoints). It is a DeniedHttpResponse: any non-OK gRPC status makes
// Envoy answer the request itself, so it never continues upstream.
func answerResponse(reason Reason, body []byte) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied), Message: string(reason)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_OK},
			Headers: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"}},
				{Header: &corev3.HeaderValue{Key: "cache-control", Value: "no-store"}},
				{Header: &corev3.HeaderValue{Key: HeaderError, Value: string(reason)}},
			},
			Body: string(body),
		}},
	}
}

// explainRequest reports whether a request target is for the explain endpoint.
func explainRequest(target string) bool {
	path, _, _ := strings.Cut(target, "?")
	return strings.HasPrefix(path, ExplainPrefix)
}
