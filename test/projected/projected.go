// Package projected writes files the way the kubelet updates a projected,
// ConfigMap or Secret volume, so file watchers in tests see what they see in a
// pod.
package projected

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Write puts files into dir as Kubernetes' AtomicWriter does
// (pkg/volume/util/atomic_writer.go, AtomicWriter.Write): the files go into a new
// hidden directory, a ..data_tmp symlink is pointed at it and renamed over ..data
// (one atomic rename: an inotify IN_MOVED_TO in dir), and each visible name is a
// symlink into ..data, created once. Every call must give the same file names.
func Write(dir string, files map[string][]byte) error {
	ts := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	return nil
}
