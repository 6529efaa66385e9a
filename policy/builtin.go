package policy

import (
	"strconv"
	"strings"
	"sync"

	"kubegate.dev/kubegate/identity"
)

// builtin is the built-in decision of rego/kubegate.rego, implemented in Go for one
// configuration. The Rego module stays the specification: TestBuiltinAgreesWithRego
// evaluates both over generated memberships and requires identical decisions, so a
// change to one without the other fails the tests.
//
// Going through Rego cost ~1.8 ms and ~6,000 allocations per new identity at real
// size (building ~250 group strings inside the evaluator); this path costs tens of
// microseconds, and the role group strings are built once per listed entry and
// shared by every identity's decision.
type builtin struct {
	agent    Agent
	accessAs AccessAs
	// projects and groups map each listed entry's lower-case path (how the policy
	// compares paths) to its index; projectPaths and groupPaths map the path exactly
	// as written, for the cache key.
	projects, groups         map[string]int32
	projectPaths, groupPaths map[string]int32
	// agentIDExtra and configProjectExtra are the same for every identity and are
	// shared (decisions are read-only).
	agentIDExtra, configProjectExtra []string

	mu         sync.Mutex
	roleGroups map[roleKey][]string // interned "gitlab:<kind>_role:<id>:<role>" for every role
}

type roleKey struct {
	kind identity.Kind
	id   int64
}

// notMemberMessage is the built-in policy's denial message (its default decision).
const notMemberMessage = "you are not a Developer or higher member of any project or group this agent's user_access lists"

func newBuiltin(agent Agent, cfg *AgentConfig) *builtin {
	b := &builtin{
		agent:              agent,
		accessAs:           cfg.UserAccess.AccessAs,
		projects:           make(map[string]int32, len(cfg.UserAccess.Projects)),
		groups:             make(map[string]int32, len(cfg.UserAccess.Groups)),
		projectPaths:       make(map[string]int32, len(cfg.UserAccess.Projects)),
		groupPaths:         make(map[string]int32, len(cfg.UserAccess.Groups)),
		agentIDExtra:       []string{strconv.FormatInt(agent.ID, 10)},
		configProjectExtra: []string{strconv.FormatInt(agent.ConfigProjectID, 10)},
		roleGroups:         map[roleKey][]string{},
	}
	for i, p := range cfg.UserAccess.Projects {
		b.projects[p.Key], b.projectPaths[p.Path] = int32(i), int32(i)
	}
	for i, g := range cfg.UserAccess.Groups {
		b.groups[g.Key], b.groupPaths[g.Path] = int32(i), int32(i)
	}
	return b
}

// qualifies is the policy's qualifying_projects / qualifying_groups condition: the
// entry is listed directly (compared lower-case) and the access is Developer or
// higher.
func (b *builtin) qualifies(m identity.Membership) bool {
	if m.AccessLevel < identity.Developer {
		return false
	}
	var listed map[string]int32
	switch m.Kind {
	case identity.KindProject:
		listed = b.projects
	case identity.KindGroup:
		listed = b.groups
	default:
		return false
	}
	_, ok := listed[strings.ToLower(m.Path)]
	return ok
}

// decide is the policy's decision for one identity and its memberships.
func (b *builtin) decide(in Input) *identityDecision {
	d, _ := b.decideParts(in)
	return d
}

// impersonationParts is an Impersonation before encoding, for the operator
// modules' input, which is built from it once per identity and then dropped.
type impersonationParts struct {
	user   string
	groups []string
	extra  map[string][]string
}

// decideParts is decide, also returning the impersonation's parts (nil without one).
func (b *builtin) decideParts(in Input) (*identityDecision, *impersonationParts) {
	var projects, groups, roles int
	for _, m := range in.Memberships {
		if b.qualifies(m) {
			if m.Kind == identity.KindProject {
				projects++
			} else {
				groups++
			}
			roles += rolesAtOrBelow(m.AccessLevel)
		}
	}
	if projects+groups == 0 {
		return &identityDecision{reason: ReasonNotMember, message: notMemberMessage, accessAs: AccessAsAgent, weight: 128}, nil
	}
	d := &identityDecision{allowed: true, reason: ReasonAllowed, accessAs: b.accessAs, weight: 128}
	if b.accessAs != AccessAsUser {
		return d, nil
	}
	// gitlab:user, then each qualifying project's roles, then each qualifying
	// group's, each in membership order (the policy's array.concat of the two
	// comprehensions).
	list := make([]string, 1, 1+roles)
	list[0] = "gitlab:user"
	for _, kind := range []identity.Kind{identity.KindProject, identity.KindGroup} {
		for _, m := range in.Memberships {
			if m.Kind == kind && b.qualifies(m) {
				list = append(list, b.roleStrings(kind, m.ID)[:rolesAtOrBelow(m.AccessLevel)]...)
			}
		}
	}
	username := in.Identity.User.Username
	// The group list is only read to encode it: its strings are the shared role
	// strings, and the identity keeps only its encoding (see Impersonation).
	parts := &impersonationParts{user: "gitlab:user:" + username, groups: list, extra: map[string][]string{
		ExtraAgentID:         b.agentIDExtra,
		ExtraUsername:        {username},
		ExtraAccessType:      {string(in.Identity.AccessType)},
		ExtraConfigProjectID: b.configProjectExtra,
	}}
	d.impersonate = NewImpersonation(parts.user, parts.groups, parts.extra)
	// What the identity keeps: its encoding, the protobuf value and the
	// Impersonate-User header around it.
	d.weight += uint32(d.impersonate.Handoff().Bytes() + 2*len(username) + 320)
	return d, parts
}

// rolesAtOrBelow counts GitLab's roles at or below level: the policy's
// "some r in roles; r.level <= m.access_level" (roles are in ascending order).
func rolesAtOrBelow(level identity.AccessLevel) int {
	n := 0
	for _, r := range identity.Roles {
		if r.Level <= level {
			n++
		}
	}
	return n
}

// maxInternedEntries bounds the interned role strings: one set per listed entry is
// expected (an entry keeps its id), so a larger number means ids change under the
// same paths, and further sets are built per decision instead of kept.
const maxInternedEntries = 4 * (MaxProjects + MaxGroups)

// roleStrings returns "gitlab:<kind>_role:<id>:<role>" for every role in ascending
// order, built once per entry and shared.
func (b *builtin) roleStrings(kind identity.Kind, id int64) []string {
	k := roleKey{kind, id}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.roleGroups[k]; ok {
		return s
	}
	prefix := "gitlab:" + string(kind) + "_role:" + strconv.FormatInt(id, 10) + ":"
	s := make([]string, len(identity.Roles))
	for i, r := range identity.Roles {
		s[i] = prefix + r.Name
	}
	if len(b.roleGroups) < maxInternedEntries {
		b.roleGroups[k] = s
	}
	return s
}
