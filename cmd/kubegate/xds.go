package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/sds"
	"kubegate.dev/kubegate/gateway"
)

// xdsSecret is one agent's token: the SDS secret name and the file it is read from.
type xdsSecret struct{ name, file string }

func newXDSCommand() *cobra.Command {
	sf := &serviceFlags{}
	var tokenFile, secretName, gatewayConfig string
	var agentID int64
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Serve each agent's service-account token to Envoy over SDS, following rotations",
		Long: `Serve each agent's token as the SDS generic secret kubegate-agent-token-<agent id>
that the credential_injector of that agent's API server cluster sends upstream as
"Authorization: Bearer <token>", and push a new version whenever a token file
changes — including a Kubernetes projected token's symlink swap — without
restarting Envoy. An empty or unreadable file is logged and skipped: the last
good token of that agent stays, and no other agent's secret is touched. Also
serves grpc.health.v1 and, with --metrics-listen, Prometheus metrics; SIGTERM
stops it gracefully.

The agents are those of --gateway-config FILE (each agent's upstream.token_file),
or the one agent of --agent-id and --token-file. With the single-agent flags an
unusable token file at start is an error; with a gateway configuration that
agent's secret is simply not served until its file is good (its requests get
Envoy's agent-token-missing 503) while the others are.

Anyone who can reach --listen can read the tokens: listen on loopback or a unix
socket (created with the process umask; Envoy must be able to write to it). Any
other address is refused unless --allow-non-loopback says only Envoy can reach it.`,
		Example: `  kubegate xds --listen 127.0.0.1:9003 --agent-id 42 --token-file /var/run/secrets/tokens/kubegate-agent
  kubegate xds --listen unix:///run/kubegate/xds.sock --gateway-config gateway.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd, sf.configFile); err != nil {
				return err
			}
			secrets, strict, err := xdsSecrets(gatewayConfig, tokenFile, secretName, agentID)
			if err != nil {
				return err
			}
			log, err := sf.logger(os.Stderr, "xds")
			if err != nil {
				return err
			}
			defer sf.closeLog()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serveXDS(ctx, sf, log, newRegistry(), secrets, strict, poll)
		},
	}
	sf.add(cmd.Flags(), "127.0.0.1:9003")
	f := cmd.Flags()
	// SDS streams never end by themselves: the grace only lets in-flight pushes out.
	grace := f.Lookup("shutdown-grace")
	grace.DefValue = "2s"
	if err := grace.Value.Set("2s"); err != nil {
		panic(err)
	}
	f.StringVar(&gatewayConfig, "gateway-config", "", "gateway configuration FILE: serve every agent's upstream.token_file as kubegate-agent-token-<id>; instead of --agent-id and --token-file")
	f.Int64Var(&agentID, "agent-id", 0, "the one agent whose token --token-file holds: serves it as the secret "+envoy.TokenSecretPrefix+"<id>, what `kubegate envoy render` references in that agent's cluster")
	f.StringVar(&tokenFile, "token-file", "", "file holding the one agent's service-account token (without --gateway-config)")
	f.StringVar(&secretName, "secret-name", "", "name of the one SDS secret instead of the one --agent-id implies")
	f.DurationVar(&poll, "poll-interval", 30*time.Second, "also re-read the files this often, for filesystems without change events; 0 turns it off")
	return cmd
}

// xdsSecrets is what to serve: every agent of the gateway configuration, or the
// one of the single-agent flags (strict: its file must be good at start).
func xdsSecrets(gatewayConfig, tokenFile, secretName string, agentID int64) (_ []xdsSecret, strict bool, _ error) {
	if gatewayConfig != "" {
		if tokenFile != "" || secretName != "" || agentID != 0 {
			return nil, false, errors.New("give --gateway-config or --agent-id and --token-file, not both: the gateway configuration names every agent's token file")
		}
		g, err := gateway.Load(gatewayConfig)
		if err != nil {
			return nil, false, err
		}
		var out []xdsSecret
		for _, a := range g.Agents {
			out = append(out, xdsSecret{name: envoy.TokenSecretFor(a.ID), file: a.Upstream.TokenFile})
		}
		return out, false, nil
	}
	if tokenFile == "" {
		return nil, false, errors.New("--token-file is required (or --gateway-config)")
	}
	switch {
	case agentID > 0 && secretName == "":
		secretName = envoy.TokenSecretFor(agentID)
	case agentID != 0 && secretName != "":
		return nil, false, errors.New("give --agent-id or --secret-name, not both")
	case secretName == "":
		return nil, false, fmt.Errorf("--agent-id is required (a positive number, the agent's GitLab id): the secret is %s<agent id>, the name `kubegate envoy render` references in that agent's cluster", envoy.TokenSecretPrefix)
	}
	return []xdsSecret{{name: secretName, file: tokenFile}}, true, nil
}

// runXDS serves one secret from tokenFile on addr with the service runner's
// defaults (tests and single-agent callers).
func runXDS(ctx context.Context, logger *slog.Logger, addr envoy.Addr, tokenFile, secretName string, poll time.Duration) error {
	sf := &serviceFlags{listen: addr.String(), logLevel: "info", shutdownGrace: 2 * time.Second}
	return serveXDS(ctx, sf, logger, newRegistry(), []xdsSecret{{name: secretName, file: tokenFile}}, true, poll)
}

// xdsMetrics count each secret's published versions and refused reads.
type xdsMetrics struct {
	published, rejected *prometheus.CounterVec
	good                *prometheus.GaugeVec
}

func newXDSMetrics(reg prometheus.Registerer) *xdsMetrics {
	m := &xdsMetrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kubegate_xds_token_versions_total", Help: "Token versions published, by secret."}, []string{"secret"}),
		rejected:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kubegate_xds_token_rejected_reads_total", Help: "Reads of a token file that were empty, missing or malformed (the last good token stays), by secret."}, []string{"secret"}),
		good:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kubegate_xds_token_served", Help: "1 when a token is served for the secret, 0 while none has been good yet."}, []string{"secret"}),
	}
	reg.MustRegister(m.published, m.rejected, m.good)
	return m
}

// serveXDS publishes every secret from its file and watches each file on its
// own, then serves SDS on the service runner until ctx ends. A file's bad read
// only ever affects its own secret. strict: a secret whose file is unusable at
// start stops the command (the single-agent case: Envoy would answer 503 to
// everyone and the cause would be far from here).
func serveXDS(ctx context.Context, sf *serviceFlags, log *slog.Logger, reg *prometheus.Registry, secrets []xdsSecret, strict bool, poll time.Duration) error {
	if len(secrets) == 0 {
		return errors.New("no agent to serve a token for")
	}
	const private = "kubegate xds serves the agent tokens, which can impersonate anyone"
	// The address first: a wrong one is the likelier mistake, and it says so
	// before any token is read.
	addr, err := envoy.ParseAddr(sf.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	if err := checkPrivateListen(addr, sf.allowNonLoopback, private); err != nil {
		return err
	}
	metrics := newXDSMetrics(reg)
	srv := sds.NewServer(secrets[0].name, log)
	first := make([]string, len(secrets))
	for i, s := range secrets {
		metrics.good.WithLabelValues(s.name).Set(0)
		token, err := sds.ReadToken(s.file)
		if err != nil {
			if strict {
				return err
			}
			metrics.rejected.WithLabelValues(s.name).Inc()
			log.Error("token file not usable; this agent's secret is not served until it is", "secret", s.name, "token_file", s.file, "err", err)
			continue
		}
		if _, err := srv.PublishSecret(ctx, s.name, token); err != nil {
			return err
		}
		first[i] = token
		metrics.published.WithLabelValues(s.name).Inc()
		metrics.good.WithLabelValues(s.name).Set(1)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	watchErr := make(chan error, len(secrets))
	for i, s := range secrets {
		w := &sds.Watcher{Path: s.file, Poll: poll, Logger: log.With("secret", s.name),
			OnToken: func(tok string) {
				changed, err := srv.PublishSecret(runCtx, s.name, tok)
				if err != nil {
					log.Error("cannot serve the new token; still serving the last one", "secret", s.name, "err", err)
					return
				}
				if changed {
					metrics.published.WithLabelValues(s.name).Inc()
					metrics.good.WithLabelValues(s.name).Set(1)
				}
			},
			OnReject: func(error) { metrics.rejected.WithLabelValues(s.name).Inc() },
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(runCtx, first[i]); err != nil && runCtx.Err() == nil {
				if strict {
					watchErr <- fmt.Errorf("watching %s: %w", s.file, err)
					return
				}
				// Its last good token stays served; the other agents' watches go on.
				log.Error("watching the token file stopped; this agent's token is no longer followed", "secret", s.name, "token_file", s.file, "err", err)
			}
		}()
	}
	defer wg.Wait()

	svcCtx, svcCancel := context.WithCancel(runCtx)
	defer svcCancel()
	svcErr := make(chan error, 1)
	go func() {
		svcErr <- (&grpcService{
			name: "xds", flags: sf, log: log, registry: reg,
			register:     func(g *grpc.Server) { srv.RegisterSDS(runCtx, g) },
			serviceNames: []string{secretv3.SecretDiscoveryService_ServiceDesc.ServiceName},
			private:      private,
		}).run(svcCtx)
	}()
	names := make([]string, len(secrets))
	for i, s := range secrets {
		names[i] = s.name
	}
	log.Info("serving SDS", "listen", sf.listen, "secrets", names, "version", srv.Version())
	select {
	case err := <-svcErr:
		cancel()
		return err
	case err := <-watchErr:
		svcCancel()
		<-svcErr
		cancel()
		return err
	}
}

// listenAddr listens on TCP or on a unix socket, replacing a stale socket file
// left by a previous run (but never another kind of file).
func listenAddr(a envoy.Addr) (net.Listener, error) {
	if a.Path == "" {
		lis, err := net.Listen("tcp", a.String())
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
		return lis, nil
	}
	if fi, err := os.Lstat(a.Path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listening on %s: %s exists and is not a socket", a, a.Path)
		}
		if err := os.Remove(a.Path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", a.Path, err)
		}
	}
	lis, err := net.Listen("unix", a.Path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", a, err)
	}
	return lis, nil
}
