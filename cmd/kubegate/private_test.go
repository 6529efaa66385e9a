package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestServicesRefuseExposedListen: the SDS server (the agent token), authz (users'
// credentials) and extproc refuse an address other clients could reach, unless
// --allow-non-loopback says only Envoy can; the render refuses such service
// addresses the same way.
func TestServicesRefuseExposedListen(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-token")
	authz := []string{"authz", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory}
	render := []string{"envoy", "render", "--check-files=false", "--tls-cert", "/c", "--tls-key", "/k", "--agent-id", "1", "--apiserver", "https://k8s:6443", "--apiserver-ca", "/ca",
		"--authz", "127.0.0.1:9001", "--extproc", "unix:///run/kubegate/extproc.sock"}
	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"xds on every interface", []string{"xds", "--agent-id", "1", "--listen", "0.0.0.0:19003", "--token-file", missing},
			[]string{"--listen 0.0.0.0:19003", "agent token", "--allow-non-loopback"}},
		{"xds on a pod IP", []string{"xds", "--agent-id", "1", "--listen", "10.0.0.7:19003", "--token-file", missing}, []string{"--listen 10.0.0.7:19003"}},
		// Past the check, the next error is the missing token file.
		{"xds allowed explicitly", []string{"xds", "--agent-id", "1", "--listen", "0.0.0.0:19003", "--allow-non-loopback", "--token-file", missing}, []string{"no such file"}},
		{"authz on every interface", append(authz, "--listen", "0.0.0.0:19001"), []string{"--listen 0.0.0.0:19001", "credential", "--allow-non-loopback"}},
		{"extproc on every interface", []string{"extproc", "--listen", "0.0.0.0:19002"}, []string{"--listen 0.0.0.0:19002", "--allow-non-loopback"}},
		{"render with xds on a service name", append(render, "--xds", "xds:9003"), []string{"--xds xds:9003", "agent token", "--allow-non-loopback"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, "", tt.args...)
			if code != 1 || out != "" {
				t.Fatalf("code %d, stdout %q; want 1 and nothing\n%s", code, out, errOut)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
	// Allowed, the same render succeeds.
	if _, errOut, code := run(t, "", append(render, "--xds", "xds:9003", "--allow-non-loopback")...); code != 0 {
		t.Errorf("render --allow-non-loopback: %s", errOut)
	}
}
