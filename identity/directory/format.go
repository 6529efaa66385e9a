// Package directory is kubegate's local source of users, groups, projects,
// memberships and personal access tokens: a YAML file used by the sandbox, the tests
// and small installations. It answers the same questions the GitLab backend answers
// (who owns this token, what is this user's effective access to these projects and
// groups) behind identity's interfaces.
//
// # File format
//
//	users:                      # people; only state "active" may authenticate
//	  - id: 1                   # numeric user id (unique, > 0)
//	    username: alice         # unique, case-insensitive; becomes gitlab:user:alice
//	    state: active           # active | blocked | deactivated | banned (default active)
//	    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$…$…"  # optional: the user may log in to
//	                            # the Dashboard with a password; an argon2id or bcrypt ($2b$…)
//	                            # PHC string, quoted; `kubegate directory hash-password` prints one
//	groups:
//	  - id: 3                   # numeric group id (unique, > 0)
//	    path: group-3           # full path (unique, case-insensitive)
//	  - id: 4
//	    path: group-3/subgroup
//	    parent: group-3         # optional; when given it must be the path's parent, which must exist
//	projects:
//	  - id: 1                   # numeric project id (unique, > 0)
//	    path: group-1/project-1 # full path; its parent (the namespace) must be a group in this file
//	    namespace: group-1      # optional; when given it must be the path's parent
//	memberships:                # direct memberships; inheritance is computed
//	  - user: alice             # a username from users
//	    project: group-1/project-1   # exactly one of project / group
//	    role: maintainer        # guest|planner|reporter|developer|maintainer|owner, or
//	    # access_level: 40      #   the numeric level instead (exactly one of the two)
//	tokens:                     # personal access tokens, stored ONLY as digests
//	  - user: alice
//	    name: laptop            # for people and logs
//	    digest: sha256:…        # `kubegate directory hash-token` prints it for a new token
//	    scopes: [k8s_proxy]     # the gateway requires k8s_proxy
//	    expires_at: 2027-12-31  # a date (the token stops working at 00:00 UTC that day, as in
//	                            # GitLab) or an RFC 3339 time; omit for no expiry
//	    revoked: false
package directory

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

type fileFormat struct {
	Users       []userEntry       `yaml:"users"`
	Groups      []groupEntry      `yaml:"groups"`
	Projects    []projectEntry    `yaml:"projects"`
	Memberships []membershipEntry `yaml:"memberships"`
	Tokens      []tokenEntry      `yaml:"tokens"`
}

type userEntry struct {
	ID           int64  `yaml:"id"`
	Username     string `yaml:"username"`
	State        string `yaml:"state"`
	PasswordHash string `yaml:"password_hash"`
	line         int
}

type groupEntry struct {
	ID     int64  `yaml:"id"`
	Path   string `yaml:"path"`
	Parent string `yaml:"parent"`
	line   int
}

type projectEntry struct {
	ID        int64  `yaml:"id"`
	Path      string `yaml:"path"`
	Namespace string `yaml:"namespace"`
	line      int
}

type membershipEntry struct {
	User        string `yaml:"user"`
	Project     string `yaml:"project"`
	Group       string `yaml:"group"`
	Role        string `yaml:"role"`
	AccessLevel int    `yaml:"access_level"`
	line        int
}

type tokenEntry struct {
	User      string   `yaml:"user"`
	Name      string   `yaml:"name"`
	Digest    string   `yaml:"digest"`
	Scopes    []string `yaml:"scopes"`
	ExpiresAt expiry   `yaml:"expires_at"`
	Revoked   bool     `yaml:"revoked"`
	line      int
}

// The UnmarshalYAML methods record each entry's line for error messages; the alias
// types decode the fields strictly (the decoder's KnownFields applies to them too).
func (e *userEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain userEntry
	e.line = n.Line
	return decodeStrict(n, (*plain)(e))
}

func (e *groupEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain groupEntry
	e.line = n.Line
	return decodeStrict(n, (*plain)(e))
}

func (e *projectEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain projectEntry
	e.line = n.Line
	return decodeStrict(n, (*plain)(e))
}

func (e *membershipEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain membershipEntry
	e.line = n.Line
	return decodeStrict(n, (*plain)(e))
}

func (e *tokenEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain tokenEntry
	e.line = n.Line
	return decodeStrict(n, (*plain)(e))
}

// decodeStrict decodes one node refusing unknown fields. yaml.Node.Decode does not
// inherit the outer decoder's KnownFields, so unknown keys are checked here by hand
// against the struct's yaml tags.
func decodeStrict(n *yaml.Node, v any) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: expected a mapping", n.Line)
	}
	known := yamlFieldNames(v)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !known[k.Value] {
			return fmt.Errorf("line %d column %d: unknown field %q (known: %s)", k.Line, k.Column, k.Value, strings.Join(sortedKeys(known), ", "))
		}
	}
	return n.Decode(v)
}

// expiry is a token's expiry: a date (GitLab's form, meaning 00:00 UTC that day) or an
// RFC 3339 timestamp. The zero value means "never expires".
type expiry struct{ time.Time }

func (e *expiry) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expires_at must be a date (2027-12-31) or an RFC 3339 time", n.Line)
	}
	if n.Value == "" || n.Tag == "!!null" {
		return nil
	}
	return e.parse(n.Value, n.Line)
}

func (e *expiry) parse(value string, line int) error {
	if t, err := time.Parse(time.DateOnly, value); err == nil {
		e.Time = t.UTC()
		return nil
	}
	t, err := time.Parse(time.RFC3339, value)
	if err != nil {
		return fmt.Errorf("line %d: expires_at %q is neither a date (2027-12-31) nor an RFC 3339 time", line, value)
	}
	e.Time = t.UTC()
	return nil
}
