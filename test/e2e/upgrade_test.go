package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/dataplane"
	"kubegate.dev/kubegate/test/stack"
)

// echoUpstream is an API server stand-in that speaks only the upgrade: it checks
// what the gateway sent, answers 101 and echoes every byte back. (No kubelet runs
// here, so the real API server cannot complete an exec stream.)
func echoUpstream(t *testing.T, seen chan<- http.Header) (url, caFile string) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		up := r.Header.Get("Upgrade")
		if up == "" {
			http.Error(w, "not an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", up)
		if err := brw.Flush(); err != nil {
			return
		}
		_, _ = io.Copy(conn, brw) // echo until the client closes
	}))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "upstream-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile
}

// TestUpgradesPassThroughByteForByte runs a second data plane with the same real
// kubegate services, rendered against an upstream that speaks the upgrade, and
// sends a SPDY/3.1 and a WebSocket stream of random bytes through it.
func TestUpgradesPassThroughByteForByte(t *testing.T) {
	seen := make(chan http.Header, 8)
	upstreamURL, upstreamCA := echoUpstream(t, seen)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	certDir := filepath.Dir(gw.GatewayCA)
	bootstrap := filepath.Join(t.TempDir(), "envoy.yaml")
	out, err := exec.Command(gw.Binary, "envoy", "render", "-o", bootstrap, "--listen", addr, "--admin", "",
		"--tls-cert", filepath.Join(certDir, devcert.CertFile), "--tls-key", filepath.Join(certDir, devcert.KeyFile),
		"--agent-id", strconv.Itoa(stack.AgentID), "--apiserver", upstreamURL, "--apiserver-ca", upstreamCA,
		"--authz", gw.Authz.Addr, "--extproc", gw.ExtProc.Addr, "--xds", gw.XDS.Addr).CombinedOutput()
	if err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.Start(context.Background(), b, dataplane.Options{AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()

	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(gw.GatewayCA)
	pool.AppendCertsFromPEM(ca)
	for _, tc := range []struct{ name, request string }{
		{"SPDY/3.1 (kubectl exec, legacy)", "POST /k8s-proxy/api/v1/namespaces/demo/pods/web/exec?command=sh&stdin=true&stdout=true HTTP/1.1\r\n" +
			"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"},
		{"WebSocket (kubectl exec, 1.30+)", "GET /k8s-proxy/api/v1/namespaces/demo/pods/web/exec?command=sh&stdin=true&stdout=true HTTP/1.1\r\n" +
			"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "%sHost: %s\r\nAuthorization: Bearer pat:1:kg-sandbox-alice-token\r\n\r\n", tc.request, addr)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			h := <-seen
			if h.Get("Authorization") != "Bearer "+currentAgentToken(t) || h.Get("Impersonate-User") != "gitlab:user:alice" || len(h.Values("Impersonate-Group")) != 6 {
				t.Fatalf("the upgraded request went upstream with %v", h)
			}
			payload := make([]byte, 1<<20)
			_, _ = rand.Read(payload)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = conn.Write(payload)
			}()
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatalf("reading the echo: %v", err)
			}
			wg.Wait()
			if !bytes.Equal(got, payload) {
				t.Fatal("the stream did not pass through byte for byte")
			}
		})
	}
	// A refused upgrade: bob never gets a stream, and nothing reaches the upstream.
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /k8s-proxy/api/v1/namespaces/demo/pods/web/exec HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nAuthorization: Bearer pat:1:kg-sandbox-bob-token\r\n\r\n", addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bob's exec upgrade: %v %v", resp, err)
	}
	select {
	case h := <-seen:
		t.Fatalf("bob's refused upgrade reached the upstream: %v", h)
	default:
	}
}
