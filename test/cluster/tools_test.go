package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDefaultBinDirMatchesBuildScript: the fallback used outside the repository names
// the same directory as test/tools/build.sh, so the versions cannot drift apart.
func TestDefaultBinDirMatchesBuildScript(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := findModuleRoot(wd)
	if root == "" {
		t.Fatalf("no %s go.mod above %s", modulePath, wd)
	}
	toolsDir := t.TempDir()
	for _, tc := range []struct {
		flag string
		dir  func(string) string
	}{
		{"--print-dir", defaultBinDir},
		{"--print-kwok-dir", defaultKWOKDir},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(root, "test", "tools", "build.sh"), tc.flag)
			cmd.Env = append(os.Environ(), ToolsDirEnv+"="+toolsDir)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("build.sh %s: %v", tc.flag, err)
			}
			if got, want := tc.dir(toolsDir), strings.TrimSpace(string(out)); got != want {
				t.Errorf("Go fallback = %s, build.sh %s = %s", got, tc.flag, want)
			}
		})
	}
}

func TestDeclaresModule(t *testing.T) {
	tests := []struct {
		name  string
		goMod string
		want  bool
	}{
		{name: "plain", goMod: "module kubegate.dev/kubegate\n\ngo 1.26.0\n", want: true},
		{name: "quoted", goMod: "module \"kubegate.dev/kubegate\"\n", want: true},
		{name: "tools module", goMod: "module kubegate.dev/kubegate/test/tools/kube\n", want: false},
		{name: "mentioned in a require", goMod: "module example.com/x\nrequire kubegate.dev/kubegate v1.0.0\n", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := declaresModule([]byte(tt.goMod), modulePath); got != tt.want {
				t.Errorf("declaresModule = %v, want %v", got, tt.want)
			}
		})
	}
}
