package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/cmd/kubegate/internal/explain"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

// explainJSON runs explain with -o json and decodes the report strictly.
func explainJSON(t *testing.T, args ...string) (explain.Report, string, int) {
	t.Helper()
	out, errOut, code := run(t, "", append([]string{"explain", "-o", "json"}, args...)...)
	var r explain.Report
	if out != "" {
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("-o json is not a report: %v\n%s", err, out)
		}
	}
	noSecrets(t, out+errOut)
	return r, errOut, code
}

// noSecrets: explain never prints a token or a digest.
func noSecrets(t *testing.T, s string) {
	t.Helper()
	for _, secret := range []string{"kg-sandbox-", "sha256:", "glpat-"} {
		if strings.Contains(s, secret) {
			t.Fatalf("explain printed a token or digest (%q):\n%s", secret, s)
		}
	}
}

// TestExplainOffline: from the directory, every verdict of access.md §3 with its
// reason and source, the exit codes, and the tree for people.
func TestExplainOffline(t *testing.T) {
	base := []string{"--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory}
	tests := []struct {
		name      string
		args      []string
		wantCode  int
		wantEntry string // "<kind> <path> <verdict>" of some entry
		wantGrant string // "<relation> <path>" of some source grant
		wantBy    string // result.refused_by
	}{
		{"alice, maintainer of a listed project", []string{"--user", "alice", "GET", "/api/v1/namespaces/demo/pods?watch=1"}, 0, "project group-1/project-1 qualifies", "direct group-1/project-1", ""},
		{"bob, reporter only", []string{"--user", "bob", "GET", "/api/v1/pods"}, 1, "project group-2/project-2 below_developer", "direct group-2/project-2", "gateway"},
		{"carol, through an ancestor", []string{"--user", "carol", "GET", "/api/v1/pods"}, 0, "group group-3/subgroup qualifies", "inherited group-3", ""},
		{"dave, subgroup only", []string{"--user", "dave", "GET", "/api/v1/pods"}, 1, "group group-3/subgroup no_membership", "subgroup_only group-3/subgroup/team", "gateway"},
		{"ivan, a project inside a listed group", []string{"--user", "ivan", "GET", "/api/v1/pods"}, 1, "group group-3/subgroup no_membership", "subgroup_only group-3/subgroup/project-3", "gateway"},
		{"an operator module denies", []string{"--policy", "../../policy/testdata/operator", "--user", "alice", "GET", "/api/v1/namespaces/kube-system/secrets"}, 1, "project group-1/project-1 qualifies", "direct group-1/project-1", "gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, errOut, code := explainJSON(t, append(base, tt.args...)...)
			if code != tt.wantCode || r.Result.RefusedBy != tt.wantBy {
				t.Fatalf("code %d refused by %q, want %d %q: %s %+v", code, r.Result.RefusedBy, tt.wantCode, tt.wantBy, errOut, r.Result)
			}
			var entries, grants []string
			for _, e := range r.Gateway.Entries {
				entries = append(entries, string(e.Kind)+" "+e.Path+" "+string(e.Verdict))
			}
			for _, s := range r.Sources {
				for _, g := range s.Grants {
					grants = append(grants, string(g.Relation)+" "+g.Path)
				}
			}
			if !contains(entries, tt.wantEntry) || !contains(grants, tt.wantGrant) {
				t.Fatalf("entries %q grants %q, want %q and %q", entries, grants, tt.wantEntry, tt.wantGrant)
			}
			if r.Agent.ID != 1 || r.Via != "directory" || r.Cluster != nil || r.ClusterNotAsked == "" {
				t.Fatalf("agent %+v via %s cluster %+v (%s)", r.Agent, r.Via, r.Cluster, r.ClusterNotAsked)
			}
			if tt.wantCode == 0 && (r.Gateway.Identity == nil || r.Gateway.Identity.User() != "gitlab:user:"+tt.args[1]) {
				t.Fatalf("identity %+v", r.Gateway.Identity)
			}
		})
	}
	t.Run("the tree", func(t *testing.T) {
		out, _, code := run(t, "", append(append([]string{"explain"}, base...), "--policy", "../../policy/testdata/operator", "--user", "carol", "GET", "/api/v1/namespaces/kube-system/secrets")...)
		noSecrets(t, out)
		for _, want := range []string{
			"Request:      list secrets in namespace kube-system",
			"Agent:        1 (configuration project 1), access_as: user",
			"Gateway:      REFUSED (policy_denied)",
			"+ group group-3/subgroup: qualifies",
			"inherited: developer (30) of ancestor group group-3",
			"groups: gitlab:group_role:4:guest, gitlab:group_role:4:planner, gitlab:group_role:4:reporter, gitlab:group_role:4:developer",
			"kubegate.operator.secrets: DENIES: reading secrets in kube-system",
			"kubegate.operator.exec: no denial",
			"user:   gitlab:user:carol",
			"Cluster:      not asked",
			"Result:       refused by the gateway",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the tree lacks %q:\n%s", want, out)
			}
		}
		if code != 1 {
			t.Fatalf("code %d", code)
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestExplainWithGitLab: the same answers from GitLab (the in-test stand-in,
// identity/gitlab/gitlabtest): direct and inherited memberships from its member
// and group records.
func TestExplainWithGitLab(t *testing.T) {
	gl := gitlabtest.New(time.Now())
	t.Cleanup(gl.Close)
	gl.Sandbox()
	gl.AddUser(gitlabtest.User{ID: 100, Username: "root", Admin: true})
	gl.AddToken("glpat-admin-service-token-000", gitlabtest.Token{ID: 100, UserID: 100, Name: "kubegate", Scopes: []string{"api"}})
	// The agent lives in its configuration project, which the token's user must be
	// a Developer of to see it (GET /projects/:id/cluster_agents/:agent_id).
	gl.EnableUserAPI().AddAgent("group-1/project-1", 1, "sandbox-agent")
	gl.AddMember("projects", "group-1/project-1", 100, 30)
	tokenFile := filepath.Join(t.TempDir(), "gitlab-token")
	if err := os.WriteFile(tokenFile, []byte("glpat-admin-service-token-000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig,
		"--identity-source", "gitlab", "--gitlab-url", gl.URL, "--gitlab-insecure-http-for-tests", "--gitlab-token-file", tokenFile}
	for _, tt := range []struct {
		user      string
		wantCode  int
		wantEntry string
		wantGrant string // "" for none
	}{
		{"alice", 0, "project group-1/project-1 qualifies", "direct group-1/project-1"},
		{"carol", 0, "group group-3/subgroup qualifies", "inherited group-3"},
		{"heidi", 0, "project group-1/project-1 qualifies", "inherited group-1"},
		{"bob", 1, "project group-2/project-2 below_developer", "direct group-2/project-2"},
		{"dave", 1, "group group-3/subgroup no_membership", ""},
	} {
		t.Run(tt.user, func(t *testing.T) {
			r, errOut, code := explainJSON(t, append(base, "--user", tt.user, "GET", "/api/v1/namespaces/demo/pods")...)
			var entries []string
			for _, e := range r.Gateway.Entries {
				entries = append(entries, string(e.Kind)+" "+e.Path+" "+string(e.Verdict))
			}
			if code != tt.wantCode || r.Via != "gitlab" || !contains(entries, tt.wantEntry) || r.Agent.Name != "sandbox-agent" || r.Agent.ConfigProject != "group-1/project-1" {
				t.Fatalf("code %d via %s entries %q: %s", code, r.Via, entries, errOut)
			}
			var grants []string
			for _, s := range r.Sources {
				for _, g := range s.Grants {
					grants = append(grants, string(g.Relation)+" "+g.Path)
				}
			}
			if tt.wantGrant == "" && len(grants) > 0 || tt.wantGrant != "" && !contains(grants, tt.wantGrant) {
				t.Fatalf("grants %q, want %q", grants, tt.wantGrant)
			}
		})
	}
	t.Run("an agent that is not in its configuration project", func(t *testing.T) {
		args := append([]string{"explain"}, base...)
		args[2] = "7" // --agent-id
		_, errOut, code := run(t, "", append(args, "--user", "alice", "GET", "/api")...)
		if code != 2 || !strings.Contains(errOut, "--agent-id 7") || !strings.Contains(errOut, "no agent 7 in project 1") {
			t.Fatalf("code %d: %s", code, errOut)
		}
	})
	t.Run("a user GitLab does not know", func(t *testing.T) {
		_, errOut, code := run(t, "", append(append([]string{"explain"}, base...), "--user", "nobody", "GET", "/api")...)
		if code != 2 || !strings.Contains(errOut, `user "nobody" is not an active GitLab user`) {
			t.Fatalf("code %d: %s", code, errOut)
		}
	})
}

// TestExplainUsageErrors: bad input is exit status 2 with a message naming it,
// and nothing on stdout.
func TestExplainUsageErrors(t *testing.T) {
	base := []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory}
	agentMode := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(agentMode, []byte("user_access:\n  access_as: {agent: {}}\n  projects: [{id: group-1/project-1}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown user", append(base, "--user", "zed", "GET", "/api"), `user "zed" is not an active user`},
		{"blocked user", append(base, "--user", "mallory", "GET", "/api"), `user "mallory" is not an active user`},
		{"path without a slash", append(base, "--user", "alice", "GET", "api/v1"), "not a valid origin-form request target"},
		{"dot segments", append(base, "--user", "alice", "GET", "/api/v1/namespaces/../pods"), "empty or dot segments"},
		{"ambiguous query, as the gateway refuses it", append(base, "--user", "alice", "GET", "/api/v1/pods?watch=false&%77atch=true"), "the gateway refuses this query (ambiguous_query)"},
		{"bad access type", append(base, "--user", "alice", "--access-type", "password", "GET", "/api"), `--access-type "password"`},
		{"bad output", append(base, "--user", "alice", "-o", "yaml", "GET", "/api"), `-o "yaml"`},
		{"unknown flag", append(base, "--usr", "alice", "GET", "/api"), "unknown flag: --usr"},
		{"one argument", append(base, "--user", "alice", "GET"), "explain takes METHOD and PATH"},
		{"offline without a user", []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory, "GET", "/api"}, "offline explain needs --user"},
		{"no identity source file", []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--user", "alice", "GET", "/api"}, "--identity-source=directory needs --directory"},
		{"GitLab over http", []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--user", "alice", "--identity-source", "gitlab", "--gitlab-url", "http://gitlab.example", "--gitlab-token-file", "/dev/null", "GET", "/api"}, "is http://"},
		{"--via-gateway with offline flags", []string{"explain", "--via-gateway", "--user", "bob", "GET", "/api"}, "--via-gateway explains for your own credential"},
		{"agent mode asks the cluster without --agent-user", []string{"explain", "--agent-id", "1", "--config-project-id", "1", "--agent-config", agentMode, "--directory", sandboxDirectory, "--user", "alice", "--kubeconfig", "/dev/null", "GET", "/api/v1/pods"}, "give --agent-user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, "", tt.args...)
			if code != 2 || out != "" || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code=%d out=%q err=%q, want 2 and %q", code, out, errOut, tt.want)
			}
		})
	}
}
