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
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/sds"
)

func newXDSCommand() *cobra.Command {
	var listen, tokenFile, secretName string
	var agentID int64
	var poll time.Duration
	var allowNonLoopback bool
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Serve the agent's service-account token to Envoy over SDS, following rotations",
		Long: `Serve the token in --token-file as the SDS generic secret that Envoy's
credential_injector sends upstream as "Authorization: Bearer <token>", and push a
new version whenever the file changes — including a Kubernetes projected token's
symlink swap — without restarting Envoy. An empty or unreadable file is logged
and skipped: the last good token stays. Also serves grpc.health.v1.

Anyone who can reach --listen can read the token: listen on loopback or a unix
socket (created with the process umask; Envoy must be able to write to it). Any
other address is refused unless --allow-non-loopback says only Envoy can reach it.`,
		Example: `  kubegate xds --listen 127.0.0.1:9003 --agent-id 42 --token-file /var/run/secrets/tokens/kubegate-agent`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := envoy.ParseAddr(listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			if err := checkPrivateListen(addr, allowNonLoopback, "kubegate xds serves the agent token, which can impersonate anyone"); err != nil {
				return err
			}
			if tokenFile == "" {
				return errors.New("--token-file is required")
			}
			switch {
			case agentID > 0 && secretName == "":
				secretName = envoy.TokenSecretFor(agentID)
			case agentID != 0 && secretName != "":
				return errors.New("give --agent-id or --secret-name, not both")
			case secretName == "":
				return fmt.Errorf("--agent-id is required (a positive number, the agent's GitLab id): the secret is %s<agent id>, the name `kubegate envoy render` references in that agent's cluster", envoy.TokenSecretPrefix)
			}
			logger := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil)).With("service", "xds")
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runXDS(ctx, logger, addr, tokenFile, secretName, poll)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9003", "ADDR to serve SDS on: host:port or unix:///path")
	f.StringVar(&tokenFile, "token-file", "", "file holding the agent's service-account token")
	f.Int64Var(&agentID, "agent-id", 0, "the agent whose token --token-file holds: serves it as the secret "+envoy.TokenSecretPrefix+"<id>, what `kubegate envoy render` references in that agent's cluster")
	f.StringVar(&secretName, "secret-name", "", "name of the SDS secret instead of the one --agent-id implies")
	f.BoolVar(&allowNonLoopback, "allow-non-loopback", false, allowNonLoopbackUsage)
	f.DurationVar(&poll, "poll-interval", 30*time.Second, "also re-read the file this often, for filesystems without change events; 0 turns it off")
	return cmd
}

func runXDS(ctx context.Context, logger *slog.Logger, addr envoy.Addr, tokenFile, secretName string, poll time.Duration) error {
	// Refuse to start without a usable token: Envoy would answer 401 to everyone
	// and the cause would be far from here.
	token, err := sds.ReadToken(tokenFile)
	if err != nil {
		return err
	}
	srv := sds.NewServer(secretName, logger)
	if _, err := srv.Publish(ctx, token); err != nil {
		return err
	}
	lis, err := listenAddr(addr)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	srv.Register(ctx, g)

	watchErr := make(chan error, 1)
	w := &sds.Watcher{Path: tokenFile, Poll: poll, Logger: logger,
		OnToken: func(tok string) {
			if _, err := srv.Publish(ctx, tok); err != nil {
				logger.Error("cannot serve the new token; still serving the last one", "err", err)
			}
		},
	}
	go func() { watchErr <- w.Run(ctx, token) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- g.Serve(lis) }()
	logger.Info("serving SDS", "listen", addr.String(), "secret", secretName, "token_file", tokenFile, "version", srv.Version())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serving SDS on %s: %w", addr, err)
	case err := <-watchErr:
		g.Stop()
		if err != nil {
			return err
		}
		return nil
	case <-ctx.Done():
		// SDS streams never end by themselves; give in-flight pushes a moment.
		done := make(chan struct{})
		go func() { g.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			g.Stop()
		}
		return nil
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
