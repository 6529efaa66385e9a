package chart

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/test/cluster"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// kubegateBinary builds cmd/kubegate once for the package (what the image holds at
// /usr/local/bin/kubegate).
func kubegateBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "kubegate-chart-bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "kubegate")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/kubegate")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building kubegate: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// TestHelmDirMatchesBuildScript: the fallback used outside the repository names the
// same directory as test/tools/build.sh --print-helm-dir, so the versions cannot
// drift apart (like test/cluster's TestDefaultBinDirMatchesBuildScript).
func TestHelmDirMatchesBuildScript(t *testing.T) {
	toolsDir := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "test", "tools", "build.sh"), "--print-helm-dir")
	cmd.Env = append(os.Environ(), cluster.ToolsDirEnv+"="+toolsDir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh --print-helm-dir: %v", err)
	}
	if got, want := defaultHelmDir(toolsDir), strings.TrimSpace(string(out)); got != want {
		t.Errorf("Go fallback = %s, build.sh --print-helm-dir = %s", got, want)
	}
	t.Setenv(cluster.ToolsDirEnv, toolsDir)
	if got, err := helmDir(""); err != nil || got != defaultHelmDir(toolsDir) {
		t.Errorf("helmDir outside the repository = %q, %v; want %s", got, err, defaultHelmDir(toolsDir))
	}
}

// TestLint: helm lint --strict passes with the minimal and the production values,
// and with only the chart's defaults lint reports the missing required values.
func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    values
	}{
		{"minimal", minimal(t)},
		{"browser", withBrowser(t)},
		{"production", production(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := yaml.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(tempDir(t), "values.yaml")
			if err := os.WriteFile(f, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, stderr, err := runHelm(t, "lint", "--strict", chartDir, "--kube-version", kubeVersion, "--values", f); err != nil {
				t.Fatalf("helm lint --strict: %v\n%s%s", err, out, stderr)
			}
		})
	}
	t.Run("defaults name the required values", func(t *testing.T) {
		out, stderr, _ := runHelm(t, "lint", chartDir, "--kube-version", kubeVersion)
		if !strings.Contains(out+stderr, "agent.id is required") {
			t.Errorf("helm lint without values does not report agent.id:\n%s%s", out, stderr)
		}
	})
}

