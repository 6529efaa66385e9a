package chart

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"kubegate.dev/kubegate/test/cluster"
)

// HelmVersion is the helm.sh/helm/v3 version test/tools/build.sh builds. It is used
// only when the script cannot be found (outside the repository, with
// KUBEGATE_TOOLS_DIR set); TestHelmDirMatchesBuildScript keeps the two equal.
const HelmVersion = "v3.22.0"

// Helm returns the path of the cached helm binary, asking test/tools/build.sh
// --print-helm-dir under moduleRoot (which honours KUBEGATE_TOOLS_DIR) or, without
// the script, $KUBEGATE_TOOLS_DIR/helm-<HelmVersion>. It never builds helm: a
// missing binary is an error saying how to build it.
func Helm(moduleRoot string) (string, error) {
	dir, err := helmDir(moduleRoot)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "helm")
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("helm %s is not built at %s: run `make tools` (or test/tools/build.sh) in the repository "+
			"to build it into the cache (set %s to use another cache directory)", HelmVersion, bin, cluster.ToolsDirEnv)
	}
	return bin, nil
}

func helmDir(moduleRoot string) (string, error) {
	if moduleRoot != "" {
		script := filepath.Join(moduleRoot, "test", "tools", "build.sh")
		if _, err := os.Stat(script); err == nil {
			var stderr bytes.Buffer
			cmd := exec.Command(script, "--print-helm-dir")
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("%s --print-helm-dir failed: %v: %s", script, err, strings.TrimSpace(stderr.String()))
			}
			return strings.TrimSpace(string(out)), nil
		}
	}
	if dir := os.Getenv(cluster.ToolsDirEnv); dir != "" {
		return defaultHelmDir(dir), nil
	}
	return "", errors.New("cannot find helm: run from inside the kubegate repository (after `make tools`), or set " +
		cluster.ToolsDirEnv + " to the directory `make tools` built into")
}

// defaultHelmDir mirrors build.sh: $dir/helm-<version>.
func defaultHelmDir(toolsDir string) string {
	return filepath.Join(toolsDir, "helm-"+HelmVersion)
}
