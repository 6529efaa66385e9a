package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/agentconfig"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/gateway"
	"kubegate.dev/kubegate/identity/backends"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/internal/httpserve"
	"kubegate.dev/kubegate/policy"
)

type authzOptions struct {
	service         serviceFlags
	identity        backends.Options
	backends        *backends.Backends // built once per process in run
	gatewayConfig   string
	agentID         int64
	configProjectID int64
	agentConfig     string
	directory       string
	policyDir       string
	reloadPoll      time.Duration
	cacheBytes      int64
	startWait       time.Duration
	webhookListen   string
	webhookSecret   string
	browser         browserFlags

	// Set by agents: the GitLab sources' shared metrics and the sources a webhook
	// call refreshes.
	glMetrics  *agentconfig.GitLabMetrics
	refreshers []agentconfig.Refresher
}

func newAuthzCommand() *cobra.Command {
	o := &authzOptions{identity: backends.DefaultOptions()}
	cmd := &cobra.Command{
		Use:   "authz (--gateway-config FILE | --agent-id N --agent-config FILE --config-project-id N) (--directory FILE | --identity-source gitlab ...)",
		Short: "Serve Envoy's ext_authz API: authenticate, find memberships, decide",
		Long: `Serve envoy.service.auth.v3.Authorization for every agent of a gateway: the
agents of --gateway-config, or the one agent of --agent-id, --config-project-id
and --agent-config. For each request Envoy asks Check: the credential is parsed
(pat:<agent-id>:<token>, OIDC, session cookie), its agent id picks the agent
(an agent the gateway does not serve is refused like an invalid token), the
credential is verified against the identity source, the user's memberships of
the projects and groups that agent's user_access lists are found, and the
built-in Rego policy plus any operator modules decide. Allowed requests are
routed to the agent's cluster (x-kubegate-upstream) and carry the decision to
kubegate extproc in Envoy's dynamic metadata; denied ones get a Kubernetes
Status (401, 403, 400, 503).

Each agent's configuration is watched and reloaded on its own: a change that
does not validate is logged and ignored (that agent's last good configuration
stays), and an agent with no valid configuration yet is answered 503 while the
others serve. The directory and the policy directory are shared by every agent
and watched too: new operator modules rebuild every agent's engine. Also serves grpc.health.v1 and,
with --metrics-listen, Prometheus metrics. Every decision is logged as one JSON
line (user, agent, verb, resource, namespace, result, reason; never a
credential). SIGTERM stops it gracefully.`,
		Example: `  kubegate authz --listen 127.0.0.1:9001 --metrics-listen 127.0.0.1:9101 \
    --agent-id 1 --config-project-id 1 \
    --agent-config deploy/sandbox/agent-config.yaml --directory deploy/sandbox/directory.yaml
  kubegate authz --gateway-config gateway.yaml --directory directory.yaml`,
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
	f.StringVar(&o.gatewayConfig, "gateway-config", "", "the gateway configuration file listing every agent the gateway serves (id, name, config_project_id, agent_config); instead of --agent-id, --config-project-id and --agent-config")
	f.Int64Var(&o.agentID, "agent-id", 0, "numeric id of the one agent this gateway serves; credentials naming another agent are refused (required without --gateway-config)")
	f.Int64Var(&o.configProjectID, "config-project-id", 0, "numeric id of the project holding the agent configuration; sent as the agent.gitlab.com/config_project_id extra (required without --gateway-config)")
	f.StringVar(&o.agentConfig, "agent-config", "", "the agent configuration file (.gitlab/agents/<agent>/config.yaml); only user_access is read (required without --gateway-config)")
	f.StringVar(&o.directory, "directory", "", "the directory file of users, groups, projects, memberships and token digests (required with --identity-source=directory)")
	f.StringVar(&o.policyDir, "policy", "", "a directory of operator Rego modules (package kubegate.operator.<name>, deny contains msg if …) that may add denials, for every agent")
	f.DurationVar(&o.reloadPoll, "reload-poll", 30*time.Second, "also re-read the watched files this often, for filesystems without change events; 0 turns it off")
	f.Int64Var(&o.cacheBytes, "decision-cache-bytes", policy.DefaultCacheBytes, "memory bound, in bytes, of the per-identity decisions remembered for the configurations in service, one bound for all agents (at least 1 MiB; a real-size identity with 243 groups takes about 11 KB, most of it the identity encoded once for ext_proc); at the bound the least valuable are evicted and recomputed on their next request")
	f.StringVar(&o.webhookListen, "gitlab-webhook-listen", "", "serve GitLab's webhook on ADDR (host:port, plain HTTP: put TLS in front, the secret travels in a header): a push to an agent's config project re-reads that agent's configuration at once instead of at its interval. Add a project webhook with push events, or an admin system hook with push events, pointing at http(s)://<ADDR>/, with a secret token; needs --gitlab-webhook-secret-file and agents with agent_config.gitlab")
	f.StringVar(&o.webhookSecret, "gitlab-webhook-secret-file", "", "the webhook's secret token, one line of at least 16 characters; a call without it in X-Gitlab-Token gets 401 and causes no read")
	f.DurationVar(&o.startWait, "start-wait", 30*time.Second, "at start, how long to wait for every agent's first configuration before serving (agents still without one answer 503 until it loads); the start fails if no agent has a valid configuration by then")
	o.browser.add(f)
	o.identity.AddFlags(f)
	return cmd
}

// authzPrivate says why kubegate authz must be reachable by Envoy alone.
const authzPrivate = "kubegate authz sees every user's credential and would answer token guesses without Envoy's per-client rate limit"

func (o *authzOptions) validate() error {
	var errs []error
	if o.gatewayConfig != "" {
		for name, set := range map[string]bool{"--agent-id": o.agentID != 0, "--config-project-id": o.configProjectID != 0, "--agent-config": o.agentConfig != ""} {
			if set {
				errs = append(errs, fmt.Errorf("%s is for a gateway of one agent; with --gateway-config, each agent's id, config project and agent configuration come from that file", name))
			}
		}
	} else {
		if o.agentID <= 0 {
			errs = append(errs, errors.New("--agent-id is required: the numeric id of the agent this gateway serves (or list the agents in --gateway-config)"))
		}
		if o.configProjectID <= 0 {
			errs = append(errs, errors.New("--config-project-id is required: the numeric id of the project holding the agent configuration"))
		}
		if o.agentConfig == "" {
			errs = append(errs, errors.New("--agent-config is required: the agent's .gitlab/agents/<agent>/config.yaml"))
		}
	}
	if (o.webhookListen == "") != (o.webhookSecret == "") {
		errs = append(errs, errors.New("--gitlab-webhook-listen and --gitlab-webhook-secret-file go together: the webhook is never served without a secret"))
	}
	errs = append(errs, o.browser.validate(&o.identity)...)
	if o.directory == "" && o.identity.Source == backends.SourceDirectory {
		errs = append(errs, errors.New("--directory is required with --identity-source=directory: the directory file of users, memberships and token digests"))
	}
	if err := o.identity.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := o.service.workers(); err != nil {
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

// agentSource is one agent to serve and where its configuration comes from.
type agentSource struct {
	spec   extauthz.AgentSpec
	source agentconfig.Source
}

// agents are the agents to serve: those of --gateway-config, or the one of the
// single-agent flags, each with the Source of its configuration: a watched file
// (agent_config.file), or the agent's config project in GitLab
// (agent_config.gitlab, read with the identity source's GitLab client; its
// metrics, one set for every agent, are registered with reg).
func (o *authzOptions) agents(log *slog.Logger, reg prometheus.Registerer) ([]agentSource, error) {
	cfg := &gateway.Config{Agents: []gateway.Agent{{ID: o.agentID, ConfigProjectID: o.configProjectID, AgentConfig: gateway.AgentConfigSource{File: o.agentConfig}}}}
	if o.gatewayConfig != "" {
		var err error
		if cfg, err = gateway.Load(o.gatewayConfig); err != nil {
			return nil, err
		}
	}
	var out []agentSource
	for i, a := range cfg.Agents {
		as := agentSource{spec: extauthz.AgentSpec{Agent: policy.Agent{ID: a.ID, ConfigProjectID: a.ConfigProjectID}, Name: a.Name}}
		if a.AgentConfig.File != "" {
			as.source = &agentconfig.File{Path: a.AgentConfig.File, Poll: o.reloadPoll, Log: log}
		} else {
			if o.glMetrics == nil {
				o.glMetrics = agentconfig.NewGitLabMetrics()
				if err := o.glMetrics.Register(reg); err != nil {
					return nil, err
				}
			}
			client, _ := o.backends.AgentConfigClient() // nil without --identity-source=gitlab: NewGitLabFor says so
			src, err := agentconfig.NewGitLabFor(a, client, o.glMetrics, log)
			if err != nil {
				return nil, fmt.Errorf("%s: agents[%d].agent_config.gitlab: %w", o.gatewayConfig, i, err)
			}
			as.source = src
			o.refreshers = append(o.refreshers, src)
		}
		out = append(out, as)
	}
	return out, nil
}

type webhookServer struct {
	ln net.Listener
	h  http.Handler
}

// webhook listens on --gitlab-webhook-listen now, so that a taken port or a bad
// secret file stops the start rather than a background goroutine.
func (o *authzOptions) webhook(log *slog.Logger) (*webhookServer, error) {
	if o.webhookListen == "" {
		return nil, nil
	}
	if len(o.refreshers) == 0 {
		return nil, errors.New("--gitlab-webhook-listen: no agent reads its configuration from GitLab (agent_config.gitlab in --gateway-config); there is nothing for the webhook to re-read")
	}
	secret, err := agentconfig.ReadWebhookSecret(o.webhookSecret)
	if err != nil {
		return nil, err
	}
	h, err := agentconfig.NewWebhook(secret, o.refreshers, o.glMetrics, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.webhookListen)
	if err != nil {
		return nil, fmt.Errorf("--gitlab-webhook-listen %s: %w", o.webhookListen, err)
	}
	log.Info("serving the GitLab webhook", "listen", ln.Addr().String(), "agents", len(o.refreshers))
	return &webhookServer{ln: ln, h: h}, nil
}

// buildShared reads what every agent shares — the operator modules and the
// directory — and makes the identity source over them; any error leaves the
// caller's current state in place.
func (o *authzOptions) buildShared(ctx context.Context) (*extauthz.Shared, error) {
	mods, err := policy.LoadModules(o.policyDir)
	if err != nil {
		return nil, err
	}
	// Compile the modules before Sources installs the directory: after it, nothing
	// may fail.
	if err := policy.CheckModules(ctx, mods); err != nil {
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
	return &extauthz.Shared{Authenticator: authn, Memberships: members, Modules: mods}, nil
}

// watched are the shared inputs' files (each agent's own are watched by its Source).
func (o *authzOptions) watched() []string {
	var paths []string
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
	defer o.service.closeLog()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg := newRegistry()
	cache, err := policy.NewDecisionCache(o.cacheBytes)
	if err != nil {
		return fmt.Errorf("--decision-cache-bytes: %w", err)
	}
	if o.backends, err = backends.Build(ctx, o.identity, reg, log); err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	defer o.backends.Close()
	agents, err := o.agents(log, reg)
	if err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	webhook, err := o.webhook(log)
	if err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	browserLn, err := o.browser.open(log)
	if err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	if browserLn != nil {
		defer browserLn.Close()
	}
	var reloader *extauthz.Reloader
	if paths := o.watched(); len(paths) > 0 {
		reloader = &extauthz.Reloader{Paths: paths, Log: log, Poll: o.reloadPoll}
		// Before the build: an edit made while it reads the files is then a change.
		reloader.Baseline()
	}
	// Each agent file is read and parsed while the directory loads (at real size
	// the two took 15 and 70 ms one after the other); the first load of the same
	// bytes takes the parse (extauthz.Preparsed).
	preparsed := &extauthz.Preparsed{}
	prepared := make(chan struct{})
	go func() {
		defer close(prepared)
		for _, a := range agents {
			if f, ok := a.source.(*agentconfig.File); ok {
				if data, err := f.Read(); err == nil {
					preparsed.Parse(f.Path, data)
				}
			}
		}
	}()
	shared, err := o.buildShared(ctx)
	<-prepared
	if err != nil {
		return fmt.Errorf("cannot start: %w", err)
	}
	specs := make([]extauthz.AgentSpec, len(agents))
	for i, a := range agents {
		specs[i] = a.spec
	}
	var origins []string
	if o.browser.publicURL != "" {
		origins = []string{o.browser.publicURL}
	}
	srv, err := extauthz.NewGateway(specs, shared, extauthz.GatewayOptions{Log: log, Registerer: reg, EngineOptions: []policy.Option{policy.WithDecisionCache(cache)}, AllowedOrigins: origins, Preparsed: preparsed})
	if err != nil {
		return err
	}

	var browser http.Handler
	if browserLn != nil {
		if browser, err = o.browser.handler(o.backends, &o.identity, srv, log); err != nil {
			return fmt.Errorf("cannot start: %w", err)
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The session key file watch (rotation); nothing without --session-key-file.
		if err := o.backends.Run(runCtx); err != nil {
			log.Error("the session key file is no longer watched; a rotated key is not picked up until kubegate authz restarts", "err", err.Error())
		}
	}()
	if browser != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := httpserve.Serve(runCtx, browserLn, browser); err != nil {
				log.Error("the browser listener stopped; browser logins and the Dashboard are unavailable until kubegate authz restarts", "err", err.Error())
			}
		}()
	}
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A source that cannot work at all stops that agent's reloads only; its
			// last good configuration stays in service and the others go on.
			if err := srv.RunAgent(runCtx, a.spec.Agent.ID, a.source); err != nil {
				log.Error("the agent configuration is no longer watched; restart kubegate authz once the cause is fixed", "agent", a.spec.Agent.ID, "name", a.spec.Name, "err", err.Error())
			}
		}()
	}
	if webhook != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := agentconfig.ServeWebhookOn(runCtx, webhook.ln, webhook.h); err != nil {
				log.Error("the GitLab webhook stopped; agent configurations are still re-read at their interval", "err", err.Error())
			}
		}()
	}
	if reloader != nil {
		reloader.Reload = func(ctx context.Context) error {
			sh, err := o.buildShared(ctx)
			if err != nil {
				return err
			}
			return srv.SwapShared(ctx, sh)
		}
		reloader.Metrics = srv.ReloadMetrics()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := reloader.Run(runCtx); err != nil {
				log.Error("the directory and policy are no longer watched; restart kubegate authz once the cause is fixed", "err", err.Error())
			}
		}()
	}

	waitCtx, waitDone := context.WithTimeout(ctx, o.startWait)
	ready := srv.WaitTried(waitCtx)
	waitDone()
	if len(ready) == 0 {
		var errs []error
		for _, a := range agents {
			if err := srv.LastError(a.spec.Agent.ID); err != nil {
				errs = append(errs, fmt.Errorf("agent %d: %w", a.spec.Agent.ID, err))
			} else {
				errs = append(errs, fmt.Errorf("agent %d: no configuration within --start-wait %v", a.spec.Agent.ID, o.startWait))
			}
		}
		return fmt.Errorf("cannot start: no agent has a valid configuration:\n%w", errors.Join(errs...))
	}
	if len(ready) < len(agents) {
		log.Warn("serving only some agents; the others answer 503 until a valid configuration loads", "serving", len(ready), "agents", len(agents))
	}
	err = (&grpcService{
		name: "authz", flags: &o.service, log: log, registry: reg,
		register:     func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) },
		serviceNames: []string{authv3.Authorization_ServiceDesc.ServiceName},
		private:      authzPrivate,
	}).run(ctx)
	return err
}