// TestTemplateRefusesBadValues: every invalid value set fails helm template with a
// message naming the value (values.schema.json or a fail in the templates), and
// renders nothing.
func TestTemplateRefusesBadValues(t *testing.T) {
	base := minimal(t)
	br := withBrowser(t)
	tests := []struct {
		name string
		v    values
		want string
	}{
		{"missing agent id", base.merge(values{"agent": values{"id": nil}}), "agent.id is required"},
		{"missing config project id", base.merge(values{"agent": values{"configProjectId": nil}}), "agent.configProjectId is required"},
		{"agent id not a number", base.merge(values{"agent": values{"id": "one"}}), "at '/agent/id'"},
		{"no agent config", base.merge(values{"agent": values{"config": values{"inline": ""}}}), "agent.config is empty"},
		{"inline and existing agent config", base.merge(values{"agent": values{"config": values{"existingConfigMap": "x"}}}), "not both"},
		{"both directory and GitLab", base.merge(values{"identity": values{"gitlab": values{"url": "https://gitlab.example.com", "tokenSecret": values{"name": "t"}}}}), "both a directory and GitLab"},
		{"GitLab source with a directory", base.merge(values{"identity": values{"source": "gitlab", "gitlab": values{"url": "https://gitlab.example.com", "tokenSecret": values{"name": "t"}}}}), "both a directory and GitLab"},
		{"no directory secret", base.merge(values{"identity": values{"directory": values{"existingSecret": ""}}}), "identity.directory.existingSecret is required"},
		{"GitLab without token secret", base.merge(values{"identity": values{"source": "gitlab", "directory": values{"existingSecret": ""}, "gitlab": values{"url": "https://gitlab.example.com"}}}), "identity.gitlab.tokenSecret.name is required"},
		{"GitLab over http", base.merge(values{"identity": values{"source": "gitlab", "directory": values{"existingSecret": ""}, "gitlab": values{"url": "http://gitlab.example.com", "tokenSecret": values{"name": "t"}}}}), "identity.gitlab.url"},
		{"unknown identity source", base.merge(values{"identity": values{"source": "ldap"}}), "at '/identity/source'"},
		{"OIDC without client id", base.merge(values{"identity": values{"oidc": values{"issuer": "https://issuer.example.com"}}}), "identity.oidc.clientId is required"},
		{"TCP address for xds", base.merge(values{"sockets": values{"xds": "127.0.0.1:9003"}}), "sockets.xds"},
		{"TCP address for authz", base.merge(values{"sockets": values{"authz": "0.0.0.0:9001"}}), "sockets.authz"},
		{"xds socket outside the shared volume", base.merge(values{"sockets": values{"xds": "unix:///tmp/xds.sock"}}), "sockets.xds"},
		{"render flag the chart owns", base.merge(values{"envoy": values{"renderArgs": []any{"--allow-non-loopback"}}}), "envoy.renderArgs: --allow-non-loopback is set by the chart"},
		{"render flag the chart owns, with a value", base.merge(values{"envoy": values{"renderArgs": []any{"--xds=0.0.0.0:9003"}}}), "envoy.renderArgs: --xds is set by the chart"},
		{"plain http API server", base.merge(values{"apiServer": values{"url": "http://kubernetes.default.svc"}}), "apiServer.url"},
		{"unknown key", base.merge(values{"replica": 3}), "replica"},
		{"unknown nested key", base.merge(values{"listener": values{"tls": values{"secret": "x"}}}), "secret"},
		{"short token lifetime", base.merge(values{"agentToken": values{"expirationSeconds": 60}}), "expirationSeconds"},
		{"listener secret missing", base.merge(values{"listener": values{"tls": values{"source": "secret"}}}), "listener.tls.existingSecret is required"},
		{"cert-manager without issuer", base.merge(values{"listener": values{"tls": values{"source": "certManager", "certManager": values{"dnsNames": []any{"k.example.com"}}}}}), "listener.tls.certManager.issuerRef.name is required"},
		{"cert-manager without names", base.merge(values{"listener": values{"tls": values{"source": "certManager", "certManager": values{"issuerRef": values{"name": "ca"}}}}}), "listener.tls.certManager.dnsNames is empty"},
		{"no API server addresses for the NetworkPolicy", base.merge(values{"networkPolicy": values{"apiServer": values{"cidrs": []any{}}}}), "networkPolicy.apiServer.cidrs is empty"},
		{"GitLab unreachable under the NetworkPolicy", base.merge(values{"identity": values{"source": "gitlab", "directory": values{"existingSecret": ""}, "gitlab": values{"url": "https://gitlab.example.com", "tokenSecret": values{"name": "t"}}}}), "networkPolicy.identityEndpoints is empty"},
		{"policy module name", base.merge(values{"policy": values{"modules": values{"x.txt": "package kubegate.operator.x"}}}), "not a file name ending in .rego"},
		{"autoscaling bounds", base.merge(values{"autoscaling": values{"enabled": true, "minReplicas": 5, "maxReplicas": 2}}), "autoscaling.minReplicas"},
		{"render flag the chart owns: --browser", base.merge(values{"envoy": values{"renderArgs": []any{"--browser=10.0.0.1:8081"}}}), "envoy.renderArgs: --browser is set by the chart"},
		{"browser without a public URL", br.merge(values{"browser": values{"publicURL": ""}}), "browser.publicURL is required"},
		{"browser public URL with a path", br.merge(values{"browser": values{"publicURL": "https://kubegate.example.com/ui"}}), "must be an origin"},
		{"browser public URL over http", br.merge(values{"browser": values{"publicURL": "http://kubegate.example.com"}}), "must be an origin"},
		{"browser without a session key", br.merge(values{"browser": values{"sessionKey": values{"existingSecret": ""}}}), "browser.sessionKey.existingSecret is required"},
		{"browser session key: the command to create it", br.merge(values{"browser": values{"sessionKey": values{"existingSecret": ""}}}), "kubectl -n <namespace> create secret generic kubegate-session-key"},
		{"memory sessions with two replicas", br.merge(values{"replicas": 2}), "logouts are kept in the memory of the replica that served them, so a logout would not reach the other replicas"},
		{"memory sessions with two replicas: etcd is the way", br.merge(values{"replicas": 2}), "Use browser.sessionStore=etcd"},
		{"memory sessions with autoscaling", br.merge(values{"autoscaling": values{"enabled": true}}), "browser.sessionStore=memory with autoscaling.enabled=true"},
		{"etcd sessions without endpoints", br.merge(values{"replicas": 2, "browser": values{"sessionStore": "etcd"}}), "browser.etcd.endpoints is required"},
		{"etcd sessions unreachable under the NetworkPolicy", br.merge(values{"replicas": 2, "browser": values{"sessionStore": "etcd", "etcd": values{"endpoints": []any{"https://etcd:2379"}}}}), "browser.etcd.networkPolicyTo is empty"},
		{"unknown session store", br.merge(values{"browser": values{"sessionStore": "redis"}}), "at '/browser/sessionStore'"},
		{"etcd endpoint not a URL", br.merge(values{"browser": values{"sessionStore": "etcd", "etcd": values{"endpoints": []any{"etcd:2379"}}}}), "at '/browser/etcd/endpoints/0'"},
		{"browser OIDC client without an issuer", br.merge(values{"browser": values{"oidc": values{"clientId": "kg"}}}), "browser.oidc.clientId is set but identity.oidc.issuer is empty"},
		{"browser with a mesh", br.merge(values{"mesh": values{"mode": "istio"}}), "browser.enabled is not available with mesh.mode=istio"},
		{"browser with GitLab and no OIDC", br.merge(values{"identity": values{"source": "gitlab", "directory": values{"existingSecret": ""}, "gitlab": values{"url": "https://gitlab.example.com", "tokenSecret": values{"name": "t"}}}, "networkPolicy": values{"enabled": false}}), "there is no way to log in"},
		{"unknown browser key", br.merge(values{"browser": values{"sessionKeySecret": "x"}}), "sessionKeySecret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, err := template(t, "kg", "kubegate", tt.v)
			if err == nil {
				t.Fatalf("helm template accepted it; want an error containing %q", tt.want)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("error %q does not contain %q", strings.TrimSpace(stderr), tt.want)
			}
			if strings.TrimSpace(out) != "" {
				t.Errorf("rendered output despite the error:\n%s", out)
			}
		})
	}
}

