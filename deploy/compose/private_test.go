package compose

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/identity/session"
)

// composeFile is the part of docker-compose.yaml this test reads.
type composeFile struct {
	Services map[string]struct {
		Command  []string `json:"command"`
		Volumes  []string `json:"volumes"`
		Ports    []string `json:"ports"`
		Expose   []string `json:"expose"`
		Networks []string `json:"networks"`
		// NetworkMode "host" or "service:x" would put the service on another
		// network namespace than its networks say.
		NetworkMode string `json:"network_mode"`
	} `json:"services"`
	Networks map[string]struct {
		Internal bool `json:"internal"`
	} `json:"networks"`
}

// readCompose parses docker-compose.yaml.
func readCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile("../../docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	return c
}

// mountOf is where service mounts the named volume ("" if it does not).
func (c composeFile) mountOf(service, volume string) string {
	for _, v := range c.Services[service].Volumes {
		if name, target, ok := strings.Cut(v, ":"); ok && name == volume {
			target, _, _ = strings.Cut(target, ":")
			return target
		}
	}
	return ""
}

// mounting lists the services that mount the named volume, sorted.
func (c composeFile) mounting(volume string) []string {
	var out []string
	for name := range c.Services {
		if c.mountOf(name, volume) != "" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// flag is the value of --name=value in a service's command ("" if absent).
func (c composeFile) flag(service, name string) string {
	for _, a := range c.Services[service].Command {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// networksOf is the networks a service joins; compose puts a service without a
// networks key on "default" (compose-spec, services.networks).
func (c composeFile) networksOf(service string) []string {
	if n := c.Services[service].Networks; len(n) > 0 {
		return slices.Sorted(slices.Values(n))
	}
	return []string{"default"}
}

// TestServicesArePrivate: in docker-compose.yaml, the SDS server (the agent
// token), authz (users' credentials) and extproc listen on unix sockets in a
// volume that only they, Envoy and the one-shot init (which owns it to uid 65532)
// mount, publish no port, and the Envoy bootstrap reaches them through those
// sockets — no container or k3s pod on the compose network can (issue 10 item 8).
func TestServicesArePrivate(t *testing.T) {
	c := readCompose(t)
	mountOf := c.mountOf
	sockets := map[string]string{} // service → socket path
	for _, name := range []string{"authz", "extproc", "xds"} {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("no service %q", name)
		}
		if len(s.Ports) > 0 {
			t.Errorf("%s publishes %v", name, s.Ports)
		}
		var listen string
		for _, a := range s.Command {
			if v, ok := strings.CutPrefix(a, "--listen="); ok {
				listen = v
			}
			if a == "--allow-non-loopback" {
				t.Errorf("%s allows a non-loopback listen address", name)
			}
		}
		a, err := envoy.ParseAddr(listen)
		if err != nil || a.Path == "" {
			t.Errorf("%s --listen=%q: want a unix socket", name, listen)
			continue
		}
		if m := mountOf(name, "sockets"); m == "" || path.Dir(a.Path) != m {
			t.Errorf("%s listens on %s, not in its sockets volume mount %q", name, a.Path, m)
		}
		sockets[name] = a.Path
	}
	mounting := c.mounting("sockets")
	if want := []string{"authz", "envoy", "extproc", "init", "xds"}; !slices.Equal(mounting, want) {
		t.Errorf("the sockets volume is mounted by %v, want only %v", mounting, want)
	}
	if m := mountOf("envoy", "sockets"); m != "/run/kubegate" {
		t.Errorf("envoy mounts the sockets at %q", m)
	}

	// The bootstrap Envoy runs names those sockets as its gRPC clusters' pipes.
	bootstrap, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, fs := envoy.Decode(bootstrap)
	if len(fs) > 0 {
		t.Fatal(envoy.FormatFindings(fs))
	}
	clusters := map[string]string{envoy.AuthzCluster: "authz", envoy.ExtProcCluster: "extproc", envoy.XDSCluster: "xds"}
	for _, cl := range b.GetStaticResources().GetClusters() {
		svc, ok := clusters[cl.GetName()]
		if !ok {
			continue
		}
		addr := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
		if got := addr.GetPipe().GetPath(); got != sockets[svc] {
			t.Errorf("cluster %s reaches %v, want the pipe %s", cl.GetName(), addr, sockets[svc])
		}
		delete(clusters, cl.GetName())
	}
	if len(clusters) > 0 {
		t.Errorf("clusters missing from envoy.yaml: %v", clusters)
	}
}

// TestSessionKeyIsAuthzOnly: the key browser sessions are sealed with (whoever
// reads it can forge anyone's session) is in the session-key volume, which only
// init (which writes it) and authz (read-only) mount; it is not under any other
// volume authz shares, such as the sockets volume Envoy, extproc and xds mount.
func TestSessionKeyIsAuthzOnly(t *testing.T) {
	c := readCompose(t)
	if got, want := c.mounting("session-key"), []string{"authz", "init"}; !slices.Equal(got, want) {
		t.Errorf("the session-key volume is mounted by %v, want only %v", got, want)
	}
	keyFile := c.flag("authz", "--session-key-file")
	if keyFile == "" {
		t.Fatal("authz has no --session-key-file")
	}
	m := c.mountOf("authz", "session-key")
	if m == "" || path.Dir(keyFile) != m {
		t.Errorf("--session-key-file=%s is not in authz's session-key mount %q", keyFile, m)
	}
	for _, v := range c.Services["authz"].Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Errorf("authz volume %q has no target", v)
			continue
		}
		name, target := parts[0], parts[1]
		if name == "session-key" {
			if len(parts) < 3 || parts[2] != "ro" {
				t.Errorf("authz mounts the session key read-write (%q): it only reads it", v)
			}
			continue
		}
		if target == m || strings.HasPrefix(m, strings.TrimSuffix(target, "/")+"/") || strings.HasPrefix(target, m+"/") {
			t.Errorf("authz's %s mount %s overlaps the session key's %s: other services mount %s", name, target, m, name)
		}
	}
	// init writes it into its own mount of the volume, with the script the test
	// below runs.
	init := c.mountOf("init", "session-key")
	script, err := os.ReadFile("init.sh")
	if err != nil {
		t.Fatal(err)
	}
	if want := "/init/session-key.sh " + init + "/" + path.Base(keyFile); init == "" || !strings.Contains(string(script), want) {
		t.Errorf("init.sh does not run %q (init mounts session-key at %q)", want, init)
	}
}

// TestBrowserListenerIsEnvoysOnly: authz's browser listener (plain HTTP; it
// receives passwords and trusts the X-Forwarded-For Envoy appends,
// login.ForwardedClient) publishes no port and is reachable only from Envoy: authz
// is on the browser network alone, which is internal and which only Envoy also
// joins; Envoy's bootstrap routes /ui/ to that address.
func TestBrowserListenerIsEnvoysOnly(t *testing.T) {
	c := readCompose(t)
	listen := c.flag("authz", "--browser-listen")
	a, err := envoy.ParseAddr(listen)
	if err != nil || a.Path != "" {
		t.Fatalf("authz --browser-listen=%q: want host:port (%v)", listen, err)
	}
	authz := c.Services["authz"]
	if len(authz.Ports) > 0 || len(authz.Expose) > 0 || authz.NetworkMode != "" {
		t.Errorf("authz publishes %v, exposes %v, network_mode %q: want none", authz.Ports, authz.Expose, authz.NetworkMode)
	}
	if got := c.networksOf("authz"); !slices.Equal(got, []string{"browser"}) {
		t.Errorf("authz is on the networks %v, want only [browser]", got)
	}
	if n, ok := c.Networks["browser"]; !ok || !n.Internal {
		t.Errorf("the browser network is missing or not internal: %+v", c.Networks)
	}
	var members []string
	for name := range c.Services {
		if slices.Contains(c.networksOf(name), "browser") {
			members = append(members, name)
		}
		if m := c.Services[name].NetworkMode; m != "" {
			t.Errorf("%s has network_mode %q: it would share another namespace", name, m)
		}
	}
	slices.Sort(members)
	if want := []string{"authz", "envoy"}; !slices.Equal(members, want) {
		t.Errorf("the browser network has %v, want only %v", members, want)
	}
	if pub := c.flag("authz", "--public-url"); pub != "${KUBEGATE_PUBLIC_URL:-https://localhost:8443}" {
		t.Errorf("authz --public-url=%q: want the one variable KUBEGATE_PUBLIC_URL, default https://localhost:8443 (Envoy's published port)", pub)
	}
	if ports := c.Services["envoy"].Ports; !slices.Equal(ports, []string{"127.0.0.1:8443:8443"}) {
		t.Errorf("envoy publishes %v; the default public URL is https://localhost:8443", ports)
	}

	bootstrap, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, fs := envoy.Decode(bootstrap)
	if len(fs) > 0 {
		t.Fatal(envoy.FormatFindings(fs))
	}
	want := envoy.Addr{Host: "authz", Port: a.Port}
	found := false
	for _, cl := range b.GetStaticResources().GetClusters() {
		if cl.GetName() != contract.BrowserCluster {
			continue
		}
		found = true
		sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if got := (envoy.Addr{Host: sa.GetAddress(), Port: sa.GetPortValue()}); got != want {
			t.Errorf("cluster %s reaches %s, want authz's browser listener %s", contract.BrowserCluster, got, want)
		}
	}
	if !found {
		t.Errorf("envoy.yaml has no %s cluster: render it with --browser", contract.BrowserCluster)
	}
}

// TestSessionKeyScript runs session-key.sh (what init.sh runs in the k3s image)
// with this machine's sh and kubectl: the key it writes is one that kubegate's
// session manager loads, the file is 0600 in a 0700 directory, and a second run
// (a restart of the stack) keeps it, so nobody is logged out.
func TestSessionKeyScript(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Skip("no kubectl on PATH (the k3s image has it)")
	}
	dir := filepath.Join(t.TempDir(), "session")
	file := filepath.Join(dir, "key")
	run := func() {
		t.Helper()
		cmd := exec.Command("sh", "session-key.sh", file)
		// The image runs it as root and hands the file to uid 65532; here the
		// test's own user owns it.
		cmd.Env = append(os.Environ(), fmt.Sprintf("SESSION_KEY_OWNER=%d:%d", os.Getuid(), os.Getgid()))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("session-key.sh: %v\n%s", err, out)
		}
	}
	run()
	first, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := session.New(session.Config{KeyFile: file}); err != nil {
		t.Fatalf("the key session-key.sh wrote is refused: %v", err)
	}
	for p, want := range map[string]os.FileMode{file: 0o600, dir: 0o700 | os.ModeDir} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s has mode %v, want %v", p, st.Mode(), want)
		}
	}
	run()
	if again, _ := os.ReadFile(file); string(again) != string(first) {
		t.Error("a second run replaced the key: every browser would be logged out at each start")
	}
}
