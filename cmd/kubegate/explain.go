package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"kubegate.dev/kubegate/cmd/kubegate/internal/explain"
	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/usertoken"
	"kubegate.dev/kubegate/policy"
)

// explain's exit codes (README, explain).
const (
	explainAllowed    = 0 // allowed end to end, as far as it was asked
	explainRefused    = 1 // refused; the output says by whom
	explainUsage      = 2 // a usage error or bad input (unknown user, malformed path, unreadable file)
	explainUnanswered = 3 // the question could not be answered: GitLab, the cluster or the gateway failed
)

func usageError(format string, args ...any) error {
	return &exitError{code: explainUsage, err: fmt.Errorf(format, args...)}
}

func unanswered(err error) error { return &exitError{code: explainUnanswered, err: err} }

type explainOptions struct {
	agentID, configProjectID int64
	agentConfig, directory   string
	policyDir, user          string
	accessType               string

	identitySource       string
	gitlabURL, tokenFile string
	gitlabInsecureHTTP   bool
	gitlabTimeout        time.Duration

	kubeconfig, context string
	agentUser           string
	agentGroups         []string

	viaGateway                        bool
	gatewayKubeconfig, gatewayContext string

	output  string
	timeout time.Duration

	changed map[string]bool // flags given on the command line
}

