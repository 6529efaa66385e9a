package identity

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
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
//
// Build it once per configuration with NewListed: it then carries the lower-case
// keys and a digest of the whole listing, so the per-request work of membership
// sources and caches does not grow with a 500+500-entry configuration.
type Listed struct {
	Projects []string
	Groups   []string

	projectKeys, groupKeys []string
	digest                 [sha256.Size]byte
	prepared               bool
}

// NewListed prepares a listing: lower-case keys and its digest.
func NewListed(projects, groups []string) Listed {
	l := Listed{Projects: projects, Groups: groups, prepared: true}
	l.projectKeys = lowerAll(projects)
	l.groupKeys = lowerAll(groups)
	l.digest = l.computeDigest()
	return l
}

func lowerAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(s)
	}
	return out
}

// ProjectKey is the lower-case form of Projects[i].
func (l *Listed) ProjectKey(i int) string {
	if l.prepared {
		return l.projectKeys[i]
	}
	return strings.ToLower(l.Projects[i])
}

// GroupKey is the lower-case form of Groups[i].
func (l *Listed) GroupKey(i int) string {
	if l.prepared {
		return l.groupKeys[i]
	}
	return strings.ToLower(l.Groups[i])
}

// Digest identifies the exact listing (order and spelling included): SHA-256 over
// both lists, each entry length-prefixed. It is computed once by NewListed.
func (l *Listed) Digest() [sha256.Size]byte {
	if l.prepared {
		return l.digest
	}
	return l.computeDigest()
}

func (l *Listed) computeDigest() [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	write := func(list []string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(list)))
		h.Write(n[:])
		for _, s := range list {
			binary.BigEndian.PutUint64(n[:], uint64(len(s)))
			h.Write(n[:])
			h.Write([]byte(s))
		}
	}
	write(l.Projects)
	write(l.Groups)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
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
