# kubegate's built-in decision: who may pass, and as whom (access.md §3).
#
# This module is the specification. What runs is its Go implementation
# (policy/builtin.go, once per identity, membership set and configuration, then
# cached): TestBuiltinAgreesWithRego evaluates both over generated memberships and
# requires the same decision, groups in the same order included. Change both together.
#
# Input (the identity part the Go engine also gives operator modules):
#   agent:        {id, config_project_id}
#   user:         {id, username}
#   access_type:  personal_access_token | oidc_id_token | session_cookie
#   memberships:  [{kind: project|group, id, path, access_level}]  effective (inherited) levels
# Data:
#   data.user_access: {access_as: agent|user, projects: {<lower path>: true}, groups: {...}}
#     (paths are keyed lower-case: they compare case-insensitively)
package kubegate.builtin

import rego.v1

# GitLab's roles in ascending order; role lists are cumulative.
roles := [
	{"name": "guest", "level": 10},
	{"name": "planner", "level": 15},
	{"name": "reporter", "level": 20},
	{"name": "developer", "level": 30},
	{"name": "maintainer", "level": 40},
	{"name": "owner", "level": 50},
]

developer := 30

# Only entries listed directly in user_access count, and only at Developer or higher.
qualifying_projects := [m |
	some m in input.memberships
	m.kind == "project"
	m.access_level >= developer
	data.user_access.projects[lower(m.path)]
]

qualifying_groups := [m |
	some m in input.memberships
	m.kind == "group"
	m.access_level >= developer
	data.user_access.groups[lower(m.path)]
]

allowed if count(qualifying_projects) + count(qualifying_groups) > 0

# Groups in the exact order of access.md §3: gitlab:user, then each qualifying
# project's roles, then each qualifying group's roles. Ids, never paths.
project_role_groups := [sprintf("gitlab:project_role:%d:%s", [m.id, r.name]) |
	some m in qualifying_projects
	some r in roles
	r.level <= m.access_level
]

group_role_groups := [sprintf("gitlab:group_role:%d:%s", [m.id, r.name]) |
	some m in qualifying_groups
	some r in roles
	r.level <= m.access_level
]

impersonate := {
	"user": sprintf("gitlab:user:%s", [input.user.username]),
	"groups": array.concat(["gitlab:user"], array.concat(project_role_groups, group_role_groups)),
	"extra": {
		"agent.gitlab.com/id": [sprintf("%d", [input.agent.id])],
		"agent.gitlab.com/username": [input.user.username],
		"agent.gitlab.com/access_type": [input.access_type],
		"agent.gitlab.com/config_project_id": [sprintf("%d", [input.agent.config_project_id])],
	},
}

default decision := {
	"allowed": false,
	"reason": "not_a_member",
	"message": "you are not a Developer or higher member of any project or group this agent's user_access lists",
	"access_as": "agent",
}

decision := {
	"allowed": true,
	"reason": "allowed",
	"message": "",
	"access_as": "agent",
} if {
	allowed
	data.user_access.access_as == "agent"
}

decision := {
	"allowed": true,
	"reason": "allowed",
	"message": "",
	"access_as": "user",
	"impersonate": impersonate,
} if {
	allowed
	data.user_access.access_as == "user"
}
