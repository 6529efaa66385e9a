package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubegate.dev/kubegate/cmd/kubegate/internal/kubeconfig"
	"kubegate.dev/kubegate/gateway"
	"kubegate.dev/kubegate/identity/tokencache"
	"kubegate.dev/kubegate/identity/usertoken"
)

// updateKubeconfigOptions follows kubectl's `config set-credentials`: flags →
// complete → validate → run.
type updateKubeconfigOptions struct {
	server      string
	agentID     int64
	kubeconfig  string
	useContext  bool
	contextName string
	caFile      string
	project     string
	allAgents   bool
	creds       credentialFlags

	// Filled by complete and validate.
	executable string
	getenv     func(string) string
	access     clientcmd.ConfigAccess
	serverURL  *url.URL
	caData     []byte
	cacheDir   string
	stdout     io.Writer
	stderr     io.Writer
}

func newUpdateKubeconfigCommand() *cobra.Command {
	o := &updateKubeconfigOptions{}
	cmd := &cobra.Command{
		Use:   "update-kubeconfig",
		Short: "Add the gateway to your kubeconfig, with 'kubegate get-token' as the credential plugin",
		Long: `Write three kubeconfig entries, merging them into your existing kubeconfig the
way kubectl does (--kubeconfig, else the KUBECONFIG list, else ~/.kube/config; every
other entry stays as it is, each entry is written back to the file it came from):

  cluster  kubegate-<host>                 server <--server>/k8s-proxy (and --ca)
  user     kubegate-<host>-agent-<agent>   exec plugin: this kubegate binary's
                                           get-token, client.authentication.k8s.io/v1,
                                           interactiveMode Never
  context  kubegate-<host>-agent-<agent>   (or --context) joining the two

--use-context also makes it the current context. Running the command again with the
same flags changes nothing. Files it writes are made 0600.

The credential flags (--gitlab-url, --gitlab-token-file, --token-file,
--token-expiry-duration, --check-revoked) are passed on to get-token; see
'kubegate get-token --help'. Your GitLab token itself is never written into the
kubeconfig: get-token reads it from --gitlab-token-file or GITLAB_TOKEN each time.

With --gitlab-url, update-kubeconfig first checks that GitLab is reachable and
accepts your token, and with --project that the agent exists in that project and
you are a Developer there. GitLab has no API to look an agent up by its id alone, so
without --project the agent id is not checked until kubectl first uses it (a wrong
id is then a 401 from the gateway).

--all-agents asks the gateway which of its agents you can reach (its agent list,
as 'kubegate agent list' shows it), authenticating as --agent with the credential
flags, and writes a user and context per agent, named
kubegate-<host>-<agent-name>-agent-<id>, beside the shared cluster entry; the
single-agent names above are not touched. Running it again updates them; agents
you can no longer reach keep their entries until you delete them.`,
		Example: `  # GitLab creates short-lived tokens for you (GITLAB_TOKEN: your token with the api scope)
  kubegate update-kubeconfig --server https://kubegate.example.com --agent 1 \
      --gitlab-url https://gitlab.example.com --project group-1/project-1 --use-context
  kubectl get pods

  # One context for each agent you can reach through a gateway serving several
  kubegate update-kubeconfig --server https://kubegate.example.com --agent 1 \
      --gitlab-url https://gitlab.example.com --all-agents

  # The sandbox: a static demo token
  kubegate update-kubeconfig --server https://127.0.0.1:8443 --ca sandbox/ca.crt \
      --agent 1 --token-file alice.token --kubeconfig sandbox.kubeconfig --use-context`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(cmd); err != nil {
				return err
			}
			if err := o.validate(cmd.Flags()); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "", "the gateway's https base URL, e.g. https://kubegate.example.com; /k8s-proxy is appended (required)")
	f.Int64Var(&o.agentID, "agent", 0, "numeric id of the GitLab agent the gateway serves (required)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file to update; default: the KUBECONFIG list, else ~/.kube/config")
	f.BoolVar(&o.useContext, "use-context", false, "also make the context the current one")
	f.StringVar(&o.contextName, "context", "", "name of the context; default kubegate-<host>-agent-<agent>")
	f.StringVar(&o.caFile, "ca", "", "PEM file of the CA that signed the gateway's certificate, embedded in the kubeconfig; default: keep the cluster entry's CA, or the system's roots")
	f.StringVar(&o.project, "project", "", "full path of the agent's configuration project (with --gitlab-url): check there that the agent exists")
	f.BoolVar(&o.allAgents, "all-agents", false, "write a context for every agent the gateway lets you reach (asked as --agent), named kubegate-<host>-<agent-name>-agent-<id>")
	o.creds.add(f)
	return cmd
}

