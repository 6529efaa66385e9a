package compose

import (
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/envoy"
)

// composeFile is the part of docker-compose.yaml this test reads.
type composeFile struct {
	Services map[string]struct {
		Command []string `json:"command"`
		Volumes []string `json:"volumes"`
		Ports   []string `json:"ports"`
	} `json:"services"`
}

// TestServicesArePrivate: in docker-compose.yaml, the SDS server (the agent
// token), authz (users' credentials) and extproc listen on unix sockets in a
// volume that only they, Envoy and the one-shot init (which owns it to uid 65532)
// mount, publish no port, and the Envoy bootstrap reaches them through those
// sockets — no container or k3s pod on the compose network can (issue 10 item 8).
func TestServicesArePrivate(t *testing.T) {
	data, err := os.ReadFile("../../docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	mountOf := func(service, volume string) string {
		for _, v := range c.Services[service].Volumes {
			if name, target, ok := strings.Cut(v, ":"); ok && name == volume {
				target, _, _ = strings.Cut(target, ":")
				return target
			}
		}
		return ""
	}
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
	var mounting []string
	for name := range c.Services {
		if mountOf(name, "sockets") != "" {
			mounting = append(mounting, name)
		}
	}
	slices.Sort(mounting)
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
