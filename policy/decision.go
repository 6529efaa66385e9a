package policy

import (
	"encoding/json"
	"fmt"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
)

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

// Impersonation is the identity the API server must see in user mode. It is kept
// only in its hand-off encoding (package handoff), made once per identity and
// configuration: that is what every request sends to ext_proc, and at real size
// (243 groups) a group slice and an extra map beside it would more than double
// what a cached identity weighs. Groups and Extra decode it for the few readers.
// Read-only: shared by every request of the identity.
type Impersonation struct {
	id *handoff.Identity
}

// NewImpersonation encodes an identity.
func NewImpersonation(user string, groups []string, extra map[string][]string) *Impersonation {
	return &Impersonation{id: handoff.NewIdentity(user, groups, extra)}
}

// Handoff is the identity encoded for ext_proc.
func (i *Impersonation) Handoff() *handoff.Identity { return i.id }

// User is the user the API server sees.
func (i *Impersonation) User() string { return i.id.User() }

// Groups are the groups, in order (decoded on each call; nil if the identity's
// text is not UTF-8, which ext_proc refuses too).
func (i *Impersonation) Groups() []string {
	_, groups, _, _ := i.id.Decode()
	return groups
}

// Extra are the extra values by key (decoded on each call, as Groups).
func (i *Impersonation) Extra() map[string][]string {
	_, _, extra, _ := i.id.Decode()
	return extra
}

type impersonationJSON struct {
	User   string              `json:"user"`
	Groups []string            `json:"groups"`
	Extra  map[string][]string `json:"extra"`
}

// MarshalJSON writes {"user", "groups", "extra"}.
func (i *Impersonation) MarshalJSON() ([]byte, error) {
	user, groups, extra, err := i.id.Decode()
	if err != nil {
		return nil, fmt.Errorf("policy: the impersonation identity: %w", err)
	}
	return json.Marshal(impersonationJSON{User: user, Groups: groups, Extra: extra})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (i *Impersonation) UnmarshalJSON(b []byte) error {
	var v impersonationJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	i.id = handoff.NewIdentity(v.User, v.Groups, v.Extra)
	return nil
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
