// Package contract is everything kubegate's parts must agree on about a request on
// the wire: the path prefix kubectl talks to, where the user's credential travels,
// the dynamic-metadata namespace and key of the ext_authz → ext_proc hand-off, the
// impersonation headers, and the gateway's own error header and Status body.
//
// It is a leaf (it imports no kubegate package and nothing beyond apimachinery's
// Status type) owned by no single service: envoy renders the configuration from
// it, extauthz and extproc act on it, the kubeconfig code points kubectl at it.
// It used to be copied in each of them (and extproc imported extauthz for the
// hand-off), so a change in one place could silently leave the rendered Envoy
// configuration and the services disagreeing — for a credential header, that
// means a credential reaching the cluster. The wire form of the decision itself
// is the sub-package handoff, which both services import from here.
package contract

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PathPrefix is where the gateway serves the Kubernetes API (access.md §4, as GitLab
// KAS does); Envoy's route matches it and rewrites it to "/". ProxyPath is the same
// without the trailing slash, the suffix of a kubeconfig cluster's server URL.
const (
	PathPrefix = "/k8s-proxy/"
	ProxyPath  = "/k8s-proxy"
)

// APIRootPaths are the Kubernetes API's own top-level paths. The gateway serves
// them as they are, without PathPrefix, through the same ext_authz → ext_proc
// chain: kubectl's --raw (`kubectl get --raw /readyz`) ignores the path of the
// kubeconfig's server URL, so it asks for /readyz, not /k8s-proxy/readyz. A path
// is one of them when it equals a root or continues it after a "/".
// PathPrefix stays the documented server URL (KAS-compatible kubeconfigs).
var APIRootPaths = []string{"/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi", "/.well-known/openid-configuration", "/openid/v1/jwks"}

// IsAPIRootPath reports whether path (without its query) is under one of APIRootPaths.
func IsAPIRootPath(path string) bool {
	for _, root := range APIRootPaths {
		if path == root || strings.HasPrefix(path, root+"/") {
			return true
		}
	}
	return false
}

// ExplainPrefix is the gateway's explain endpoint (`kubegate explain --via-gateway`):
// GET <ExplainPrefix><METHOD>/<API path>[?query] answers, for the caller's own
// credential only, what the gateway decides for METHOD /<API path> and why. Envoy
// routes it to a direct_response (never to the API server: `kubegate envoy
// validate` checks it); kubegate authz answers it itself from Check with a
// DeniedHttpResponse, so the request never continues.
const ExplainPrefix = "/kubegate/explain/"

// AgentsPath is the gateway's agent list endpoint (`kubegate agent list --gateway`):
// GET AgentsPath, authenticated like a request under PathPrefix, answers an
// AgentList of the agents whose user_access lets the caller in (like GitLab's
// userAccessAuthorizedAgents). Envoy routes it to a direct_response, as
// ExplainPrefix; kubegate authz answers it from Check, so it never reaches a cluster.
const AgentsPath = "/kubegate/agents"

// AgentList is the body of an AgentsPath answer (JSON).
type AgentList struct {
	Agents []AgentInfo `json:"agents"`
}

// AgentInfo is one agent the caller can reach.
type AgentInfo struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	ConfigProjectID int64  `json:"config_project_id"`
	// AccessAs is "agent" or "user": how the caller's requests reach the cluster.
	AccessAs string `json:"access_as"`
}

// The browser half (issue 13). Everything under BrowserPrefix is served by kubegate
// authz's browser listener (`--browser-listen`): the login page and password form, the
// OIDC authorization-code flow, logout, the session endpoint and the Dashboard's
// embedded assets. Envoy routes the prefix to BrowserCluster with ext_authz and
// ext_proc disabled for that route only: nothing under it ever reaches a cluster, and
// `kubegate envoy validate` refuses any other route without both filters. The
// Dashboard's Kubernetes calls go to PathPrefix like kubectl's, with the session
// cookie, HeaderAgentID and HeaderCSRFToken, through ext_authz and ext_proc.
const (
	BrowserPrefix  = "/ui/"
	BrowserCluster = "kubegate_browser"

	DashboardPath    = BrowserPrefix                // GET: the Dashboard (its script sends the browser to LoginPath?next=… without a session)
	LoginPath        = BrowserPrefix + "login"      // GET: the login page; POST: password login (form fields username, password)
	OIDCLoginPath    = BrowserPrefix + "login/oidc" // GET: starts the OIDC authorization-code flow with PKCE
	OIDCCallbackPath = BrowserPrefix + "oidc/callback"
	LogoutPath       = BrowserPrefix + "logout"  // POST with HeaderCSRFToken (or form field csrf_token): ends the session everywhere
	SessionPath      = BrowserPrefix + "session" // GET: SessionInfo (JSON); refreshes the idle timer
	AssetsPrefix     = BrowserPrefix + "assets/"

	// SessionCookie is the browser session: host-only, Path=/, Secure, HttpOnly,
	// SameSite=Lax, sealed by kubegate authz with its session key.
	SessionCookie = "kubegate_session"
)

