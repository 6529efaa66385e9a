package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `agents:
  - id: 1
    name: production
    config_project_id: 7
    agent_config: {file: agents/production.yaml}
    upstream: {server: "https://10.0.0.1:6443", ca_file: production-ca.crt, token_file: /var/run/agents/production/token}
  - id: 2
    name: staging
    config_project_id: 7
    agent_config: {gitlab: {ref: main, interval: 2m}}
    upstream: {server: "https://staging.example:443", ca_file: /etc/staging-ca.crt, token_file: /var/run/agents/staging/token}
`

func TestParse(t *testing.T) {
	c, err := Parse("/etc/kubegate/gateway.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Agents) != 2 {
		t.Fatalf("%d agents", len(c.Agents))
	}
	p := c.Agents[0]
	if p.AgentConfig.File != "/etc/kubegate/agents/production.yaml" || p.Upstream.CAFile != "/etc/kubegate/production-ca.crt" {
		t.Errorf("relative paths not resolved against the file's directory: %+v", p)
	}
	if p.Upstream.TokenFile != "/var/run/agents/production/token" {
		t.Errorf("an absolute path changed: %q", p.Upstream.TokenFile)
	}
	s, ok := c.Agent(2)
	if !ok || s.AgentConfig.GitLab == nil || s.AgentConfig.GitLab.Ref != "main" || s.AgentConfig.GitLab.Interval.Minutes() != 2 {
		t.Errorf("agent 2 = %+v, %v", s, ok)
	}
	if _, ok := c.Agent(3); ok {
		t.Error("Agent(3) found an agent the file does not list")
	}
}

// Each bad input is refused with every problem's field path, so the operator can
// fix them all at once.
func TestValidateNamesTheField(t *testing.T) {
	agent := func(edit string) string {
		base := "  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {file: a.yaml}\n    upstream: {server: \"https://h:6443\", ca_file: ca.crt, token_file: a-token}\n"
		return base + edit
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"no agents", "agents: []\n", []string{"agents: no agent is listed"}},
		{"unknown field", "agents:\n  - id: 1\n    nmae: a\n", []string{`unknown field "nmae"`}},
		{"duplicate id", "agents:\n" + agent("  - id: 1\n    name: b\n    config_project_id: 1\n    agent_config: {file: b.yaml}\n    upstream: {server: \"https://h2\", ca_file: ca.crt, token_file: b-token}\n"),
			[]string{"agents[1].id: agent 1 is already listed as agents[0]"}},
		{"duplicate name", "agents:\n" + agent("  - id: 2\n    name: a\n    config_project_id: 1\n    agent_config: {file: b.yaml}\n    upstream: {server: \"https://h2\", ca_file: ca.crt, token_file: b-token}\n"),
			[]string{`agents[1].name: "a" is already the name of agents[0]`}},
		{"shared token file", "agents:\n" + agent("  - id: 2\n    name: b\n    config_project_id: 1\n    agent_config: {file: b.yaml}\n    upstream: {server: \"https://h2\", ca_file: ca.crt, token_file: ./a-token}\n"),
			[]string{"agents[1].upstream.token_file:", "also agents[0]'s token"}},
		{"missing CA", "agents:\n  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {file: a.yaml}\n    upstream: {server: \"https://h\", token_file: t}\n",
			[]string{"agents[0].upstream.ca_file: is required", "never skips verification"}},
		{"every problem at once", "agents:\n  - id: 0\n    name: Not_A_Name\n    agent_config: {}\n    upstream: {server: \"http://h\"}\n",
			[]string{"agents[0].id:", "agents[0].name:", "agents[0].config_project_id:", "agents[0].agent_config: set file", "agents[0].upstream.server:", "agents[0].upstream.ca_file:", "agents[0].upstream.token_file:"}},
		{"both sources", "agents:\n  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {file: a.yaml, gitlab: {}}\n    upstream: {server: \"https://h\", ca_file: c, token_file: t}\n",
			[]string{"agents[0].agent_config: set file or gitlab, not both"}},
		{"short interval", "agents:\n  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {gitlab: {interval: 1s}}\n    upstream: {server: \"https://h\", ca_file: c, token_file: t}\n",
			[]string{"agents[0].agent_config.gitlab.interval: 1s is shorter than 5s"}},
		{"bad interval", "agents:\n  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {gitlab: {interval: soon}}\n    upstream: {server: \"https://h\", ca_file: c, token_file: t}\n",
			[]string{`"soon" is not a duration`}},
		{"server with a path", "agents:\n  - id: 1\n    name: a\n    config_project_id: 1\n    agent_config: {file: a}\n    upstream: {server: \"https://h/k8s\", ca_file: c, token_file: t}\n",
			[]string{"agents[0].upstream.server:", "no path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(t.TempDir(), "gateway.yaml"), []byte(tt.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "cannot read the gateway configuration") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
	f := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(f, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(f)
	if err != nil || c.File != f {
		t.Fatalf("Load = %+v, %v", c, err)
	}
}
