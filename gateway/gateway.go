// Package gateway is the configuration of one gateway that serves several agents
// (clusters): for each agent its id and name, the project holding its agent
// configuration, where its user_access comes from, and its upstream API server
// with the CA and the service-account token file to reach it.
//
// It is the one file three processes read, each for its own part: kubegate authz
// (id, name, config project, the agent configuration), kubegate envoy render (the
// upstream URL and CA of each agent's cluster) and kubegate xds (each agent's token
// file, served as that agent's SDS secret). Keeping it one file with one loader is
// what lets them agree on which agent is which; the names Envoy and ext_authz use
// for an agent's upstream are in package contract.
//
// The single-agent flags (--agent-id, --agent-config, --apiserver, --token-file)
// are the one-agent case of this file.
package gateway

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/internal/boundedread"
)

// Config is a gateway configuration file.
type Config struct {
	// File is where it was read from ("" when built by Single).
	File   string  `json:"-"`
	Agents []Agent `json:"agents"`
}

// Agent is one cluster behind the gateway.
type Agent struct {
	// ID is GitLab's numeric agent id: the <agent-id> of pat:<agent-id>:<token>.
	ID int64 `json:"id"`
	// Name is the agent's name, the <name> of .gitlab/agents/<name>/config.yaml.
	Name string `json:"name"`
	// ConfigProjectID is the numeric id of the project holding the agent's
	// configuration (the agent.gitlab.com/config_project_id extra).
	ConfigProjectID int64 `json:"config_project_id"`
	// AgentConfig says where the agent's user_access is read from.
	AgentConfig AgentConfigSource `json:"agent_config"`
	// Upstream is the agent's Kubernetes API server.
	Upstream Upstream `json:"upstream"`
}

// AgentConfigSource is exactly one of File or GitLab.
type AgentConfigSource struct {
	// File is a local copy of .gitlab/agents/<name>/config.yaml, watched for changes.
	File string `json:"file,omitempty"`
	// GitLab reads .gitlab/agents/<name>/config.yaml from the config project's
	// default branch through GitLab's repository files API (identity source gitlab).
	GitLab *GitLabSource `json:"gitlab,omitempty"`
}

// GitLabSource is an agent configuration read from GitLab.
type GitLabSource struct {
	// Ref is the branch, tag or commit to read; "" is the project's default branch.
	Ref string `json:"ref,omitempty"`
	// Interval is how often the file is re-read (with a conditional request);
	// 0 is DefaultGitLabInterval.
	Interval Duration `json:"interval,omitempty"`
}

// DefaultGitLabInterval is how often an agent configuration held in GitLab is
// re-read when its source sets no interval.
const DefaultGitLabInterval = time.Minute

// MinGitLabInterval is the shortest interval accepted: each re-read is a request
// to GitLab per agent.
const MinGitLabInterval = 5 * time.Second

// Upstream is how Envoy reaches an agent's API server.
type Upstream struct {
	// Server is the API server's URL, https://host[:port].
	Server string `json:"server"`
	// CAFile is the PEM bundle that signed the API server's serving certificate.
	CAFile string `json:"ca_file"`
	// TokenFile is the agent's service-account token (a projected token, rotated
	// by the kubelet), served by kubegate xds as this agent's SDS secret.
	TokenFile string `json:"token_file"`
}

// Duration is a time.Duration written as "30s", "5m".
type Duration struct{ time.Duration }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 30s or 5m", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes it back as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// maxFileSize bounds what Load reads: a gateway configuration is a few KiB.
const maxFileSize = 1 << 20

// MaxAgents bounds how many agents one gateway serves; each has its own Envoy
// cluster, SDS secret and policy snapshot.
const MaxAgents = 1000

// agentName is GitLab's rule for agent names: lowercase alphanumerics and '-',
// starting and ending with an alphanumeric, at most 63 characters.
var agentName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidAgentName reports whether name follows GitLab's rule for agent names. It is
// also what keeps .gitlab/agents/<name>/config.yaml inside .gitlab/agents/ and a
// kubeconfig context name made from it plain.
func ValidAgentName(name string) bool { return agentName.MatchString(name) }

// Error lists every problem of a configuration, each with its field path.
type Error struct {
	File     string
	Problems []string
}

func (e *Error) Error() string {
	where := "the gateway configuration"
	if e.File != "" {
		where = e.File
	}
	if len(e.Problems) == 1 {
		return where + ": " + e.Problems[0]
	}
	return where + ":\n  " + strings.Join(e.Problems, "\n  ")
}

