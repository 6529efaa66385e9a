package identity

import (
	"context"
	"fmt"
)

// AccessLevel is a GitLab role's numeric access level.
type AccessLevel int

// GitLab's access levels (https://docs.gitlab.com/api/members/#roles).
const (
	NoAccess   AccessLevel = 0
	Guest      AccessLevel = 10
	Planner    AccessLevel = 15
	Reporter   AccessLevel = 20
	Developer  AccessLevel = 30
	Maintainer AccessLevel = 40
	Owner      AccessLevel = 50
)

// Roles lists every role in ascending order of access level.
var Roles = []struct {
	Name  string
	Level AccessLevel
}{
	{"guest", Guest}, {"planner", Planner}, {"reporter", Reporter},
	{"developer", Developer}, {"maintainer", Maintainer}, {"owner", Owner},
}

// ParseRole maps a role name (guest … owner) to its access level.
func ParseRole(name string) (AccessLevel, error) {
	for _, r := range Roles {
		if r.Name == name {
			return r.Level, nil
		}
	}
	return NoAccess, fmt.Errorf("unknown role %q: use one of guest, planner, reporter, developer, maintainer, owner", name)
}

// Kind says whether a user_access entry is a project or a group.
type Kind string

const (
	KindProject Kind = "project"
	KindGroup   Kind = "group"
)

// Listed names the projects and groups an agent's user_access lists, by full path
// as written in the agent configuration file (compared case-insensitively).
type Listed struct {
	Projects []string
	Groups   []string
}

// Membership is a user's effective access to one listed project or group: the
// highest of their direct membership and every membership inherited from an ancestor
// group. Membership in a subgroup never counts towards its parent.
type Membership struct {
	Kind        Kind
	ID          int64  // numeric id of the project or group
	Path        string // the full path as written in the agent configuration
	AccessLevel AccessLevel
}

// MembershipResolver finds a user's effective access to the listed projects and
// groups. It returns one Membership per listed entry the user has any access to, in
// the order of the listing (projects first, then groups); entries the user cannot
// reach, or that do not exist, are left out. An error means the answer is unknown
// (for example the source is unreachable) and must lead to a denial.
type MembershipResolver interface {
	Memberships(ctx context.Context, user User, listed Listed) ([]Membership, error)
}