// TestValueSets: the rendered objects of each value set keep the chart's promises
// (item 1 and 2 of issue 12) before any API server sees them.
func TestValueSets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		v     values
		kinds []string // besides the ones every set has
	}{
		{"minimal", minimal(t), []string{"Secret", "ConfigMap", "PodDisruptionBudget"}},
		{"browser", withBrowser(t), []string{"Secret", "ConfigMap", "PodDisruptionBudget"}},
		{"production", production(t), []string{"Certificate", "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, "kg", "kubegate", tc.v)
			for _, k := range append([]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "NetworkPolicy", "Pod"}, tc.kinds...) {
				if !has(objs, k) {
					t.Errorf("no %s rendered", k)
				}
			}
			d := deployment(t, objs)
			spec := d.Spec.Template.Spec
			checkPodSpec(t, spec)
			if a := d.Spec.Template.Annotations; a["prometheus.io/scrape"] != "true" {
				t.Errorf("pod annotations %v: no prometheus.io/scrape", a)
			}
		})
	}
}

// checkPodSpec: the agent token only in xds; services on unix sockets in the shared
// emptyDir; hardening on every container.
func checkPodSpec(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is not false: every container would get a token")
	}
	tokenVolumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					tokenVolumes[v.Name] = true
				}
			}
		}
		if v.HostPath != nil {
			t.Errorf("volume %s is a hostPath", v.Name)
		}
	}
	if len(tokenVolumes) != 1 {
		t.Errorf("want one projected serviceAccountToken volume, found %v", tokenVolumes)
	}
	all := slices.Concat(spec.InitContainers, spec.Containers)
	for _, c := range all {
		for _, m := range c.VolumeMounts {
			if tokenVolumes[m.Name] && c.Name != "xds" {
				t.Errorf("container %s mounts the agent token volume %s; only xds may", c.Name, m.Name)
			}
			if m.Name == "session-key" && c.Name != "authz" {
				t.Errorf("container %s mounts the session key; only authz may", c.Name)
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("container %s: security context %+v is not read-only/no-escalation/drop ALL", c.Name, sc)
		}
		for _, a := range c.Args {
			// (render-envoy's --listen is Envoy's own TLS listener.)
			if v, ok := strings.CutPrefix(a, "--listen="); ok && c.Name != "render-envoy" && !strings.HasPrefix(v, "unix:///run/kubegate/") {
				t.Errorf("container %s listens on %s, not a unix socket in the shared volume", c.Name, v)
			}
			if a == "--allow-non-loopback" {
				t.Errorf("container %s allows a non-loopback listen address", c.Name)
			}
		}
	}
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v: want runAsNonRoot and RuntimeDefault seccomp", psc)
	}
}

