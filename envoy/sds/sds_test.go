package sds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"kubegate.dev/kubegate/envoy"
)

// rotationDeadline is the requirement: a rotated token reaches Envoy
// within a second. Polling is off in these tests, so only the file watch can
// deliver it.
const rotationDeadline = time.Second

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		want    string
		wantErr string
	}{
		{"trailing newline trimmed", write("ok", "eyJhbGciOi.abc.def\n"), "eyJhbGciOi.abc.def", ""},
		{"empty", write("empty", ""), "", "empty"},
		{"only whitespace", write("blank", " \n\t\n"), "", "empty"},
		{"newline inside", write("two-lines", "abc\ndef"), "", "byte 3 is 0xa"},
		{"space inside", write("space", "Bearer abc"), "", "byte 6 is 0x20"},
		{"missing", filepath.Join(dir, "nope"), "", "no such file"},
		{"a directory", dir, "", "is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadToken(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ReadToken error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadToken = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := ReadToken(filepath.Join(dir, "empty")); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty file error %v is not ErrEmpty", err)
	}
}

// projectedToken lays a token out the way kubelet's AtomicWriter does for a
// projected volume: dir/token -> ..data/token, ..data -> ..<timestamp>/.
type projectedToken struct {
	t   *testing.T
	dir string
	gen int
}

func newProjectedToken(t *testing.T, token string) *projectedToken {
	p := &projectedToken{t: t, dir: t.TempDir()}
	p.rotate(token)
	if err := os.Symlink(filepath.Join("..data", "token"), p.path()); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *projectedToken) path() string { return filepath.Join(p.dir, "token") }

// rotate writes a new timestamped directory, swaps ..data to it with a rename
// (atomic), and removes the old directory — kubelet's order.
func (p *projectedToken) rotate(token string) {
	p.t.Helper()
	old := fmt.Sprintf("..gen_%d", p.gen)
	p.gen++
	next := fmt.Sprintf("..gen_%d", p.gen)
	if err := os.Mkdir(filepath.Join(p.dir, next), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if token != "<none>" {
		if err := os.WriteFile(filepath.Join(p.dir, next, "token"), []byte(token), 0o600); err != nil {
			p.t.Fatal(err)
		}
	}
	tmp := filepath.Join(p.dir, "..data_tmp")
	if err := os.Symlink(next, tmp); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, "..data")); err != nil {
		p.t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(p.dir, old)); err != nil {
		p.t.Fatal(err)
	}
}

// stack is kubegate xds as `kubegate xds` runs it: a Server fed by a Watcher,
// behind a real gRPC listener on loopback.
type stack struct {
	addr    string
	rejects chan error
}

func startStack(t *testing.T, path string) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	first, err := ReadToken(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(envoy.TokenSecretFor(1), logger)
	if _, err := srv.Publish(ctx, first); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(ctx, g)
	go func() { _ = g.Serve(lis) }()
	s := &stack{addr: lis.Addr().String(), rejects: make(chan error, 16)}
	w := &Watcher{Path: path, Logger: logger,
		OnToken:  func(tok string) { _, _ = srv.Publish(ctx, tok) },
		OnReject: func(err error) { s.rejects <- err },
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, first) }()
	t.Cleanup(func() {
		cancel()
		g.Stop()
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
	})
	return s
}

// sdsClient is an SDS client speaking the protocol as Envoy does: request the
// named secret, ACK each response with its version and nonce.
type sdsClient struct {
	t         *testing.T
	stream    secretv3.SecretDiscoveryService_StreamSecretsClient
	responses chan *discoveryv3.DiscoveryResponse
}

func dial(t *testing.T, addr, nodeID string) *sdsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sdsClient{t: t, stream: stream, responses: make(chan *discoveryv3.DiscoveryResponse, 16)}
	c.send("", "", &corev3.Node{Id: nodeID, Cluster: envoy.DefaultNodeCluster})
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(c.responses)
				return
			}
			c.responses <- r
		}
	}()
	return c
}

func (c *sdsClient) send(version, nonce string, node *corev3.Node) {
	c.t.Helper()
	err := c.stream.Send(&discoveryv3.DiscoveryRequest{
		Node: node, VersionInfo: version, ResponseNonce: nonce,
		ResourceNames: []string{envoy.TokenSecretFor(1)}, TypeUrl: resource.SecretType,
	})
	if err != nil {
		c.t.Fatal(err)
	}
}

// next waits for the next response (at most within), ACKs it and returns the
// token and version it carries.
func (c *sdsClient) next(within time.Duration) (token, version string) {
	c.t.Helper()
	select {
	case r, ok := <-c.responses:
		if !ok {
			c.t.Fatal("SDS stream closed")
		}
		if len(r.Resources) != 1 {
			c.t.Fatalf("response has %d resources, want 1", len(r.Resources))
		}
		var s tlsv3.Secret
		if err := r.Resources[0].UnmarshalTo(&s); err != nil {
			c.t.Fatal(err)
		}
		if s.Name != envoy.TokenSecretFor(1) {
			c.t.Fatalf("secret %q, want %q", s.Name, envoy.TokenSecretFor(1))
		}
		c.send(r.VersionInfo, r.Nonce, nil)
		return s.GetGenericSecret().GetSecret().GetInlineString(), r.VersionInfo
	case <-time.After(within):
		c.t.Fatalf("no SDS response within %v", within)
	}
	return "", ""
}

