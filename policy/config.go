// Package policy decides. It holds the agent configuration's user_access model and
// its validation, the built-in Rego policy that turns an identity and its memberships
// into a decision and an impersonation identity, and the operator's Rego modules that
// may only add denials. Nothing here knows about protobuf or HTTP transports.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"kubegate.dev/kubegate/internal/boundedread"
)

// AccessAs is how requests reach the API server (access.md §3).
type AccessAs string

const (
	AccessAsAgent AccessAs = "agent" // as the agent's service account
	AccessAsUser  AccessAs = "user"  // impersonating the GitLab user
)

// Limits of user_access. GitLab silently ignores entries past these; kubegate refuses
// such a file, because a silently ignored grant is a support ticket.
const (
	MaxProjects = 500
	MaxGroups   = 500
)

// maxConfigSize bounds the agent configuration file.
const maxConfigSize = 4 << 20

// Entry is one project or group listed in user_access.
type Entry struct {
	Path   string // full path as written (display and ids); compare with Key
	Key    string // lower-case path: paths compare case-insensitively
	Line   int
	Column int
}

// UserAccess is the validated user_access section.
type UserAccess struct {
	AccessAs AccessAs
	Projects []Entry
	Groups   []Entry
}

// AgentConfig is a validated agent configuration file. Only user_access matters to
// kubegate; other top-level keys (ci_access, gitops, observability, …) are ignored.
type AgentConfig struct {
	File       string
	UserAccess UserAccess
	// Present is false when the file has no user_access section: nobody is granted
	// access. This is valid (removing the section is how an administrator revokes
	// everyone), and `kubegate config check` warns about it.
	Present bool
}

// Problem is one configuration error with its location.
type Problem struct {
	File   string
	Line   int // 0 when YAML gives no position
	Column int
	Field  string // field path, e.g. user_access.projects[3].id
	Msg    string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", p.Line, p.Column)
	}
	if p.Field != "" {
		b.WriteString(": " + p.Field)
	}
	b.WriteString(": " + p.Msg)
	return b.String()
}

// ConfigError lists every problem found in an agent configuration file.
type ConfigError struct{ Problems []Problem }

