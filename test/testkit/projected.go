package testkit

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// WriteProjectedVolume writes files into dir the way the kubelet updates a
// projected (or ConfigMap, Secret) volume, so watchers see what they see in a pod:
// the files go into a new hidden directory, a ..data_tmp symlink is pointed at it
// and renamed over ..data (one atomic rename, an inotify IN_MOVED_TO in dir), and
// each visible name is a symlink into ..data, created once (Kubernetes
// pkg/volume/util/atomic_writer.go, AtomicWriter.Write). Every call must give the
// same file names.
func WriteProjectedVolume(tb testing.TB, dir string, files map[string][]byte) {
	tb.Helper()
	ts := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		tb.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		tb.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			tb.Fatal(err)
		}
	}
}