func (o *updateKubeconfigOptions) complete(cmd *cobra.Command) error {
	o.stdout, o.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
	o.getenv = os.Getenv
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding kubegate's own path for the exec plugin: %w", err)
	}
	o.executable = exe
	if strings.Contains(exe, string(filepath.Separator)+"go-build") {
		fmt.Fprintf(o.stderr, "warning: kubegate runs from a temporary build (%s, go run?); the kubeconfig will name that file, which Go deletes. Install kubegate (make build) and run update-kubeconfig with it.\n", exe)
	}
	po := clientcmd.NewDefaultPathOptions()
	po.LoadingRules.ExplicitPath = o.kubeconfig
	o.access = po
	return nil
}

// completeAllAgents finds the token cache get-token uses, so that the token made
// to ask the gateway is the one kubectl's get-token reuses.
func (o *updateKubeconfigOptions) completeAllAgents() error {
	if o.creds.gitlabURL == "" {
		return nil
	}
	dir, err := tokencache.DefaultDir()
	if err != nil {
		return err
	}
	o.cacheDir = dir
	return nil
}

func (o *updateKubeconfigOptions) validate(flags *pflag.FlagSet) error {
	if o.server == "" {
		return errors.New("--server is required: the gateway's https address, such as https://kubegate.example.com")
	}
	u, err := kubeconfig.ServerURL(o.server)
	if err != nil {
		return err
	}
	o.serverURL = u
	if o.agentID <= 0 {
		return errors.New("--agent is required: the numeric id of the agent (GitLab: Operate > Kubernetes clusters)")
	}
	if flags.Changed("context") && o.contextName == "" {
		return errors.New("--context must not be empty")
	}
	if err := o.creds.validate(flags); err != nil {
		return err
	}
	if o.allAgents && (flags.Changed("context") || o.useContext) {
		return errors.New("--all-agents writes one context per agent: --context and --use-context name one; drop them (kubectl config use-context picks one afterwards)")
	}
	if o.project != "" && o.creds.gitlabURL == "" {
		return errors.New("--project checks the agent in GitLab and needs --gitlab-url")
	}
	if o.caFile != "" {
		data, err := os.ReadFile(o.caFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(data) {
			return fmt.Errorf("--ca %s holds no PEM certificate: give the CA certificate that signed the gateway's", o.caFile)
		}
		o.caData = data
	}
	if o.creds.tokenFile != "" {
		// Fail now rather than at the first kubectl command.
		if _, err := (usertoken.StaticFile{Path: o.creds.tokenFile}).Token(context.Background()); err != nil {
			return err
		}
	}
	return nil
}

func (o *updateKubeconfigOptions) run(ctx context.Context) error {
	if o.creds.gitlabURL != "" {
		if err := o.checkGitLab(ctx); err != nil {
			return err
		}
	}
	credArgs, err := o.creds.execArgs()
	if err != nil {
		return err
	}
	if o.allAgents {
		return o.runAllAgents(ctx, credArgs)
	}
	names := kubeconfig.DefaultNames(o.serverURL, o.agentID)
	if o.contextName != "" {
		names.Context = o.contextName
	}
	entry := o.entry(names, o.agentID, credArgs)
	entry.UseContext = o.useContext
	res, err := kubeconfig.Update(o.access, entry)
	if err != nil {
		return err
	}
	if res.Changed {
		fmt.Fprintf(o.stdout, "Context %q written to %s: agent %d through %s.\n", names.Context, res.File, o.agentID, entry.Server)
	} else {
		fmt.Fprintf(o.stdout, "Context %q in %s is already up to date.\n", names.Context, res.File)
	}
	if o.useContext {
		fmt.Fprintf(o.stdout, "Current context: %q.\n", names.Context)
	}
	return nil
}

// entry is the cluster, user and context for one agent.
func (o *updateKubeconfigOptions) entry(names kubeconfig.Names, agentID int64, credArgs []string) kubeconfig.Entry {
	return kubeconfig.Entry{
		Names:  names,
		Server: o.serverURL.String(),
		CAData: o.caData,
		Exec: clientcmdapi.ExecConfig{
			APIVersion:      usertoken.APIVersionV1,
			Command:         o.executable,
			Args:            append([]string{"get-token", "--agent", strconv.FormatInt(agentID, 10)}, credArgs...),
			InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
			InstallHint: "kubectl reaches this cluster through kubegate's gateway and runs 'kubegate get-token' for a credential.\n" +
				"Install kubegate at the path above, or run 'kubegate update-kubeconfig' again with the kubegate you have.",
		},
	}
}

// runAllAgents asks the gateway's agent list with the credential get-token would
// give kubectl for --agent, then writes a user and context per agent listed.
func (o *updateKubeconfigOptions) runAllAgents(ctx context.Context, credArgs []string) error {
	if err := o.completeAllAgents(); err != nil {
		return err
	}
	src, err := o.creds.source(o.getenv, o.cacheDir, o.stderr)
	if err != nil {
		return err
	}
	tok, err := src.Token(ctx)
	if err != nil {
		return err
	}
	cfg := &rest.Config{Host: o.serverURL.String(), BearerToken: usertoken.GatewayCredential(o.agentID, tok)}
	cfg.CAData = o.caData
	if cfg.CAData == nil {
		cfg.CAData, cfg.CAFile = o.existingCA()
	}
	list, err := listAgents(ctx, cfg, "--server")
	if err != nil {
		return err
	}
	if len(list.Agents) == 0 {
		fmt.Fprintf(o.stdout, "The gateway at %s lets you reach no agent: nothing written.\n", o.serverURL.Host)
		return nil
	}
	for _, a := range list.Agents {
		if !gateway.ValidAgentName(a.Name) {
			return fmt.Errorf("the gateway names agent %d %q, which is not a GitLab agent name and cannot name a kubeconfig context: nothing written", a.ID, a.Name)
		}
	}
	for _, a := range list.Agents {
		names := kubeconfig.AgentNames(o.serverURL, a.ID, a.Name)
		res, err := kubeconfig.Update(o.access, o.entry(names, a.ID, credArgs))
		if err != nil {
			return err
		}
		state := "written to"
		if !res.Changed {
			state = "already up to date in"
		}
		fmt.Fprintf(o.stdout, "Context %q %s %s: agent %d (%s, access as %s) through %s.\n", names.Context, state, res.File, a.ID, a.Name, a.AccessAs, o.serverURL)
	}
	return nil
}

// existingCA is the CA the kubeconfig's cluster entry for the gateway already has
// (update-kubeconfig keeps it when --ca is not given), so the agent list is asked
// over the TLS kubectl will use.
func (o *updateKubeconfigOptions) existingCA() ([]byte, string) {
	start, err := o.access.GetStartingConfig()
	if err != nil {
		return nil, ""
	}
	if c := start.Clusters[kubeconfig.DefaultNames(o.serverURL, o.agentID).Cluster]; c != nil && sameServer(c.Server, o.serverURL.String()) {
		return c.CertificateAuthorityData, c.CertificateAuthority
	}
	return nil, ""
}

// checkGitLab finds out now, rather than at the first kubectl command, whether GitLab
// is reachable, accepts the user's token and (with --project) shows the agent.
func (o *updateKubeconfigOptions) checkGitLab(ctx context.Context) error {
	g, err := o.creds.gitlab(o.getenv, nil, o.stderr)
	if err != nil {
		return err
	}
	user, err := g.CurrentUser(ctx)
	if err != nil {
		return err
	}
	if o.project == "" {
		fmt.Fprintf(o.stderr, "GitLab at %s accepts your token (user %s). Agent %d was not checked: GitLab has no API to find an agent by id alone; pass --project <path> to check it.\n",
			g.URL(), user, o.agentID)
		return nil
	}
	a, err := g.CheckAgent(ctx, o.project, o.agentID)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.stderr, "GitLab at %s accepts your token (user %s); agent %d is %q in %s.\n", g.URL(), user, a.ID, a.Name, a.Project)
	return nil
}