func (e *ConfigError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// LoadAgentConfig reads and validates a GitLab agent configuration file.
func LoadAgentConfig(file string) (*AgentConfig, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, &ConfigError{[]Problem{{File: file, Msg: fmt.Sprintf("cannot read the agent configuration: %v", unwrapPathError(err))}}}
	}
	defer f.Close()
	data, tooLarge, err := boundedread.File(f, maxConfigSize)
	if err != nil {
		return nil, &ConfigError{[]Problem{{File: file, Msg: fmt.Sprintf("cannot read the agent configuration: %v", err)}}}
	}
	if tooLarge {
		return nil, &ConfigError{[]Problem{{File: file, Msg: fmt.Sprintf("the file is larger than %d MiB; is it the agent configuration?", maxConfigSize>>20)}}}
	}
	return ParseAgentConfig(file, data)
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// ParseAgentConfig validates an agent configuration document (access.md §1). It
// returns every problem at once, each with file, line, column and field path.
func ParseAgentConfig(file string, data []byte) (*AgentConfig, error) {
	v := &validator{file: file}
	cfg := &AgentConfig{File: file, UserAccess: UserAccess{AccessAs: AccessAsAgent}}

	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // an empty file grants nobody anything
		}
		return nil, &ConfigError{[]Problem{{File: file, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ConfigError{[]Problem{{File: file, Line: extra.Line, Column: extra.Column, Msg: "more than one YAML document; the agent configuration is a single document"}}}
	}

	root := resolve(&doc)
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = resolve(root.Content[0])
	}
	if isNull(root) {
		return cfg, nil
	}
	if root.Kind != yaml.MappingNode {
		v.bad(root, "", "the agent configuration must be a mapping of keys such as user_access")
		return nil, v.err()
	}
	v.duplicates(root, "")
	ua := v.field(root, "", "user_access")
	if ua == nil {
		if v.problems != nil {
			return nil, v.err()
		}
		return cfg, nil
	}
	cfg.Present = true
	cfg.UserAccess = v.userAccess(ua)
	if len(v.problems) > 0 {
		return nil, v.err()
	}
	if err := strictDecode(ua); err != nil {
		// The node walk above is the primary check; this strict decode through
		// encoding/json guards against the walk and the schema drifting apart.
		return nil, &ConfigError{[]Problem{{File: file, Line: ua.Line, Column: ua.Column, Field: "user_access", Msg: err.Error()}}}
	}
	return cfg, nil
}

type validator struct {
	file     string
	problems []Problem
}

func (v *validator) bad(n *yaml.Node, field, format string, args ...any) {
	v.problems = append(v.problems, Problem{File: v.file, Line: n.Line, Column: n.Column, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error {
	sort.SliceStable(v.problems, func(i, j int) bool {
		a, b := v.problems[i], v.problems[j]
		return a.Line < b.Line || a.Line == b.Line && a.Column < b.Column
	})
	return &ConfigError{Problems: v.problems}
}

// resolve follows YAML aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// field returns the value of key in mapping m (nil if absent), reporting a duplicate key.
func (v *validator) field(m *yaml.Node, prefix, key string) *yaml.Node {
	var found *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := resolve(m.Content[i])
		if k.Kind == yaml.ScalarNode && k.Value == key {
			if found != nil {
				continue // keys() reports the duplicate
			}
			found = resolve(m.Content[i+1])
			if found == nil {
				found = m.Content[i+1]
			}
		}
	}
	return found
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// duplicates reports keys that appear twice in mapping m.
func (v *validator) duplicates(m *yaml.Node, prefix string) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := resolve(m.Content[i])
		if k.Kind == yaml.ScalarNode && seen[k.Value] {
			v.bad(k, join(prefix, k.Value), "appears twice")
		}
		seen[k.Value] = true
	}
}

// keys checks that mapping m has only the allowed keys (and no duplicates).
func (v *validator) keys(m *yaml.Node, prefix string, allowed ...string) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := resolve(m.Content[i])
		name := k.Value
		switch {
		case k.Kind != yaml.ScalarNode:
			v.bad(k, prefix, "keys must be plain names")
		case !contains(allowed, name):
			v.bad(k, join(prefix, name), "unknown field; %s accepts %s", orRoot(prefix), strings.Join(allowed, ", "))
		case seen[name]:
			v.bad(k, join(prefix, name), "appears twice")
		}
		seen[name] = true
	}
}

