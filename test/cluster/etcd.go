package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Etcd is a lone etcd server, started as the cluster starts its own (same binary,
// same flags), for tests of kubegate's own use of etcd: the shared session
// revocation store. Stop and Start let a test take it away and bring it back on the
// same ports with the same data.
type Etcd struct {
	// URL is the client URL, http://127.0.0.1:<port> (https:// with TLS).
	URL string
	// LogPath is etcd's log file.
	LogPath string
	// With EtcdOptions.TLS: the CA that signed etcd's serving certificate and the
	// client certificate, and a client certificate and key etcd accepts.
	CAFile, ClientCert, ClientKey string

	bin       string
	args      []string
	healthURL string

	mu sync.Mutex
	p  *process
}

// EtcdBinary finds the test bed's etcd (built by `make tools`, cached under
// $KUBEGATE_TOOLS_DIR), or says how to get it.
func EtcdBinary() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	b, err := findBinaries("", findModuleRoot(wd), false, false)
	if err != nil {
		return "", err
	}
	return b.etcd, nil
}

// EtcdOptions configures StartEtcd.
type EtcdOptions struct {
	// TLS serves clients over TLS only, requiring a client certificate signed by a
	// fresh CA (etcd's --client-cert-auth); the files are written under workDir.
	TLS bool
}

// StartEtcd starts etcd with a fresh data directory under workDir and returns once
// it is healthy.
func StartEtcd(ctx context.Context, workDir string, opts EtcdOptions) (*Etcd, error) {
	bin, err := EtcdBinary()
	if err != nil {
		return nil, err
	}
	e := &Etcd{bin: bin, LogPath: filepath.Join(workDir, "etcd.log")}
	var tlsArgs []string
	if opts.TLS {
		if tlsArgs, err = e.writeTLS(workDir); err != nil {
			return nil, err
		}
	}
	dataDir := filepath.Join(workDir, "etcd-data")
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			return nil, err
		}
		scheme := "http"
		if opts.TLS {
			scheme = "https"
		}
		e.URL = scheme + "://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		e.healthURL = "http://127.0.0.1:" + strconv.Itoa(ports[2]) // /health in plain HTTP, whatever the client URL
		e.args = []string{
			"--name=kubegate-test",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + e.URL,
			"--advertise-client-urls=" + e.URL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubegate-test=" + peerURL,
			"--listen-metrics-urls=" + e.healthURL,
			"--unsafe-no-fsync", // test data needs no durability
		}
		e.args = append(e.args, tlsArgs...)
		err = e.Start(ctx)
		if err == nil {
			return e, nil
		}
		if attempt == attempts || !strings.Contains(tailFile(e.LogPath, 50), "address already in use") {
			return nil, err
		}
		_ = os.RemoveAll(dataDir)
	}
}

// Start starts etcd (again) with its flags and data, returning once it is healthy.
func (e *Etcd) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p != nil && !e.p.exited() {
		return errors.New("etcd is already running")
	}
	p, err := startProcess(etcdBinary, e.bin, e.args, e.LogPath)
	if err != nil {
		return err
	}
	e.p = p
	if err := waitReady(ctx, p, etcdHealthy(e.healthURL), 30*time.Second); err != nil {
		p.stop()
		return err
	}
	return nil
}

// Kill ends etcd with SIGKILL at once (a crash or a lost machine, not a shutdown:
// clients see their connections drop) and returns once it has exited.
func (e *Etcd) Kill() {
	e.mu.Lock()
	p := e.p
	e.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Stop stops etcd (SIGTERM, then SIGKILL) and returns once it has exited.
func (e *Etcd) Stop() {
	e.mu.Lock()
	p := e.p
	e.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// writeTLS writes a CA, etcd's serving certificate for 127.0.0.1 and a client
// certificate, and returns etcd's flags for them.
func (e *Etcd) writeTLS(dir string) ([]string, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "kubegate test etcd CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	e.CAFile = filepath.Join(dir, "etcd-ca.crt")
	if err := os.WriteFile(e.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return nil, err
	}
	write := func(name string, tmpl *x509.Certificate) (string, string, error) {
		der, key, err := issue(ca, caKey, tmpl)
		if err != nil {
			return "", "", err
		}
		certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return "", "", err
		}
		return certFile, keyFile, writePrivateKey(keyFile, key)
	}
	srvCert, srvKey, err := write("etcd-server", &x509.Certificate{Subject: pkix.Name{CommonName: "etcd"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	if e.ClientCert, e.ClientKey, err = write("etcd-client", &x509.Certificate{Subject: pkix.Name{CommonName: "kubegate"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, err
	}
	return []string{"--cert-file=" + srvCert, "--key-file=" + srvKey, "--client-cert-auth", "--trusted-ca-file=" + e.CAFile}, nil
}
