package soak

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Model is the expected outcome of every request the harness sends, computed from
// the directory and agent configuration files independently of kubegate: a user may
// pass the gateway only when they are a Developer-or-higher member, directly or
// through an ancestor group, of a project or group the agent config lists
// (access.md §3). Everything else the harness sends is refused by design.
type Model struct {
	qualifies map[string]bool
	users     []string // every user, in directory order
}

// dirFile is the part of the directory format (identity/directory) the model reads.
type dirFile struct {
	Users []struct {
		Username string `json:"username"`
	} `json:"users"`
	Groups []struct {
		Path   string `json:"path"`
		Parent string `json:"parent"`
	} `json:"groups"`
	Projects []struct {
		Path string `json:"path"`
	} `json:"projects"`
	Memberships []struct {
		User    string `json:"user"`
		Group   string `json:"group"`
		Project string `json:"project"`
		Role    string `json:"role"`
	} `json:"memberships"`
}

type agentFile struct {
	UserAccess struct {
		Projects []struct {
			ID string `json:"id"`
		} `json:"projects"`
		Groups []struct {
			ID string `json:"id"`
		} `json:"groups"`
	} `json:"user_access"`
}

// levels are GitLab's access levels (access.md §3).
var levels = map[string]int{"guest": 10, "planner": 15, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}

const developer = 30

// NewModel reads a directory and an agent configuration (YAML).
func NewModel(directoryYAML, agentConfigYAML []byte) (*Model, error) {
	var d dirFile
	if err := yaml.Unmarshal(directoryYAML, &d); err != nil {
		return nil, fmt.Errorf("model: directory: %w", err)
	}
	var a agentFile
	if err := yaml.Unmarshal(agentConfigYAML, &a); err != nil {
		return nil, fmt.Errorf("model: agent config: %w", err)
	}
	parent := map[string]string{}
	for _, g := range d.Groups {
		parent[strings.ToLower(g.Path)] = strings.ToLower(g.Parent)
	}
	// level[user][entity] is the user's direct level on a group ("g:path") or a
	// project ("p:path").
	level := map[string]map[string]int{}
	for _, m := range d.Memberships {
		l, ok := levels[m.Role]
		if !ok {
			return nil, fmt.Errorf("model: membership of %s: unknown role %q", m.User, m.Role)
		}
		key := "g:" + strings.ToLower(m.Group)
		if m.Project != "" {
			key = "p:" + strings.ToLower(m.Project)
		}
		if level[m.User] == nil {
			level[m.User] = map[string]int{}
		}
		level[m.User][key] = max(level[m.User][key], l)
	}
	// effective is the highest of a group's own level and its ancestors'.
	effective := func(user, group string) int {
		best := 0
		for g := group; g != ""; g = parent[g] {
			best = max(best, level[user]["g:"+g])
		}
		return best
	}
	m := &Model{qualifies: map[string]bool{}}
	for _, u := range d.Users {
		m.users = append(m.users, u.Username)
		ok := false
		for _, p := range a.UserAccess.Projects {
			path := strings.ToLower(p.ID)
			ns := path[:max(strings.LastIndexByte(path, '/'), 0)]
			if max(level[u.Username]["p:"+path], effective(u.Username, ns)) >= developer {
				ok = true
				break
			}
		}
		for _, g := range a.UserAccess.Groups {
			if ok {
				break
			}
			ok = effective(u.Username, strings.ToLower(g.ID)) >= developer
		}
		m.qualifies[u.Username] = ok
	}
	return m, nil
}

// Qualifies reports whether user may pass the gateway.
func (m *Model) Qualifies(user string) bool { return m.qualifies[user] }

// Members and NonMembers split the directory's users by Qualifies, in directory order.
func (m *Model) Members() (out []string) {
	for _, u := range m.users {
		if m.qualifies[u] {
			out = append(out, u)
		}
	}
	return out
}

func (m *Model) NonMembers() (out []string) {
	for _, u := range m.users {
		if !m.qualifies[u] {
			out = append(out, u)
		}
	}
	return out
}