func newExplainCommand() *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain [flags] METHOD PATH",
		Short: "Say why the gateway and the cluster allow or refuse one request of one user",
		Long: `Explain what happens to one request (METHOD PATH, the path as the API server sees it,
without the gateway's /k8s-proxy prefix, query included) end to end:

  gateway  every membership and every user_access entry with its verdict (direct or
           inherited through which ancestor, below Developer, subgroup only, not
           listed), the groups each qualifying entry contributes, each operator
           policy module's result;
  identity the user, groups and extras the API server would see (or the agent);
  cluster  with --kubeconfig, what the API server answers for that identity
           (SubjectAccessReview) and the RoleBindings/ClusterRoleBindings whose
           subjects match it, saying which grant the request.

The gateway part is computed offline from the agent configuration and the identity
source (--identity-source directory or gitlab; the user is taken as authenticated),
or, with --via-gateway, asked of the gateway for your own credential (no directory
access needed; the gateway answers only about you).

Exit status: 0 allowed end to end (as far as it was asked), 1 refused (the output
says by whom), 2 usage error or bad input, 3 the question could not be answered.`,
		Example: `  # offline, from the sandbox's directory
  kubegate explain --agent-id 1 --config-project-id 1 \
    --agent-config deploy/sandbox/agent-config.yaml --directory deploy/sandbox/directory.yaml \
    --user alice GET /api/v1/namespaces/demo/pods

  # and what the cluster's RBAC says, as JSON
  kubegate explain ... --kubeconfig admin.kubeconfig -o json DELETE /api/v1/namespaces/demo/pods/web

  # as yourself, through the gateway (the kubeconfig update-kubeconfig wrote)
  kubegate explain --via-gateway GET /api/v1/namespaces/demo/pods`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError("explain takes METHOD and PATH (for example GET /api/v1/namespaces/default/pods), got %d argument(s)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args[0], args[1]) },
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	f := cmd.Flags()
	f.Int64Var(&o.agentID, "agent-id", 0, "numeric id of the agent the gateway serves (offline: required)")
	f.Int64Var(&o.configProjectID, "config-project-id", 0, "numeric id of the project holding the agent configuration (offline: required)")
	f.StringVar(&o.agentConfig, "agent-config", "", "the agent configuration file, .gitlab/agents/<agent>/config.yaml (offline: required)")
	f.StringVar(&o.policyDir, "policy", "", "a directory of operator Rego modules that may add denials (offline)")
	f.StringVar(&o.user, "user", "", "username to explain for (offline: required)")
	f.StringVar(&o.accessType, "access-type", string(identity.AccessPersonalAccessToken), "how the user authenticates: personal_access_token, oidc_id_token or session_cookie (offline)")
	f.StringVar(&o.identitySource, "identity-source", "directory", "where users and memberships come from (offline): directory (--directory) or gitlab (--gitlab-url)")
	f.StringVar(&o.directory, "directory", "", "the directory file of users, groups, projects and memberships (--identity-source=directory)")
	f.StringVar(&o.gitlabURL, "gitlab-url", "", "GitLab's base URL, e.g. https://gitlab.example.com (--identity-source=gitlab)")
	f.StringVar(&o.tokenFile, "gitlab-token-file", "", "file holding a GitLab token with read_api that can see the users and listed projects and groups (--identity-source=gitlab)")
	f.BoolVar(&o.gitlabInsecureHTTP, "gitlab-insecure-http-for-tests", false, "INSECURE: allow an http:// --gitlab-url (a GitLab stand-in on loopback in tests)")
	f.DurationVar(&o.gitlabTimeout, "gitlab-timeout", gitlab.DefaultTimeout, "bound on the GitLab lookups")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "a kubeconfig of an identity that may create SubjectAccessReviews (and list RoleBindings, ClusterRoleBindings and roles): ask the cluster too")
	f.StringVar(&o.context, "context", "", "the --kubeconfig context to use (default: its current context)")
	f.StringVar(&o.agentUser, "agent-user", "", "in agent mode, the user the agent is at the API server, e.g. system:serviceaccount:kubegate:kubegate-agent (required with --kubeconfig in agent mode)")
	f.StringSliceVar(&o.agentGroups, "agent-group", nil, "in agent mode, groups of a --agent-user that is not a service account (repeat or comma-separate)")
	f.BoolVar(&o.viaGateway, "via-gateway", false, "ask the gateway's explain endpoint with your own credential, from the kubeconfig update-kubeconfig wrote; without --kubeconfig the cluster part is your own SelfSubjectAccessReview through the gateway")
	f.StringVar(&o.gatewayKubeconfig, "gateway-kubeconfig", "", "with --via-gateway: the kubeconfig pointing at the gateway (default: KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.gatewayContext, "gateway-context", "", "with --via-gateway: the context to use (default: the current context)")
	f.StringVarP(&o.output, "output", "o", "tree", "output format: tree (for people) or json (for scripts)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "bound on the whole explanation (GitLab, cluster and gateway calls)")
	return cmd
}

func (o *explainOptions) validate() error {
	if o.output != "tree" && o.output != "json" {
		return usageError("-o %q: use tree or json", o.output)
	}
	if o.viaGateway {
		var offline []string
		for _, name := range []string{"agent-id", "config-project-id", "agent-config", "policy", "user", "access-type", "identity-source", "directory", "gitlab-url", "gitlab-token-file"} {
			if o.changed[name] {
				offline = append(offline, "--"+name)
			}
		}
		if len(offline) > 0 {
			return usageError("--via-gateway explains for your own credential with the gateway's configuration: drop %s", strings.Join(offline, ", "))
		}
		return nil
	}
	if o.gatewayKubeconfig != "" || o.gatewayContext != "" {
		return usageError("--gateway-kubeconfig and --gateway-context go with --via-gateway")
	}
	var missing []string
	for name, unset := range map[string]bool{"--agent-id": o.agentID == 0, "--config-project-id": o.configProjectID == 0, "--agent-config": o.agentConfig == "", "--user": o.user == ""} {
		if unset {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return usageError("offline explain needs %s (or use --via-gateway to ask the gateway as yourself)", strings.Join(slices.Sorted(slices.Values(missing)), ", "))
	}
	if o.agentID < 0 || o.configProjectID < 0 {
		return usageError("--agent-id and --config-project-id must be positive numbers")
	}
	switch identity.AccessType(o.accessType) {
	case identity.AccessPersonalAccessToken, identity.AccessOIDCIDToken, identity.AccessSessionCookie:
	default:
		return usageError("--access-type %q: use personal_access_token, oidc_id_token or session_cookie", o.accessType)
	}
	switch o.identitySource {
	case "directory":
		if o.directory == "" {
			return usageError("--identity-source=directory needs --directory")
		}
		if o.gitlabURL != "" || o.tokenFile != "" {
			return usageError("--gitlab-url and --gitlab-token-file go with --identity-source=gitlab")
		}
	case "gitlab":
		if o.gitlabURL == "" || o.tokenFile == "" {
			return usageError("--identity-source=gitlab needs --gitlab-url and --gitlab-token-file")
		}
		if o.directory != "" {
			return usageError("--directory goes with --identity-source=directory")
		}
		u, err := url.Parse(o.gitlabURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return usageError("--gitlab-url %q is not an http(s) URL like https://gitlab.example.com", o.gitlabURL)
		}
		if u.Scheme == "http" && !o.gitlabInsecureHTTP {
			return usageError("--gitlab-url %s is http://: the token would travel unencrypted; use https:// (or --gitlab-insecure-http-for-tests for a local test stand-in)", o.gitlabURL)
		}
	default:
		return usageError("--identity-source %q: use directory or gitlab", o.identitySource)
	}
	return nil
}

func (o *explainOptions) run(cmd *cobra.Command, method, path string) error {
	o.changed = map[string]bool{}
	cmd.Flags().Visit(func(f *pflag.Flag) { o.changed[f.Name] = true })
	if err := o.validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	req, err := extauthz.APIRequest(method, path)
	if err != nil {
		return usageError("%s %s: %v", method, path, err)
	}

	var r explain.Report
	var gatewayCfg *rest.Config
	if o.viaGateway {
		if gatewayCfg, err = kubeconfigFor(o.gatewayKubeconfig, o.gatewayContext, "--gateway-kubeconfig"); err != nil {
			return err
		}
		x, err := askGateway(ctx, gatewayCfg, method, path)
		if err != nil {
			return err
		}
		r.Explanation, r.Via = *x, "gateway"
	} else {
		x, via, err := o.offline(ctx, req)
		if err != nil {
			return err
		}
		r.Explanation, r.Via = *x, via
	}

	if err := o.askCluster(ctx, &r, gatewayCfg); err != nil {
		return err
	}
	r.Conclude()
	out := cmd.OutOrStdout()
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		err = enc.Encode(r)
	} else {
		err = explain.Render(out, &r)
	}
	if err != nil {
		return err
	}
	if code := r.ExitCode(); code != explainAllowed {
		return &exitError{code: code, err: errors.New(r.Result.Summary)}
	}
	return nil
}

// offline computes the gateway part from the configuration and the identity source.
func (o *explainOptions) offline(ctx context.Context, req policy.Request) (*extauthz.Explanation, string, error) {
	cfg, err := policy.LoadAgentConfig(o.agentConfig)
	if err != nil {
		return nil, "", usageError("%v", err)
	}
	mods, err := policy.LoadModules(o.policyDir)
	if err != nil {
		return nil, "", usageError("%v", err)
	}
	agent := policy.Agent{ID: o.agentID, ConfigProjectID: o.configProjectID}
	engine, err := policy.NewEngine(ctx, agent, cfg, mods)
	if err != nil {
		return nil, "", usageError("%v", err)
	}
	var (
		user      identity.User
		resolver  identity.MembershipResolver
		agentInfo usertoken.Agent
	)
	switch o.identitySource {
	case "gitlab":
		data, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, "", usageError("--gitlab-token-file: %v", err)
		}
		b, err := gitlab.New(gitlab.Config{URL: o.gitlabURL, Token: strings.TrimSpace(string(data)), Timeout: o.gitlabTimeout})
		if err != nil {
			return nil, "", usageError("%v", err)
		}
		if agentInfo, err = o.gitlabAgent(ctx, strings.TrimSpace(string(data))); err != nil {
			return nil, "", err
		}
		u, found, err := b.LookupUser(ctx, o.user)
		switch {
		case err != nil:
			return nil, "", unanswered(fmt.Errorf("looking up user %q in GitLab: %w", o.user, err))
		case !found:
			return nil, "", usageError("user %q is not an active GitLab user at %s", o.user, o.gitlabURL)
		}
		user, resolver = u, b
	default:
		dir, err := directory.Load(o.directory)
		if err != nil {
			return nil, "", usageError("%v", err)
		}
		u, found := dir.UserByName(o.user)
		if !found {
			return nil, "", usageError("user %q is not an active user in %s", o.user, o.directory)
		}
		user, resolver = u, dir
	}
	id := identity.Identity{User: user, AccessType: identity.AccessType(o.accessType), AgentID: agent.ID}
	x, err := extauthz.Explain(ctx, agent, engine, resolver, id, req)
	if err != nil {
		return nil, "", unanswered(fmt.Errorf("explaining for %s: %w", o.user, err))
	}
	x.Agent.Name, x.Agent.ConfigProject = agentInfo.Name, agentInfo.Project
	return &x, o.identitySource, nil
}

