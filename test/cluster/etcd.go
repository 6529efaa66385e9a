package cluster

import (
	"context"
	"errors"
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
	// URL is the client URL, http://127.0.0.1:<port>.
	URL string
	// LogPath is etcd's log file.
	LogPath string

	bin  string
	args []string

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

// StartEtcd starts etcd with a fresh data directory under workDir and returns once
// it is healthy.
func StartEtcd(ctx context.Context, workDir string) (*Etcd, error) {
	bin, err := EtcdBinary()
	if err != nil {
		return nil, err
	}
	e := &Etcd{bin: bin, LogPath: filepath.Join(workDir, "etcd.log")}
	dataDir := filepath.Join(workDir, "etcd-data")
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		e.URL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		e.args = []string{
			"--name=kubegate-test",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + e.URL,
			"--advertise-client-urls=" + e.URL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubegate-test=" + peerURL,
			"--unsafe-no-fsync", // test data needs no durability
		}
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
	if err := waitReady(ctx, p, etcdHealthy(e.URL), 30*time.Second); err != nil {
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
