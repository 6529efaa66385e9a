package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Versions built by test/tools/build.sh. They are used only when the script cannot be
// found (a program run outside the repository with KUBEGATE_TOOLS_DIR set); a test
// checks they name the same directory as `build.sh --print-dir`.
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.7.3"
	KWOKVersion = "v0.8.0"
)

// ToolsDirEnv overrides where build.sh caches the binaries (same meaning as in build.sh).
const ToolsDirEnv = "KUBEGATE_TOOLS_DIR"

const modulePath = "kubegate.dev/kubegate"

// Names of the binaries in the tools directory.
const (
	etcdBinary              = "etcd"
	apiServerBinary         = "kube-apiserver"
	controllerManagerBinary = "kube-controller-manager"
	kwokBinary              = "kwok"
)

// binaries holds absolute paths of the control-plane programs.
type binaries struct {
	etcd, apiServer, controllerManager, kwok string
}

// findBinaries locates the binaries in binDir (if set) or in build.sh's cache
// directory, and fails with instructions when one is missing: tests must not build
// them (a first build takes ~8 minutes and 2.7 GiB).
func findBinaries(binDir, moduleRoot string, needControllerManager, needKWOK bool) (binaries, error) {
	kwokDir := binDir // a given BinDir may hold kwok too
	if binDir == "" {
		var err error
		if binDir, err = toolsBinDir(moduleRoot, "--print-dir"); err != nil {
			return binaries{}, err
		}
	}
	if needKWOK && (kwokDir == "" || isExecutable(filepath.Join(kwokDir, kwokBinary)) != nil) {
		var err error
		if kwokDir, err = toolsBinDir(moduleRoot, "--print-kwok-dir"); err != nil {
			return binaries{}, err
		}
	}
	b := binaries{
		etcd:              filepath.Join(binDir, etcdBinary),
		apiServer:         filepath.Join(binDir, apiServerBinary),
		controllerManager: filepath.Join(binDir, controllerManagerBinary),
		kwok:              filepath.Join(kwokDir, kwokBinary),
	}
	need := []string{b.etcd, b.apiServer}
	if needControllerManager {
		need = append(need, b.controllerManager)
	}
	if needKWOK {
		need = append(need, b.kwok)
	}
	for _, p := range need {
		if err := isExecutable(p); err != nil {
			return binaries{}, fmt.Errorf("test bed binary %s is missing (%v): run `make tools` in the repository "+
				"to build etcd %s, kube-apiserver and kube-controller-manager %s and kwok %s (the first build takes "+
				"several minutes, later runs reuse the cache; set %s to use another cache directory)",
				filepath.Base(p), err, EtcdVersion, KubeVersion, KWOKVersion, ToolsDirEnv)
		}
	}
	return b, nil
}

func isExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// toolsBinDir asks test/tools/build.sh where its cache is (flag --print-dir for the
// control plane, --print-kwok-dir for kwok), so the versions live in one place.
// Outside the repository it falls back to the same layout under $KUBEGATE_TOOLS_DIR.
func toolsBinDir(moduleRoot, flag string) (string, error) {
	if moduleRoot != "" {
		script := filepath.Join(moduleRoot, "test", "tools", "build.sh")
		if _, err := os.Stat(script); err == nil {
			var stderr bytes.Buffer
			cmd := exec.Command(script, flag)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("%s --print-dir failed: %v: %s", script, err, strings.TrimSpace(stderr.String()))
			}
			return strings.TrimSpace(string(out)), nil
		}
	}
	if dir := os.Getenv(ToolsDirEnv); dir != "" {
		if flag == "--print-kwok-dir" {
			return defaultKWOKDir(dir), nil
		}
		return defaultBinDir(dir), nil
	}
	return "", errors.New("cannot find the test bed binaries: run from inside the kubegate repository " +
		"(after `make tools`), or set " + ToolsDirEnv + " to the directory `make tools` built into")
}

// defaultBinDir mirrors build.sh: $dir/bin-kube-<version>-etcd-<version>.
func defaultBinDir(toolsDir string) string {
	return filepath.Join(toolsDir, "bin-kube-"+KubeVersion+"-etcd-"+EtcdVersion)
}

// defaultKWOKDir mirrors build.sh: $dir/kwok-<version>.
func defaultKWOKDir(toolsDir string) string {
	return filepath.Join(toolsDir, "kwok-"+KWOKVersion)
}

// findModuleRoot walks up from dir to the go.mod that declares kubegate's module.
// It returns "" when there is none (a binary run outside the repository).
func findModuleRoot(dir string) string {
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresModule(data, modulePath) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func declaresModule(goMod []byte, path string) bool {
	for line := range strings.SplitSeq(string(goMod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}