// Load reads and validates a gateway configuration file.
func Load(file string) (*Config, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, &Error{File: file, Problems: []string{fmt.Sprintf("cannot read the gateway configuration: %v", err)}}
	}
	defer f.Close()
	data, tooLarge, err := boundedread.File(f, maxFileSize)
	if err != nil {
		return nil, &Error{File: file, Problems: []string{fmt.Sprintf("cannot read the gateway configuration: %v", err)}}
	}
	if tooLarge {
		return nil, &Error{File: file, Problems: []string{fmt.Sprintf("the file is larger than %d MiB; is it the gateway configuration?", maxFileSize>>20)}}
	}
	return Parse(file, data)
}

// Parse validates a gateway configuration document. Relative file names in it are
// taken relative to the directory of file.
func Parse(file string, data []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, &Error{File: file, Problems: []string{strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: ")}}
	}
	c.File = file
	if file != "" {
		c.resolve(filepath.Dir(file))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range c.Agents {
		a := &c.Agents[i]
		abs(&a.AgentConfig.File)
		abs(&a.Upstream.CAFile)
		abs(&a.Upstream.TokenFile)
	}
}

// Validate checks the configuration and returns every problem at once, each naming
// its field path (agents[1].upstream.ca_file).
func (c *Config) Validate() error {
	var problems []string
	bad := func(field, format string, args ...any) {
		problems = append(problems, field+": "+fmt.Sprintf(format, args...))
	}
	if len(c.Agents) == 0 {
		bad("agents", "no agent is listed; a gateway serves at least one")
	}
	if len(c.Agents) > MaxAgents {
		bad("agents", "%d agents listed; one gateway serves at most %d", len(c.Agents), MaxAgents)
	}
	ids := map[int64]int{}
	names := map[string]int{}
	tokens := map[string]int{}
	for i, a := range c.Agents {
		at := fmt.Sprintf("agents[%d]", i)
		if a.ID <= 0 {
			bad(at+".id", "must be the agent's positive numeric id (the <agent-id> of pat:<agent-id>:<token>)")
		} else if j, dup := ids[a.ID]; dup {
			bad(at+".id", "agent %d is already listed as agents[%d]", a.ID, j)
		} else {
			ids[a.ID] = i
		}
		switch {
		case a.Name == "":
			bad(at+".name", "is required: the agent's name, as in .gitlab/agents/<name>/config.yaml")
		case !agentName.MatchString(a.Name):
			bad(at+".name", "%q is not an agent name (lowercase letters, digits and '-', at most 63)", a.Name)
		default:
			if j, dup := names[a.Name]; dup {
				bad(at+".name", "%q is already the name of agents[%d]", a.Name, j)
			}
			names[a.Name] = i
		}
		if a.ConfigProjectID <= 0 {
			bad(at+".config_project_id", "must be the positive numeric id of the project holding the agent configuration")
		}
		src := a.AgentConfig
		switch {
		case src.File == "" && src.GitLab == nil:
			bad(at+".agent_config", "set file (a local copy of the agent configuration) or gitlab (read it from the config project)")
		case src.File != "" && src.GitLab != nil:
			bad(at+".agent_config", "set file or gitlab, not both")
		case src.GitLab != nil && src.GitLab.Interval.Duration != 0 && src.GitLab.Interval.Duration < MinGitLabInterval:
			bad(at+".agent_config.gitlab.interval", "%v is shorter than %v", src.GitLab.Interval.Duration, MinGitLabInterval)
		}
		up := a.Upstream
		if msg := checkServer(up.Server); msg != "" {
			bad(at+".upstream.server", "%s", msg)
		}
		if up.CAFile == "" {
			bad(at+".upstream.ca_file", "is required: the CA bundle that signed the API server's certificate (the gateway never skips verification)")
		}
		if up.TokenFile == "" {
			bad(at+".upstream.token_file", "is required: the agent's service-account token file")
		} else {
			key := filepath.Clean(up.TokenFile)
			if j, dup := tokens[key]; dup {
				bad(at+".upstream.token_file", "%s is also agents[%d]'s token: each agent needs its own service account token, or one cluster's identity would reach another", up.TokenFile, j)
			} else {
				tokens[key] = i
			}
		}
	}
	if problems != nil {
		return &Error{File: c.File, Problems: problems}
	}
	return nil
}

func checkServer(s string) string {
	if s == "" {
		return "is required: the API server's URL, https://host[:port]"
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("%q is not a URL: %v", s, err)
	}
	if u.Scheme != "https" || u.Host == "" || u.Hostname() == "" {
		return fmt.Sprintf("%q must be https://host[:port]", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Sprintf("%q must be https://host[:port] with no path, query or user", s)
	}
	return ""
}

// Agent returns the agent with id, if the gateway serves it.
func (c *Config) Agent(id int64) (Agent, bool) {
	for _, a := range c.Agents {
		if a.ID == id {
			return a, true
		}
	}
	return Agent{}, false
}
