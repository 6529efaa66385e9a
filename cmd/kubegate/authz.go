package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity/backends"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

type authzOptions struct {
	service         serviceFlags
	identity        backends.Options
	backends        *backends.Backends // built once per process in run
	agentID         int64
	configProjectID int64
	agentConfig     string
	directory       string
	policyDir       string
	reloadPoll      time.Duration
	cacheBytes      int64
}

func newAuthzCommand() *cobra.Command {
	o := &authzOptions{identity: backends.DefaultOptions()}
	cmd := &cobra.Command{
		Use:   "authz --agent-id N --agent-config FILE --config-project-id N (--directory FILE | --identity-source gitlab ...)",
		Short: "Serve Envoy's ext_authz API: authenticate, find memberships, decide",
		Long: `Serve envoy.service.auth.v3.Authorization for one agent. For each request Envoy asks
Check: the credential is parsed (pat:<agent-id>:<token>, OIDC, session cookie),
verified against the identity source, the user's memberships of the projects and
groups the agent's user_access lists are found, and the built-in Rego policy plus
any operator modules decide. Allowed requests carry the decision to kubegate
extproc in Envoy's dynamic metadata; denied ones get a Kubernetes Status (401, 403,
400, 503).

The agent configuration, the directory and the policy directory are watched:
a change is applied without a restart, and a change that does not validate is
logged and ignored (the last good configuration stays). Also serves
grpc.health.v1 and, with --metrics-listen, Prometheus metrics. Every decision is
logged as one JSON line (user, agent, verb, resource, namespace, result, reason;
never a credential). SIGTERM stops it gracefully.`,
		Example: `  kubegate authz --listen 127.0.0.1:9001 --metrics-listen 127.0.0.1:9101 \
    --agent-id 1 --config-project-id 1 \
    --agent-config deploy/sandbox/agent-config.yaml --directory deploy/sandbox/directory.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd, o.service.configFile); err != nil {
				return err
			}
			return o.run(cmd)
		},
	}
	f := cmd.Flags()
	o.service.add(f, "127.0.0.1:9001")
	f.Int64Var(&o.agentID, "agent-id", 0, "numeric id of the agent this gateway serves; credentials naming another agent are refused (required)")
	f.Int64Var(&o.configProjectID, "config-project-id", 0, "numeric id of the project holding the agent configuration; sent as the agent.gitlab.com/config_project_id extra (required)")
	f.StringVar(&o.agentConfig, "agent-config", "", "the agent configuration file (.gitlab/agents/<agent>/config.yaml); only user_access is read (required)")
	f.StringVar(&o.directory, "directory", "", "the directory file of users, groups, projects, memberships and token digests (required with --identity-source=directory)")
	f.StringVar(&o.policyDir, "policy", "", "a directory of operator Rego modules (package kubegate.operator.<name>, deny contains msg if …) that may add denials")
	f.DurationVar(&o.reloadPoll, "reload-poll", 30*time.Second, "also re-read the watched files this often, for filesystems without change events; 0 turns it off")
	f.Int64Var(&o.cacheBytes, "decision-cache-bytes", policy.DefaultCacheBytes, "memory bound, in bytes, of the per-identity decisions remembered for the configuration in service (at least 1 MiB; a real-size identity with 243 groups takes about 11 KB, most of it the identity encoded once for ext_proc); at the bound the least valuable are evicted and recomputed on their next request")
	o.identity.AddFlags(f)
	return cmd
}

// authzPrivate says why kubegate authz must be reachable by Envoy alone.
const authzPrivate = "kubegate authz sees every user's credential and would answer token guesses without Envoy's per-client rate limit"

func (o *authzOptions) validate() error {
	var errs []error
	if o.agentID <= 0 {
		errs = append(errs, errors.New("--agent-id is required: the numeric id of the agent this gateway serves"))
	}
	if o.configProjectID <= 0 {
		errs = append(errs, errors.New("--config-project-id is required: the numeric id of the project holding the agent configuration"))
	}
	if o.agentConfig == "" {
		errs = append(errs, errors.New("--agent-config is required: the agent's .gitlab/agents/<agent>/config.yaml"))
	}
	if o.directory == "" && o.identity.Source == backends.SourceDirectory {
		errs = append(errs, errors.New("--directory is required with --identity-source=directory: the directory file of users, memberships and token digests"))
	}
	if err := o.identity.Validate(); err != nil {
		errs = append(errs, err)
	}
	// Refuse an exposed --listen before anything is loaded.
	if a, err := envoy.ParseAddr(o.service.listen); err == nil {
		if err := checkPrivateListen(a, o.service.allowNonLoopback, authzPrivate); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (o *authzOptions) agent() policy.Agent {
	return policy.Agent{ID: o.agentID, ConfigProjectID: o.configProjectID}
}

// build reads every input and assembles a snapshot; any error leaves the caller's
// current snapshot in place.
func (o *authzOptions) build(ctx context.Context) (*extauthz.Snapshot, error) {
	cfg, err := policy.LoadAgentConfig(o.agentConfig)
	if err != nil {
		return nil, err
	}
	mods, err := policy.LoadModules(o.policyDir)
	if err != nil {
		return nil, err
	}
	engine, err := policy.NewEngine(ctx, o.agent(), cfg, mods, policy.WithCacheBytes(o.cacheBytes))
	if err != nil {
		return nil, err
	}
	var dir *directory.Directory
	if o.backends.NeedsDirectory() {
		if dir, err = directory.Load(o.directory); err != nil {
			return nil, err
		}
	}
	// Last, after everything that can fail: Sources installs the directory for
	// OIDC username lookups.
	authn, members, err := o.backends.Sources(dir)
	if err != nil {
		return nil, err
	}
	// Reading the files leaves garbage several times their size; hand it back to
	// the system now rather than keep it resident until the runtime's scavenger
	// gets to it (one GC, a few milliseconds, at start-up and per reload).
	debug.FreeOSMemory()
	return &extauthz.Snapshot{Engine: engine, Authenticator: authn, Memberships: members}, nil
}

func (o *authzOptions) watched() []string {
	paths := []string{o.agentConfig}
	if o.backends.NeedsDirectory() {
		paths = append(paths, o.directory)
	}
	if o.policyDir != "" {
		paths = append(paths, o.policyDir)
	}
	return paths
}

func (o *authzOptions) run(cmd *cobra.Command) error {
	if err := o.validate(); err != nil {
		return err
	}
	log, err := o.service.logger(os.Stderr, "authz")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg := newRegistry()
	if o.backends, err = backends.Build(ctx, o.identity, reg, log); err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	defer o.backends.Close()
	reloader := &extauthz.Reloader{Paths: o.watched(), Build: o.build, Log: log, Poll: o.reloadPoll}
	// Before the build: an edit made while it reads the files is then a change.
	reloader.Baseline()
	snap, err := o.build(ctx)
	if err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	srv, err := extauthz.NewServer(o.agent(), snap, log, reg)
	if err != nil {
		return err
	}
	reloader.Server = srv
	if err := reloader.ReloadMetrics(reg); err != nil {
		return err
	}
	reloadErr := make(chan error, 1)
	go func() { reloadErr <- reloader.Run(ctx) }()

	log.Info("agent configuration loaded", "agent", o.agentID, "agent_config", o.agentConfig, "access_as", snap.Engine.Config().UserAccess.AccessAs,
		"projects", len(snap.Engine.Config().UserAccess.Projects), "groups", len(snap.Engine.Config().UserAccess.Groups))
	err = (&grpcService{
		name: "authz", flags: &o.service, log: log, registry: reg,
		register:     func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) },
		serviceNames: []string{authv3.Authorization_ServiceDesc.ServiceName},
		private:      authzPrivate,
	}).run(ctx)
	stop()
	if rerr := <-reloadErr; err == nil && rerr != nil {
		err = rerr
	}
	return err
}