// TestEnvoyVersionsAgree: the chart's Envoy image, docker-compose.yaml's and the
// go-control-plane envoy module kubegate builds against are the same version.
func TestEnvoyVersionsAgree(t *testing.T) {
	goMod := readFile(t, filepath.Join(root, "go.mod"))
	m := regexp.MustCompile(`(?m)^\s*github\.com/envoyproxy/go-control-plane/envoy (v[0-9.]+)\s*$`).FindStringSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod requires no github.com/envoyproxy/go-control-plane/envoy")
	}
	want := m[1]
	var chartValues struct {
		Envoy struct {
			Image struct{ Repository, Tag string }
		}
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(chartDir, "values.yaml"))), &chartValues); err != nil {
		t.Fatal(err)
	}
	if got := chartValues.Envoy.Image.Repository + ":" + chartValues.Envoy.Image.Tag; got != "envoyproxy/envoy:"+want {
		t.Errorf("values.yaml envoy.image = %s, want envoyproxy/envoy:%s (go.mod)", got, want)
	}
	var compose struct {
		Services map[string]struct{ Image string }
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(root, "docker-compose.yaml"))), &compose); err != nil {
		t.Fatal(err)
	}
	if got := compose.Services["envoy"].Image; got != "envoyproxy/envoy:"+want {
		t.Errorf("docker-compose.yaml envoy image = %s, want envoyproxy/envoy:%s (go.mod)", got, want)
	}
}

// TestAuthzMemoryLimits: the authz container's GOMEMLIMIT (authz.goMemLimit) is the Go
// runtime's syntax and leaves headroom under the container's memory limit, so the
// collector works harder before the kernel's OOM killer acts (go.dev/doc/gc-guide);
// every kubegate container requests no more memory than its limit.
func TestAuthzMemoryLimits(t *testing.T) {
	d := deployment(t, render(t, "kg", "kubegate", minimal(t)))
	goMem := regexp.MustCompile(`^([0-9]+)(B|KiB|MiB|GiB|TiB)$`)
	units := map[string]int64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
	for _, c := range d.Spec.Template.Spec.Containers {
		req, lim := c.Resources.Requests.Memory(), c.Resources.Limits.Memory()
		if lim.IsZero() || req.Cmp(*lim) > 0 {
			t.Errorf("container %s: memory request %v, limit %v: want a limit at least the request", c.Name, req, lim)
		}
		if c.Name != "authz" {
			continue
		}
		var v string
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				v = e.Value
			}
		}
		m := goMem.FindStringSubmatch(v)
		if m == nil {
			t.Fatalf("authz GOMEMLIMIT %q: want the Go runtime's form, e.g. 460MiB", v)
		}
		var n int64
		fmt.Sscan(m[1], &n)
		if got, max := n*units[m[2]], lim.Value()*95/100; got > max {
			t.Errorf("authz GOMEMLIMIT %s = %d bytes: above 95%% of its memory limit %v", v, got, lim)
		}
	}
}