// gitlabAgent checks that --agent-id is an agent of --config-project-id in GitLab
// and returns its name (GET /projects/:id/cluster_agents/:agent_id, as
// update-kubeconfig --project does).
func (o *explainOptions) gitlabAgent(ctx context.Context, token string) (usertoken.Agent, error) {
	g, err := usertoken.NewGitLab(usertoken.GitLabConfig{URL: o.gitlabURL, Token: token, InsecureHTTPForTests: o.gitlabInsecureHTTP, Timeout: o.gitlabTimeout})
	if err != nil {
		return usertoken.Agent{}, usageError("%v", err)
	}
	a, err := g.CheckAgent(ctx, strconv.FormatInt(o.configProjectID, 10), o.agentID)
	switch {
	case errors.Is(err, usertoken.ErrAgentNotFound):
		return a, usageError("--agent-id %d: %v", o.agentID, err)
	case err != nil:
		return a, unanswered(err)
	}
	return a, nil
}

// askCluster fills in the cluster part: with --kubeconfig, a SubjectAccessReview
// for the identity the gateway sends; via the gateway without --kubeconfig, the
// caller's own SelfSubjectAccessReview through the gateway.
func (o *explainOptions) askCluster(ctx context.Context, r *explain.Report, gatewayCfg *rest.Config) error {
	x := r.Explanation
	var subject *explain.Subject
	switch {
	case x.Gateway.Identity != nil:
		s := explain.ImpersonatedSubject(x.Gateway.Identity)
		subject = &s
	case x.Gateway.Decision.Reason == policy.ReasonNotMember:
		r.ClusterNotAsked = "the gateway refuses before the cluster is reached"
		return nil
	case o.agentUser != "":
		s := explain.AgentSubject(o.agentUser, o.agentGroups)
		subject = &s
	}
	switch {
	case o.kubeconfig != "":
		if subject == nil {
			return usageError("access_as is agent: give --agent-user, the agent's user at the API server (for example system:serviceaccount:kubegate:kubegate-agent), so that --kubeconfig can ask for it")
		}
		cfg, err := kubeconfigFor(o.kubeconfig, o.context, "--kubeconfig")
		if err != nil {
			return err
		}
		c, err := explain.NewClient(cfg)
		if err != nil {
			return usageError("--kubeconfig: %v", err)
		}
		a, err := explain.Ask(ctx, c, *subject, x.Request)
		if err != nil {
			return unanswered(err)
		}
		r.Cluster = a
	case gatewayCfg != nil && x.Gateway.Decision.Allowed:
		c, err := explain.NewClient(gatewayCfg)
		if err != nil {
			return usageError("--gateway-kubeconfig: %v", err)
		}
		a, err := explain.AskSelf(ctx, c, subject, x.Request)
		if err != nil {
			r.ClusterNotAsked = fmt.Sprintf("your own SelfSubjectAccessReview through the gateway failed: %v", err)
			return nil
		}
		r.Cluster = a
	case gatewayCfg != nil:
		r.ClusterNotAsked = "the gateway refuses this request"
	default:
		r.ClusterNotAsked = "give --kubeconfig to ask the cluster's RBAC"
	}
	return nil
}

