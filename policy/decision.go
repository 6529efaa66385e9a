package policy

import "kubegate.dev/kubegate/identity"

// Agent is the agent a gateway serves.
type Agent struct {
	ID              int64
	ConfigProjectID int64 // the project holding .gitlab/agents/<name>/config.yaml
}

// Input is what a decision is made from: who is calling, their effective access to
// the listed projects and groups, and what they ask of the API server.
type Input struct {
	Identity    identity.Identity
	Memberships []identity.Membership
	Request     Request
}

// Reason says why a decision came out as it did. Values are stable: metric labels
// and audit log fields.
type Reason string

const (
	ReasonAllowed      Reason = "allowed"
	ReasonNotMember    Reason = "not_a_member"  // no Developer+ membership of a listed entry
	ReasonPolicyDenied Reason = "policy_denied" // an operator module denied
	ReasonPolicyError  Reason = "policy_error"  // the policy could not be evaluated: denied
)

// Decision is the outcome for one request.
type Decision struct {
	Allowed     bool           `json:"allowed"`
	Reason      Reason         `json:"reason"`
	Message     string         `json:"message,omitempty"`
	AccessAs    AccessAs       `json:"access_as"`
	Impersonate *Impersonation `json:"impersonate,omitempty"` // only when allowed in user mode
	Request     Request        `json:"request"`
}

// Impersonation is the identity the API server must see in user mode.
type Impersonation struct {
	User   string              `json:"user"`
	Groups []string            `json:"groups"`
	Extra  map[string][]string `json:"extra"`
}

// Extra keys carried to the API server (GitLab's names).
const (
	ExtraAgentID         = "agent.gitlab.com/id"
	ExtraUsername        = "agent.gitlab.com/username"
	ExtraAccessType      = "agent.gitlab.com/access_type"
	ExtraConfigProjectID = "agent.gitlab.com/config_project_id"
)

// ExtraKeys lists every extra key kubegate sets; the agent's RBAC must allow
// impersonating each (userextras/<key>), since RBAC has no wildcard for them.
var ExtraKeys = []string{ExtraAgentID, ExtraUsername, ExtraAccessType, ExtraConfigProjectID}
