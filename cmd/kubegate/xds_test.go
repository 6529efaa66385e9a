package main

import (
	"context"
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
		{"bad listen address", []string{"xds", "--listen", "localhost", "--token-file", empty}, "--listen"},
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
