package identity

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"kubegate.dev/kubegate/contract"
)

// Header is a request's headers as Envoy hands them to ext_authz with
// encode_raw_headers: lower-case names, one entry per header line, values not joined.
type Header map[string][]string

// Names of the request parts credentials are read from (access.md §2). They are also
// what the gateway removes before the request goes upstream.
const (
	HeaderAuthorization = contract.HeaderAuthorization
	HeaderCookie        = contract.HeaderCookie
	HeaderAgentID       = contract.HeaderAgentID
	HeaderCSRFToken     = contract.HeaderCSRFToken
	QueryAgentID        = contract.QueryAgentID
	QueryCSRFToken      = contract.QueryCSRFToken
	SessionCookieName   = contract.SessionCookie
)

// Credential carriers the API server reads that the gateway never accepts. The
// API server authenticates a WebSocket request by a subprotocol
// "base64url.bearer.authorization.k8s.io.<base64url token>" (k8s.io/apiserver
// pkg/authentication/request/websocket/protocol.go, in kube-apiserver's chain next
// to the Authorization bearer token: pkg/kubeapiserver/authenticator/config.go),
// and it counts an access_token query parameter as an attempted credential
// (endpoints/filters/authn_audit.go). Envoy overwrites only Authorization, so
// either would reach the cluster: a request carrying one is refused.
const (
	HeaderWebSocketProtocol = "sec-websocket-protocol"
	WebSocketBearerPrefix   = "base64url.bearer.authorization.k8s.io."
	QueryAccessToken        = "access_token"
)

// ForeignCredential reports a credential in the request that is not the gateway's
// own but one the API server would read (see above): a message for the client,
// naming the carrier and never its value, or "" when there is none. kubectl's own
// subprotocols (v5.channel.k8s.io, v4.channel.k8s.io, SPDY/3.1+portforward.k8s.io,
// portforward.k8s.io, …) are not credentials and pass.
func ForeignCredential(h Header, query url.Values) string {
	for _, line := range h[HeaderWebSocketProtocol] {
		for _, p := range strings.Split(line, ",") {
			p = strings.TrimSpace(p)
			// The API server matches the prefix case-sensitively; refusing any case
			// costs a real client nothing.
			if len(p) >= len(WebSocketBearerPrefix) && strings.EqualFold(p[:len(WebSocketBearerPrefix)], WebSocketBearerPrefix) {
				return "the Sec-WebSocket-Protocol header carries a bearer token (" + WebSocketBearerPrefix + "…), which the API server would try as a credential; the gateway passes on only its own: authenticate with Authorization: Bearer and drop that subprotocol"
			}
		}
	}
	if _, present := query[QueryAccessToken]; present {
		return "the access_token query parameter is a credential the API server would see; the gateway passes on only its own: authenticate with Authorization: Bearer and remove access_token"
	}
	return ""
}

// maxCredentialLen bounds any one credential value. GitLab PATs are ~50 bytes and
// ID tokens a few KiB; anything longer is refused before it is hashed or parsed.
const maxCredentialLen = 16 << 10

const bearerPrefix = "Bearer " // case-sensitive, like KAS

// ParseCredential reads the credential from a request, in the order of access.md §2:
// the Authorization header (PAT, then OIDC forms), then the session cookie. The first
// form present decides; a malformed form is an error at once and never falls through
// to the next. The error is always an *Error.
func ParseCredential(h Header, query url.Values) (Credential, error) {
	if auth, present := h[HeaderAuthorization]; present {
		return parseAuthorization(auth)
	}
	if session, present, err := sessionCookie(h[HeaderCookie]); err != nil {
		return Credential{}, err
	} else if present {
		return parseSession(session, h, query)
	}
	return Credential{}, &Error{Reason: ReasonNoCredential,
		Public: "no credential: send Authorization: Bearer pat:<agent-id>:<token> (kubectl does this when the kubeconfig user has a token or runs kubegate get-token)"}
}

func parseAuthorization(lines []string) (Credential, error) {
	if len(lines) != 1 {
		return Credential{}, Malformed("%d Authorization headers: send exactly one", len(lines))
	}
	v := lines[0]
	if err := checkValue("the Authorization header", v); err != nil {
		return Credential{}, err
	}
	token, ok := strings.CutPrefix(v, bearerPrefix)
	if !ok {
		return Credential{}, Malformed(`the Authorization header must be "Bearer <token>" (the scheme is case-sensitive)`)
	}
	if token == "" {
		return Credential{}, Malformed("the bearer token is empty")
	}
	if strings.ContainsAny(token, ", \t") {
		// No token kubegate accepts has a comma or blank. Envoy joins repeated
		// Authorization lines into one with ", " (Authorization is an inline header,
		// which encode_raw_headers cannot keep apart), so this is how two
		// Authorization headers usually arrive.
		return Credential{}, Malformed("the bearer token contains a comma or a blank: send exactly one Authorization header with one token")
	}
	typ, rest, hasColon := strings.Cut(token, ":")
	switch {
	case hasColon && typ == "pat":
		return parseTyped(AccessPersonalAccessToken, "pat", rest)
	case hasColon && typ == "oidc":
		return parseTyped(AccessOIDCIDToken, "oidc", rest)
	case looksLikeJWS(token):
		// The bare form: an OIDC ID token for the gateway's own agent.
		return Credential{Type: AccessOIDCIDToken, Secret: token}, nil
	default:
		return Credential{}, Malformed("unrecognised bearer token: expected pat:<agent-id>:<token>, oidc:<agent-id>:<id-token> or an OIDC ID token")
	}
}