func TestRotationIsPushed(t *testing.T) {
	tok := newProjectedToken(t, "token-1\n")
	s := startStack(t, tok.path())
	envoyA := dial(t, s.addr, "envoy-a")
	if got, v := envoyA.next(5 * time.Second); got != "token-1" || v != Version("token-1") {
		t.Fatalf("first secret = %q (version %s), want token-1", got, v)
	}

	start := time.Now()
	tok.rotate("token-2\n")
	got, v := envoyA.next(rotationDeadline)
	t.Logf("rotation delivered in %v", time.Since(start))
	if got != "token-2" || v != Version("token-2") {
		t.Fatalf("after rotation: %q (version %s), want token-2", got, v)
	}

	// Another Envoy replica, with another node id, gets the same current token.
	envoyB := dial(t, s.addr, "envoy-b")
	if got, _ := envoyB.next(5 * time.Second); got != "token-2" {
		t.Fatalf("second node got %q, want token-2", got)
	}

	// An in-place rewrite (truncate, then write) is seen too.
	if err := os.Remove(tok.path()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok.path(), []byte("token-3"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := envoyA.next(rotationDeadline); got != "token-3" {
		t.Fatalf("after replacing the file: %q, want token-3", got)
	}
}

// kubegate xds reads the token, then starts watching: a kubelet rotation in
// between fires its events before any watch exists. The watcher looks once when its
// watch is in place, so that rotation is served, not left to the next poll.
func TestRotationBeforeTheWatchIsServed(t *testing.T) {
	tok := newProjectedToken(t, "token-1")
	first, err := ReadToken(tok.path())
	if err != nil {
		t.Fatal(err)
	}
	tok.rotate("token-2")
	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &Watcher{Path: tok.path(), OnToken: func(t string) { got <- t }}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, first) }()
	select {
	case tok := <-got:
		if tok != "token-2" {
			t.Fatalf("OnToken(%q), want token-2", tok)
		}
	case <-time.After(rotationDeadline):
		t.Fatal("the rotation made before the watch started was never reported")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNoVersionWhileTokenIsBad(t *testing.T) {
	tok := newProjectedToken(t, "good-1")
	s := startStack(t, tok.path())
	c := dial(t, s.addr, "envoy")
	if got, _ := c.next(5 * time.Second); got != "good-1" {
		t.Fatalf("first secret = %q", got)
	}
	// Each rotation fires several directory events, so rejects of one state can
	// still be queued when the next starts: wait for one that matches.
	waitReject := func(what string, matches func(error) bool) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case err := <-s.rejects:
				if matches(err) {
					return
				}
			case <-deadline:
				t.Fatalf("%s: the watcher did not reject the file", what)
			}
		}
	}
	is := func(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }

	tok.rotate("")
	waitReject("empty token", is(ErrEmpty))
	tok.rotate("<none>") // ..data points at a directory without the file: unreadable
	waitReject("missing token", is(os.ErrNotExist))
	tok.rotate("line one\nline two")
	waitReject("token with a newline", func(err error) bool { return strings.Contains(err.Error(), "cannot appear in a bearer token") })

	// The stream carried nothing for the bad states: the next response is the next
	// good token, and it is the second version the client ever saw.
	tok.rotate("good-2")
	if got, v := c.next(rotationDeadline); got != "good-2" || v != Version("good-2") {
		t.Fatalf("after bad states: %q (version %s), want good-2", got, v)
	}
}

func TestHealthServing(t *testing.T) {
	tok := newProjectedToken(t, "t")
	s := startStack(t, tok.path())
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", r, err)
	}
}

func TestPublishSameTokenIsNoNewVersion(t *testing.T) {
	srv := NewServer(envoy.TokenSecretFor(1), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	for i, want := range []bool{true, false, true} {
		tok := []string{"a", "a", "b"}[i]
		changed, err := srv.Publish(ctx, tok)
		if err != nil || changed != want {
			t.Fatalf("Publish(%q) = %v, %v; want %v", tok, changed, err, want)
		}
	}
	if srv.Version() != Version("b") {
		t.Fatalf("Version() = %s", srv.Version())
	}
}

// TestOwnLogDoesNotFeedTheWatcher is the attack of issue 10 item 7: the token file
// is gone and the process logs into the token's directory. Each failed read logs a
// warning, which is a file event in the watched directory; if the watcher reacted
// to it, it would re-read, fail and log again, forever (tens of thousands of lines
// a second). Within a second the reads and the log lines must stay a handful.
func TestOwnLogDoesNotFeedTheWatcher(t *testing.T) {
	tests := []struct {
		name  string
		token func(t *testing.T) (path string, remove func())
	}{
		{"plain file", func(t *testing.T) (string, func()) {
			p := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(p, []byte("t"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p, func() {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"projected volume", func(t *testing.T) (string, func()) {
			tok := newProjectedToken(t, "t")
			return tok.path(), func() { tok.rotate("<none>") }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, remove := tt.token(t)
			logFile, err := os.Create(filepath.Join(filepath.Dir(path), "xds.log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			logger := slog.New(slog.NewJSONHandler(logFile, nil))
			var reads atomic.Int64
			// Every warning is logged here (no rate limit): the name filter alone
			// must break the loop; the rate limit is a second line (filewatch.Repeats).
			w := &Watcher{Path: path, Logger: logger, WarnEvery: time.Nanosecond,
				OnToken: func(string) {}, OnReject: func(error) { reads.Add(1) }}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx, "t") }()
			time.Sleep(100 * time.Millisecond) // the watch is set up
			remove()
			time.Sleep(time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(logFile.Name())
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Count(string(data), "\n")
			t.Logf("in 1s: %d failed reads, %d log lines", reads.Load(), lines)
			if reads.Load() == 0 {
				t.Fatal("the token's removal was not noticed")
			}
			if reads.Load() >= 10 || lines >= 10 {
				t.Fatalf("in 1s: %d failed reads and %d log lines; the watcher feeds on its own log", reads.Load(), lines)
			}
		})
	}
}
