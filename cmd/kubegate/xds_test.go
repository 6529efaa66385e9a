package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"kubegate.dev/kubegate/envoy"
)

func TestXDSRefusesBadTokenFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"empty token file", []string{"xds", "--listen", "127.0.0.1:19003", "--agent-id", "1", "--token-file", empty}, "token file is empty"},
		{"missing token file", []string{"xds", "--listen", "127.0.0.1:19003", "--agent-id", "1", "--token-file", filepath.Join(dir, "nope")}, "no such file"},
		{"no agent id", []string{"xds", "--listen", "127.0.0.1:19003", "--token-file", empty}, "--agent-id is required"},
		{"no token file flag", []string{"xds", "--listen", "127.0.0.1:19003"}, "--token-file is required"},
		{"bad listen address", []string{"xds", "--listen", "localhost", "--agent-id", "1", "--token-file", empty}, "--listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := run(t, "", tt.args...)
			if code != 1 || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("code %d, stderr %q; want 1 and %q", code, errOut, tt.wantErr)
			}
		})
	}
}

// TestXDSOverUnixSocket runs the command's server on a unix socket (as a sidecar
// next to Envoy would) and fetches the secret with a real SDS stream.
func TestXDSOverUnixSocket(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "xds.sock")
	// A stale socket from an earlier run is replaced.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := envoy.ParseAddr("unix://" + sock)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := runXDS(context.Background(), logger, addr, tokenFile, envoy.TokenSecretFor(1), 0); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("runXDS over a regular file = %v; want a refusal", err)
	}
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runXDS(ctx, logger, addr, tokenFile, envoy.TokenSecretFor(1), 0) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(sctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{envoy.TokenSecretFor(1)}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var s tlsv3.Secret
	if err := r.Resources[0].UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	if got := s.GetGenericSecret().GetSecret().GetInlineString(); got != "sa-token" {
		t.Fatalf("secret = %q, want sa-token", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runXDS after cancel: %v", err)
	}
}

// TestXDSGatewayConfigServesEachAgent: with --gateway-config every agent's token
// file is its own secret, watched on its own: one agent's unusable file at start
// or later never touches another's secret, and the bad one is served as soon as
// its file is good.
func TestXDSGatewayConfigServesEachAgent(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("one-token", "token-one\n")
	write("two-token", "\n") // unusable at start
	write("gateway.yaml", `agents:
- {id: 3, name: one, config_project_id: 1, agent_config: {file: one.yaml}, upstream: {server: "https://one:6443", ca_file: ca.crt, token_file: one-token}}
- {id: 4, name: two, config_project_id: 1, agent_config: {file: two.yaml}, upstream: {server: "https://two:6443", ca_file: ca.crt, token_file: two-token}}
`)
	secrets, strict, err := xdsSecrets(filepath.Join(dir, "gateway.yaml"), "", "", 0)
	if err != nil || strict || len(secrets) != 2 {
		t.Fatalf("xdsSecrets = %v %v %v", secrets, strict, err)
	}
	sock := filepath.Join(dir, "xds.sock")
	sf := &serviceFlags{listen: "unix://" + sock, logLevel: "info", shutdownGrace: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveXDS(ctx, sf, slog.New(slog.NewTextHandler(io.Discard, nil)), newRegistry(), secrets, strict, 100*time.Millisecond)
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// latest asks for both secrets on a new stream and returns what is served.
	latest := func() map[string]string {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		st, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(sctx, grpc.WaitForReady(true))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{envoy.TokenSecretFor(3), envoy.TokenSecretFor(4)}, TypeUrl: resource.SecretType}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, a := range r.Resources {
			var s tlsv3.Secret
			if err := a.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			got[s.Name] = s.GetGenericSecret().GetSecret().GetInlineString()
		}
		return got
	}
	waitFor := func(want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := latest()
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("served %v, want %v", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	one, two := envoy.TokenSecretFor(3), envoy.TokenSecretFor(4)
	t.Run("a bad file at start leaves the other served", func(t *testing.T) {
		waitFor(map[string]string{one: "token-one"})
	})
	t.Run("the bad one is served once good", func(t *testing.T) {
		write("two-token", "token-two\n")
		waitFor(map[string]string{one: "token-one", two: "token-two"})
	})
	t.Run("one file going bad keeps its last token and the other's", func(t *testing.T) {
		write("one-token", "")
		time.Sleep(300 * time.Millisecond) // several polls
		waitFor(map[string]string{one: "token-one", two: "token-two"})
		write("two-token", "token-two-rotated\n")
		waitFor(map[string]string{one: "token-one", two: "token-two-rotated"})
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serveXDS after cancel: %v", err)
	}
}

func TestXDSFlagConflicts(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"gateway config and token file", []string{"xds", "--gateway-config", "g.yaml", "--token-file", "t"}, "not both"},
		{"agent id and secret name", []string{"xds", "--agent-id", "1", "--secret-name", "s", "--token-file", "t"}, "not both"},
		{"gateway config that does not load", []string{"xds", "--gateway-config", "/nonexistent/g.yaml"}, "cannot read the gateway configuration"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, errOut, code := run(t, "", tt.args...); code != 1 || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code %d, stderr %q; want 1 and %q", code, errOut, tt.want)
			}
		})
	}
}
