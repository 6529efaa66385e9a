package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"kubegate.dev/kubegate/cmd/kubegate/internal/kubeconfig"
	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity/usertoken"
)

// agent list's exit codes: those of explain (README, explain).
const (
	agentListRefused    = explainRefused
	agentListUnanswered = explainUnanswered
)

func newAgentCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "The agents (clusters) you can reach, like 'glab cluster agent'",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newAgentListCommand())
	return cmd
}

type agentListOptions struct {
	gateway                           string
	gatewayKubeconfig, gatewayContext string

	gitlabURL, gitlabTokenFile string
	gitlabInsecureHTTP         bool
	project                    string

	output  string
	timeout time.Duration

	getenv func(string) string
}

func newAgentListCommand() *cobra.Command {
	o := &agentListOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the agents you can reach through a gateway, or a GitLab project's agents",
		Long: `List agents in one of two ways.

Through a gateway (the default): ask the gateway's agent list endpoint (` + contract.AgentsPath + `)
which of its agents your credential reaches: those whose user_access lets you in,
like GitLab's userAccessAuthorizedAgents. Your credential is the one kubectl uses:
the kubeconfig context update-kubeconfig wrote (its get-token exec plugin). With
--gateway URL the context whose server is <URL>/k8s-proxy is used (--gateway-context
picks one); without it, the current context. Columns: ID, NAME, CONFIG PROJECT (the
config project's id), ACCESS (agent: requests reach the cluster as the agent's
service account; user: as you, impersonated).

From GitLab (--gitlab-url and --project): the project's agents, every page of
GET /projects/:id/cluster_agents with your GitLab token (GITLAB_TOKEN or
--gitlab-token-file; scope read_api; the Developer role in the project), as
'glab cluster agent list' shows them: ID, NAME, CREATED AT.

-o json prints the answer for scripts. Exit status: 0 listed, 1 refused (the
gateway's 401/403, or GitLab's 401/403/404, with their message), 2 usage error,
3 no answer (unreachable, 5xx, not a kubegate gateway).`,
		Example: `  # the agents your current kubeconfig context's credential reaches
  kubegate agent list

  # through a given gateway, as JSON
  kubegate agent list --gateway https://kubegate.example.com -o json

  # a project's agents in GitLab
  kubegate agent list --gitlab-url https://gitlab.example.com --project group-1/project-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.getenv = os.Getenv
			if err := o.validate(cmd.Flags()); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			if o.gitlabURL != "" {
				return o.fromGitLab(ctx, cmd.OutOrStdout())
			}
			return o.fromGateway(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	f := cmd.Flags()
	f.StringVar(&o.gateway, "gateway", "", "the gateway's https address, e.g. https://kubegate.example.com: use the kubeconfig context whose server is <address>/k8s-proxy (default: the current context's gateway)")
	f.StringVar(&o.gatewayKubeconfig, "gateway-kubeconfig", "", "the kubeconfig holding the gateway's context (default: KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.gatewayContext, "gateway-context", "", "the kubeconfig context whose credential is used (default: the one for --gateway, else the current context)")
	f.StringVar(&o.gitlabURL, "gitlab-url", "", "list a project's agents from GitLab at this address (with --project) instead of asking a gateway")
	f.StringVar(&o.gitlabTokenFile, "gitlab-token-file", "", "file holding your GitLab personal access token (read_api); default: the "+usertoken.EnvGitLabToken+" environment variable")
	f.BoolVar(&o.gitlabInsecureHTTP, "gitlab-insecure-http-for-tests", false, "INSECURE: allow an http:// --gitlab-url, sending your GitLab token unencrypted; only for a GitLab stand-in in tests")
	f.StringVar(&o.project, "project", "", "with --gitlab-url: the project's id or full path (group/project)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table (for people) or json (for scripts)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "bound on the whole listing")
	return cmd
}

func (o *agentListOptions) validate(flags *pflag.FlagSet) error {
	if o.output != "table" && o.output != "json" {
		return usageError("-o %q: use table or json", o.output)
	}
	if o.timeout <= 0 {
		return usageError("--timeout must be positive")
	}
	gitlabFlags := []string{"gitlab-url", "gitlab-token-file", "gitlab-insecure-http-for-tests", "project"}
	if o.gitlabURL == "" && o.project == "" {
		for _, name := range gitlabFlags {
			if flags.Changed(name) {
				return usageError("--%s lists agents from GitLab and needs --gitlab-url and --project", name)
			}
		}
		if o.gateway != "" {
			if _, err := kubeconfig.ServerURL(o.gateway); err != nil {
				return usageError("--gateway %q must be the gateway's https address, such as https://kubegate.example.com", o.gateway)
			}
		}
		return nil
	}
	if o.gitlabURL == "" || o.project == "" {
		return usageError("listing agents from GitLab needs both --gitlab-url and --project (the project's id or full path)")
	}
	for _, name := range []string{"gateway", "gateway-kubeconfig", "gateway-context"} {
		if flags.Changed(name) {
			return usageError("--%s asks a gateway; --gitlab-url and --project ask GitLab: use one or the other", name)
		}
	}
	return nil
}

// fromGateway asks the gateway's agent list endpoint.
func (o *agentListOptions) fromGateway(ctx context.Context, stdout, stderr io.Writer) error {
	contextName := o.gatewayContext
	if o.gateway != "" && contextName == "" {
		name, err := contextFor(o.gatewayKubeconfig, o.gateway)
		if err != nil {
			return err
		}
		contextName = name
	}
	cfg, err := kubeconfigFor(o.gatewayKubeconfig, contextName, "--gateway-kubeconfig")
	if err != nil {
		return err
	}
	if o.gateway != "" {
		// Never send the context's credential to another host than the one named.
		want, _ := kubeconfig.ServerURL(o.gateway)
		if !sameServer(cfg.Host, want.String()) {
			return usageError("--gateway-context %s reaches %s, not --gateway %s: its credential is not sent elsewhere; pick the context of that gateway", contextName, cfg.Host, want)
		}
	}
	list, err := listAgents(ctx, cfg, "--gateway-kubeconfig")
	if err != nil {
		return err
	}
	if len(list.Agents) == 0 {
		fmt.Fprintln(stderr, "The gateway lets your credential reach no agent: no agent's user_access lists a project or group you are a Developer (or more) of.")
	}
	if o.output == "json" {
		return writeJSONTo(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCONFIG PROJECT\tACCESS")
	for _, a := range list.Agents {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", a.ID, a.Name, a.ConfigProjectID, a.AccessAs)
	}
	return tw.Flush()
}

// listAgents asks the gateway cfg reaches for the agents its credential may use:
// GET contract.AgentsPath, answered by kubegate authz (a contract.AgentList). The
// list comes back sorted by id. update-kubeconfig --all-agents asks it too.
func listAgents(ctx context.Context, cfg *rest.Config, flag string) (*contract.AgentList, error) {
	ans, err := gatewayGet(ctx, cfg, flag, contract.AgentsPath, "")
	if err != nil {
		return nil, err
	}
	switch {
	case ans.status == http.StatusUnauthorized || ans.status == http.StatusForbidden:
		return nil, &exitError{code: agentListRefused, err: fmt.Errorf("the gateway refused to list agents (%d %s): %s", ans.status, http.StatusText(ans.status), ans.message())}
	case ans.status == http.StatusNotFound:
		return nil, &exitError{code: agentListUnanswered, err: fmt.Errorf("the gateway answered 404 to %s: a gateway older than the agent list endpoint (or not kubegate): %s", contract.AgentsPath, ans.message())}
	case ans.status != http.StatusOK:
		return nil, &exitError{code: agentListUnanswered, err: fmt.Errorf("the gateway could not list agents (%d %s): %s", ans.status, http.StatusText(ans.status), ans.message())}
	}
	var body struct {
		Agents *[]contract.AgentInfo `json:"agents"`
	}
	if err := json.Unmarshal(ans.body, &body); err != nil || body.Agents == nil {
		return nil, &exitError{code: agentListUnanswered, err: fmt.Errorf("the gateway's answer to %s is not an agent list (a JSON object with \"agents\"): is this a kubegate gateway?", contract.AgentsPath)}
	}
	list := &contract.AgentList{Agents: *body.Agents}
	for _, a := range list.Agents {
		if a.ID <= 0 || a.AccessAs != "agent" && a.AccessAs != "user" {
			return nil, &exitError{code: agentListUnanswered, err: fmt.Errorf("the gateway's agent list has an entry with id %d and access %q: not an agent list kubegate writes", a.ID, a.AccessAs)}
		}
	}
	slices.SortFunc(list.Agents, func(a, b contract.AgentInfo) int { return int(a.ID - b.ID) })
	return list, nil
}

// contextFor finds the kubeconfig context whose cluster's server is gateway's
// <address>/k8s-proxy: the current context when it is one, else the first by name.
func contextFor(file, gateway string) (string, error) {
	want, err := kubeconfig.ServerURL(gateway)
	if err != nil {
		return "", usageError("%v", err)
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if file != "" {
		rules.ExplicitPath = file
	}
	raw, err := rules.Load()
	if err != nil {
		return "", usageError("--gateway-kubeconfig: %v", err)
	}
	var names []string
	for name, c := range raw.Contexts {
		if cl := raw.Clusters[c.Cluster]; cl != nil && sameServer(cl.Server, want.String()) {
			names = append(names, name)
		}
	}
	switch {
	case len(names) == 0:
		return "", usageError("no context in your kubeconfig reaches %s: run 'kubegate update-kubeconfig --server %s ...' first, or pass --gateway-context", want, gateway)
	case slices.Contains(names, raw.CurrentContext):
		return raw.CurrentContext, nil
	}
	slices.Sort(names)
	return names[0], nil
}

// sameServer compares two server URLs as kubeconfig servers (trailing slash aside).
func sameServer(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

// fromGitLab lists the project's agents from GitLab's REST API.
func (o *agentListOptions) fromGitLab(ctx context.Context, stdout io.Writer) error {
	token, err := usertoken.ResolveGitLabToken(o.gitlabTokenFile, o.getenv)
	if err != nil {
		return usageError("%v", err)
	}
	g, err := usertoken.NewGitLab(usertoken.GitLabConfig{URL: o.gitlabURL, Token: token, InsecureHTTPForTests: o.gitlabInsecureHTTP, Timeout: o.timeout})
	if err != nil {
		return usageError("%v", err)
	}
	agents, err := g.ListAgents(ctx, o.project)
	if err != nil {
		switch usertoken.HTTPStatus(err) {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return &exitError{code: agentListRefused, err: err}
		}
		return unanswered(err)
	}
	slices.SortFunc(agents, func(a, b usertoken.Agent) int { return int(a.ID - b.ID) })
	if o.output == "json" {
		type project struct {
			ID                int64  `json:"id"`
			PathWithNamespace string `json:"path_with_namespace"`
		}
		type agent struct {
			ID            int64     `json:"id"`
			Name          string    `json:"name"`
			CreatedAt     time.Time `json:"created_at"`
			ConfigProject project   `json:"config_project"`
		}
		out := make([]agent, 0, len(agents))
		for _, a := range agents {
			out = append(out, agent{a.ID, a.Name, a.CreatedAt, project{a.ProjectID, a.Project}})
		}
		return writeJSONTo(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tCREATED AT")
	for _, a := range agents {
		created := ""
		if !a.CreatedAt.IsZero() {
			created = a.CreatedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", a.ID, a.Name, created)
	}
	return tw.Flush()
}

func writeJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