// kubeconfigFor loads a kubeconfig file (or client-go's default rules when file
// is empty) and context.
func kubeconfigFor(file, contextName, flag string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if file != "" {
		rules.ExplicitPath = file
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: contextName}).ClientConfig()
	if err != nil {
		return nil, usageError("%s: %v", flag, err)
	}
	return cfg, nil
}

// askGateway asks the gateway's explain endpoint with the kubeconfig's credential.
func askGateway(ctx context.Context, cfg *rest.Config, method, path string) (*extauthz.Explanation, error) {
	apiPath, rawQuery, _ := strings.Cut(path, "?")
	ans, err := gatewayGet(ctx, cfg, "--gateway-kubeconfig", contract.ExplainPrefix+method+apiPath, rawQuery)
	if err != nil {
		return nil, err
	}
	if ans.status != http.StatusOK || ans.header.Get(contract.HeaderError) != string(extauthz.ReasonExplained) {
		err := fmt.Errorf("the gateway refused to explain (%d %s): %s", ans.status, ans.header.Get(contract.HeaderError), ans.message())
		switch {
		case ans.status == http.StatusUnauthorized || ans.status == http.StatusForbidden:
			return nil, &exitError{code: explainRefused, err: err}
		case ans.status == http.StatusBadRequest:
			return nil, &exitError{code: explainUsage, err: err}
		case ans.status == http.StatusNotFound:
			return nil, unanswered(fmt.Errorf("%w (a gateway older than the explain endpoint answers 404)", err))
		}
		return nil, unanswered(err)
	}
	var x extauthz.Explanation
	if err := json.Unmarshal(ans.body, &x); err != nil {
		return nil, unanswered(fmt.Errorf("the gateway's explanation is not readable: %w", err))
	}
	return &x, nil
}