// parseTyped parses "<agent-id>:<secret>"; the secret is the rest and may contain ':'.
func parseTyped(t AccessType, prefix, rest string) (Credential, error) {
	idText, secret, ok := strings.Cut(rest, ":")
	if !ok {
		return Credential{}, Malformed("malformed %s token: expected %s:<agent-id>:<token>", prefix, prefix)
	}
	id, err := ParseAgentID(idText)
	if err != nil {
		return Credential{}, Malformed("malformed %s token: %v", prefix, err)
	}
	if secret == "" {
		return Credential{}, Malformed("malformed %s token: the token after the agent id is empty", prefix)
	}
	return Credential{Type: t, AgentID: id, Secret: secret}, nil
}

// ParseAgentID parses an agent id: a positive decimal int64 without sign or leading zeros.
func ParseAgentID(s string) (int64, error) {
	if s == "" {
		return 0, errorf("the agent id is empty")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errorf("the agent id must be a positive decimal number")
		}
	}
	if s[0] == '0' {
		return 0, errorf("the agent id must be a positive decimal number without leading zeros")
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errorf("the agent id is out of range")
	}
	return id, nil
}

type errorf string

func (e errorf) Error() string { return string(e) }

// looksLikeJWS reports whether s has the shape of a compact JWS: three base64url
// segments separated by dots. Verification is the OIDC authenticator's job.
func looksLikeJWS(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return false
	}
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// sessionCookie finds the kubegate_session cookie in the Cookie header lines.
// Two session cookies are malformed: which one is meant cannot be known.
func sessionCookie(lines []string) (value string, present bool, err error) {
	for _, line := range lines {
		cookies, perr := http.ParseCookie(line)
		if perr != nil {
			// Other cookies may be malformed without concerning us; only look for ours.
			continue
		}
		for _, c := range cookies {
			if c.Name != SessionCookieName {
				continue
			}
			if present {
				return "", false, Malformed("more than one %s cookie", SessionCookieName)
			}
			value, present = c.Value, true
		}
	}
	return value, present, nil
}

func parseSession(session string, h Header, query url.Values) (Credential, error) {
	if session == "" {
		return Credential{}, Malformed("the %s cookie is empty", SessionCookieName)
	}
	if err := checkValue("the session cookie", session); err != nil {
		return Credential{}, err
	}
	agentText, err := oneOf("agent id", h[HeaderAgentID], query[QueryAgentID], "the Gitlab-Agent-Id header or the gitlab-agent-id query parameter")
	if err != nil {
		return Credential{}, err
	}
	id, perr := ParseAgentID(agentText)
	if perr != nil {
		return Credential{}, Malformed("malformed Gitlab-Agent-Id: %v", perr)
	}
	csrf, err := oneOf("CSRF token", h[HeaderCSRFToken], query[QueryCSRFToken], "the X-Csrf-Token header or the gitlab-csrf-token query parameter")
	if err != nil {
		return Credential{}, err
	}
	if err := checkValue("the CSRF token", csrf); err != nil {
		return Credential{}, err
	}
	return Credential{Type: AccessSessionCookie, AgentID: id, Secret: session, CSRF: csrf}, nil
}

// oneOf picks a value from a header or, failing that, a query parameter (a browser
// WebSocket cannot set headers). More than one value in either place is refused.
func oneOf(what string, header, query []string, where string) (string, error) {
	if len(header) > 1 || len(query) > 1 {
		return "", Malformed("more than one %s: send exactly one in %s", what, where)
	}
	switch {
	case len(header) == 1 && header[0] != "":
		return header[0], nil
	case len(query) == 1 && query[0] != "":
		return query[0], nil
	}
	return "", Malformed("a session cookie needs the %s in %s", what, where)
}

// checkValue refuses values no real client sends: too long, not UTF-8, or with
// control characters (CR/LF smuggling, NUL).
func checkValue(what, v string) error {
	if len(v) > maxCredentialLen {
		return Malformed("%s is longer than %d bytes", what, maxCredentialLen)
	}
	if !utf8.ValidString(v) {
		return Malformed("%s is not valid UTF-8", what)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return Malformed("%s contains control characters", what)
		}
	}
	return nil
}