// SessionInfo is the body of a SessionPath answer: who is logged in, the CSRF token
// the Dashboard sends with every API call (bound to this session), when the session
// ends, and the agents the user can reach (as AgentsPath answers).
type SessionInfo struct {
	User          string      `json:"user"`
	CSRFToken     string      `json:"csrf_token"`
	ExpiresAt     time.Time   `json:"expires_at"`      // absolute expiry
	IdleExpiresAt time.Time   `json:"idle_expires_at"` // without activity before then, the session ends
	Agents        []AgentInfo `json:"agents"`
}

// Names of the request parts a user's credential is read from (access.md §2).
// Every one is removed before the request goes upstream (ext_authz's
// headers_to_remove and query_parameters_to_remove), and they are the only
// request headers, besides HeaderImpersonateUser, that ext_authz may mutate.
const (
	HeaderAuthorization = "authorization"
	HeaderCookie        = "cookie"
	HeaderAgentID       = "gitlab-agent-id"
	HeaderCSRFToken     = "x-csrf-token"
	QueryAgentID        = "gitlab-agent-id"
	QueryCSRFToken      = "gitlab-csrf-token"
)

// CredentialHeaders and CredentialQuery list them. Callers must not modify them.
var (
	CredentialHeaders = []string{HeaderAuthorization, HeaderCookie, HeaderAgentID, HeaderCSRFToken}
	CredentialQuery   = []string{QueryAgentID, QueryCSRFToken}
)

// MetadataNamespace is where Envoy keeps ext_authz's CheckResponse.dynamic_metadata:
// the ext_authz HTTP filter's canonical name (external_auth.proto; ext_authz.cc
// Filter::onComplete calls setDynamicMetadata with it). Envoy's ext_proc must
// forward it (metadata_options.forwarding_namespaces.untyped). MetadataKey is
// kubegate's field inside it.
const (
	MetadataNamespace = "envoy.filters.http.ext_authz"
	MetadataKey       = "kubegate"
)

// The impersonation headers the API server reads (k8s.io/apiserver
// endpoints/filters/impersonation.go; client-go transport/round_trippers.go).
// ext_authz sets HeaderImpersonateUser in user mode; ext_proc sets the rest and
// removes any a client sent; Envoy's ext_proc mutation rules allow only the prefix.
const (
	ImpersonatePrefix            = "impersonate-"
	HeaderImpersonateUser        = "impersonate-user"
	HeaderImpersonateGroup       = "impersonate-group"
	HeaderImpersonateExtraPrefix = "impersonate-extra-"
)

// HeaderUpstream names the Envoy cluster (the agent's API server) an allowed
// request goes to. kubegate authz sets it, overwriting, on every OK answer, to
// UpstreamCluster of the agent the credential was verified for; Envoy's route
// picks its cluster from it (cluster_header) once ext_authz has cleared the route
// cache. A client's own copy is removed before ext_authz runs, so a request that
// ext_authz did not route has no cluster and fails closed.
const HeaderUpstream = "x-kubegate-upstream"

// UpstreamCluster is the Envoy cluster name of an agent's API server.
func UpstreamCluster(agentID int64) string { return fmt.Sprintf("kubegate_apiserver_%d", agentID) }

// HeaderError marks a response as the gateway's own (not the cluster's) and names
// the reason; kubegate authz sets it on every denial and Envoy's local reply for a
// missing agent token sets it too.
const HeaderError = "x-kubegate-error"

// StatusBody is a Kubernetes Status object with the message "kubegate: <message>",
// so kubectl prints the gateway's errors as it prints the API server's own.
func StatusBody(code int, message string) []byte {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  "kubegate: " + message,
		Reason:   StatusReason(code),
		Code:     int32(code),
	}
	b, err := json.Marshal(st)
	if err != nil { // a struct of strings and ints cannot fail to encode
		return []byte(fmt.Sprintf(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":%d}`, code))
	}
	return b
}

// StatusReason is the Status reason of an HTTP status code the gateway answers.
func StatusReason(code int) metav1.StatusReason {
	switch code {
	case http.StatusBadRequest:
		return metav1.StatusReasonBadRequest
	case http.StatusUnauthorized:
		return metav1.StatusReasonUnauthorized
	case http.StatusForbidden:
		return metav1.StatusReasonForbidden
	case http.StatusTooManyRequests:
		return metav1.StatusReasonTooManyRequests
	case http.StatusServiceUnavailable:
		return metav1.StatusReasonServiceUnavailable
	}
	return metav1.StatusReasonInternalError
}