func orRoot(p string) string {
	if p == "" {
		return "the file"
	}
	return p
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (v *validator) userAccess(ua *yaml.Node) UserAccess {
	out := UserAccess{AccessAs: AccessAsAgent}
	if isNull(ua) {
		return out
	}
	if ua.Kind != yaml.MappingNode {
		v.bad(ua, "user_access", "must be a mapping with access_as, projects and groups")
		return out
	}
	v.keys(ua, "user_access", "access_as", "projects", "groups")
	out.AccessAs = v.accessAs(v.field(ua, "user_access", "access_as"))
	out.Projects = v.entries(v.field(ua, "user_access", "projects"), "user_access.projects", "project", MaxProjects)
	out.Groups = v.entries(v.field(ua, "user_access", "groups"), "user_access.groups", "group", MaxGroups)
	return out
}

// accessAs: exactly one of {agent: {}} or {user: {}}; missing or {} means agent
// (GitLab 18.3+ behaviour).
func (v *validator) accessAs(n *yaml.Node) AccessAs {
	const field = "user_access.access_as"
	if isNull(n) {
		return AccessAsAgent
	}
	if n.Kind != yaml.MappingNode {
		v.bad(n, field, "must be {agent: {}} or {user: {}}")
		return AccessAsAgent
	}
	if len(n.Content) == 0 {
		return AccessAsAgent
	}
	v.keys(n, field, "agent", "user")
	if len(n.Content) > 2 {
		v.bad(n, field, "has %d keys; give exactly one of agent or user", len(n.Content)/2)
		return AccessAsAgent
	}
	key, body := resolve(n.Content[0]), resolve(n.Content[1])
	if !isNull(body) && !(body.Kind == yaml.MappingNode && len(body.Content) == 0) {
		v.bad(body, join(field, key.Value), "must be empty ({}); kubegate knows no options here")
	}
	if key.Value == "user" {
		return AccessAsUser
	}
	return AccessAsAgent
}

func (v *validator) entries(n *yaml.Node, field, kind string, limit int) []Entry {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		v.bad(n, field, "must be a list of {id: <full path>}")
		return nil
	}
	if len(n.Content) > limit {
		v.bad(n, field, "lists %d %ss; the limit is %d (GitLab silently ignores the rest, kubegate refuses the file so no grant is lost): split them across agents or list a parent group instead", len(n.Content), kind, limit)
		return nil
	}
	out := make([]Entry, 0, len(n.Content))
	seen := map[string]*yaml.Node{}
	for i, item := range n.Content {
		item = resolve(item)
		at := fmt.Sprintf("%s[%d]", field, i)
		if item.Kind != yaml.MappingNode {
			v.bad(item, at, "must be a mapping {id: <full path>}")
			continue
		}
		v.keys(item, at, "id")
		id := v.field(item, at, "id")
		switch {
		case id == nil:
			v.bad(item, at+".id", "is missing; give the %s's full path, e.g. id: group/subgroup", kind)
		case id.Kind != yaml.ScalarNode || id.Tag != "!!str":
			v.bad(id, at+".id", "must be the %s's full path as a string, not %s", kind, describe(id))
		case id.Value == "":
			v.bad(id, at+".id", "is empty; give the %s's full path", kind)
		case !validFullPath(id.Value, kind == "project"):
			v.bad(id, at+".id", "%q is not a full %s path (like %s)", id.Value, kind, map[bool]string{true: "group/project", false: "group or group/subgroup"}[kind == "project"])
		default:
			key := strings.ToLower(id.Value)
			if first := seen[key]; first != nil {
				v.bad(id, at+".id", "%q is listed twice (first at line %d); remove the duplicate", id.Value, first.Line)
				continue
			}
			seen[key] = id
			out = append(out, Entry{Path: id.Value, Key: key, Line: id.Line, Column: id.Column})
		}
	}
	return out
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strings.TrimPrefix(n.Tag, "!!") + " " + n.Value
}

// validFullPath accepts GitLab full paths: segments of letters, digits, '_', '-', '.',
// joined by single '/', no leading or trailing '/'. A project path has at least two
// segments (namespace/project).
func validFullPath(p string, project bool) bool {
	segs := strings.Split(p, "/")
	if project && len(segs) < 2 {
		return false
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." || path.Clean(s) != s {
			return false
		}
		for _, c := range s {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return false
			}
		}
	}
	return true
}

// strictSchema mirrors user_access for the strict decoding (strictDecode).
type strictSchema struct {
	AccessAs *struct {
		Agent *struct{} `json:"agent,omitempty"`
		User  *struct{} `json:"user,omitempty"`
	} `json:"access_as,omitempty"`
	Projects []struct {
		ID string `json:"id"`
	} `json:"projects,omitempty"`
	Groups []struct {
		ID string `json:"id"`
	} `json:"groups,omitempty"`
}

// strictDecode decodes the user_access subtree (aliases resolved by yaml.v3) and
// feeds it, as JSON, to encoding/json's strict decoder (unknown fields refused).
// That is what sigs.k8s.io/yaml's UnmarshalStrict does after converting YAML to
// JSON, which this input already is: going through it converted the JSON back to
// YAML and again to JSON, 60% of parsing a 1,000-entry configuration at start-up.
// A JSON object built from a YAML mapping has no repeated keys to refuse.
func strictDecode(ua *yaml.Node) error {
	var tree any
	if err := ua.Decode(&tree); err != nil {
		return err
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s strictSchema
	if err := dec.Decode(&s); err != nil {
		// Only a walk that accepts what the schema does not gets here: a bug in
		// kubegate, not in the file, so the message says so.
		return fmt.Errorf("refused by the strict schema check although the field checks passed (a kubegate bug; please report it with this file): %w", err)
	}
	return nil
}
