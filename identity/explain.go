package identity

import "context"

// Relation says how one of a user's memberships reaches a listed entry.
type Relation string

const (
	// RelationDirect: the user is a member of the listed project or group itself.
	RelationDirect Relation = "direct"
	// RelationInherited: the user is a member of an ancestor group, which GitLab
	// passes down to the entry.
	RelationInherited Relation = "inherited"
	// RelationSubgroupOnly: the user is a member of a subgroup of a listed group, or
	// of a project inside it. It does not count: access.md §3.
	RelationSubgroupOnly Relation = "subgroup_only"
	// RelationEffective: access the source grants beyond the direct and inherited
	// memberships it can name (GitLab: a share with another group, an invitation,
	// which its members/all answer folds into the effective level).
	RelationEffective Relation = "effective"
)

// Grant is one membership of the user that bears on a listed entry.
type Grant struct {
	Relation    Relation    `json:"relation"`
	Kind        Kind        `json:"kind"` // of the project or group the membership is in
	Path        string      `json:"path"`
	AccessLevel AccessLevel `json:"access_level"`
}

// EntrySource is what an identity source knows about one listed entry for a user.
type EntrySource struct {
	Kind  Kind   `json:"kind"`
	Path  string `json:"path"`  // as listed
	Found bool   `json:"found"` // the source knows the path (an unknown one is skipped)
	ID    int64  `json:"id,omitempty"`
	// Grants are the user's memberships that bear on the entry. The effective
	// level Memberships reports is the highest AccessLevel among the grants that
	// are not RelationSubgroupOnly.
	Grants []Grant `json:"grants,omitempty"`
}

// MembershipExplainer is implemented by membership sources that can say where each
// effective level comes from (`kubegate explain`). It answers for the listing's
// entries in its order, projects first; each source's implementation is tested to
// agree with its Memberships.
type MembershipExplainer interface {
	ExplainMemberships(ctx context.Context, user User, listed Listed) ([]EntrySource, error)
}