// gatewayAnswer is the gateway's answer to one of its own endpoints.
type gatewayAnswer struct {
	status int
	header http.Header
	body   []byte
}

// message is what a person should read of a refusal: the Kubernetes Status's
// message when the body is one (every kubegate denial is), else the body.
func (a gatewayAnswer) message() string {
	var st metav1.Status
	if json.Unmarshal(a.body, &st) == nil && st.Message != "" {
		return st.Message
	}
	return strings.TrimSpace(string(a.body))
}

// gatewayGet sends GET <gateway>path?rawQuery with cfg's credential (its exec
// plugin or token, through client-go's transport, so exactly what kubectl would
// send) and TLS settings. cfg's server is https://<gateway>/k8s-proxy, as
// update-kubeconfig writes it; the gateway's own endpoints are beside the prefix.
// flag names where cfg came from, for messages.
func gatewayGet(ctx context.Context, cfg *rest.Config, flag, path, rawQuery string) (gatewayAnswer, error) {
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Host == "" {
		return gatewayAnswer{}, usageError("%s: server %q is not a URL", flag, cfg.Host)
	}
	base, ok := strings.CutSuffix(strings.TrimSuffix(u.Path, "/"), contract.ProxyPath)
	if !ok {
		return gatewayAnswer{}, usageError("%s: server %s does not end in %s: is this the kubeconfig update-kubeconfig wrote for the gateway?", flag, cfg.Host, contract.ProxyPath)
	}
	u.Path, u.RawPath, u.RawQuery = base+path, "", rawQuery
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return gatewayAnswer{}, usageError("%s: %v", flag, err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return gatewayAnswer{}, usageError("%v", err)
	}
	hreq.Header.Set("Accept", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return gatewayAnswer{}, unanswered(fmt.Errorf("asking the gateway at %s: %w", u.Host, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return gatewayAnswer{}, unanswered(fmt.Errorf("reading the gateway's answer: %w", err))
	}
	return gatewayAnswer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}
