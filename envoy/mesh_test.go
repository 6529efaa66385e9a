package envoy

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

func meshOptions(t *testing.T) Options {
	t.Helper()
	o := testOptions(t)
	o.XDS = Addr{}
	o.Authz, o.ExtProc = mustAddr(t, "unix:///run/kubegate/authz.sock"), mustAddr(t, "unix:///run/kubegate/extproc.sock")
	o.TokenSDSDir = "/var/run/kubegate/token"
	o.APIServerCA = o.TokenSDSDir + "/" + CAFile
	return o
}

func TestMeshResourcesPassValidate(t *testing.T) {
	m, err := MeshResources(meshOptions(t))
	if err != nil {
		t.Fatalf("MeshResources: %v", err)
	}
	y, err := MarshalYAML(m.Bootstrap())
	if err != nil {
		t.Fatal(err)
	}
	// Through the whole of Validate (decoding, protoc-gen-validate, rules), as a
	// person checking the mesh's fragments would run it.
	if fs := Validate(y); len(fs) > 0 {
		t.Fatalf("the mesh resources fail Validate:\n%s", FormatFindings(fs))
	}
	names := map[string]bool{}
	for _, c := range m.Clusters {
		names[c.GetName()] = true
	}
	if !names[APIServerCluster] || !names[AuthzCluster] || !names[ExtProcCluster] || names[XDSCluster] {
		t.Errorf("clusters %v: want the API server, authz and extproc and no xds (the token comes from a file)", names)
	}
	sds, err := MarshalYAML(m.TokenSDS)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckTokenSDS(sds, "/var/run/kubegate/token"); err != nil {
		t.Errorf("CheckTokenSDS of MeshResources' own TokenSDS: %v", err)
	}
	if strings.Contains(string(y), XDSCluster) {
		t.Errorf("the mesh listener still references %s", XDSCluster)
	}
}

func TestMeshResourcesRefuse(t *testing.T) {
	tests := []struct {
		name, want string
		edit       func(*testing.T, *Options)
	}{
		{"no token directory", "projected volume", func(_ *testing.T, o *Options) { o.TokenSDSDir = "" }},
		{"relative token directory", "absolute path", func(_ *testing.T, o *Options) { o.TokenSDSDir = "var/run/token" }},
		{"token directory and xds", "no --xds", func(t *testing.T, o *Options) { o.XDS = mustAddr(t, "unix:///run/kubegate/xds.sock") }},
		{"authz over the network", "--authz", func(t *testing.T, o *Options) {
			o.AllowNonLoopback = false
			o.Authz = mustAddr(t, "authz.kubegate.svc:9001")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := meshOptions(t)
			tt.edit(t, &o)
			_, err := MeshResources(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("MeshResources: got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	t.Run("bootstrap with a token directory", func(t *testing.T) {
		o := testOptions(t)
		o.TokenSDSDir = "/var/run/kubegate/token"
		if _, err := Bootstrap(o); err == nil || !strings.Contains(err.Error(), "kubegate xds") {
			t.Fatalf("Bootstrap: got %v, want a refusal naming kubegate xds", err)
		}
	})
}

func TestFileSDSConfigSourceWatchesTheDirectory(t *testing.T) {
	src := FileSDSConfigSource("/var/run/kubegate/token").GetPathConfigSource()
	if src.GetPath() != "/var/run/kubegate/token/"+TokenSDSFile || src.GetWatchedDirectory().GetPath() != "/var/run/kubegate/token" {
		t.Fatalf("path %q, watched %q", src.GetPath(), src.GetWatchedDirectory().GetPath())
	}
	if err := src.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	if FileSDSConfigSource("/x").GetResourceApiVersion() != corev3.ApiVersion_V3 {
		t.Error("resource_api_version must be V3")
	}
}

func TestCheckTokenSDSRefuses(t *testing.T) {
	const dir = "/var/run/kubegate/token"
	const secretType = `"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret`
	tests := []struct{ name, file, want string }{
		{"not yaml", "resources: [", "token-sds.yaml"},
		{"unknown field", "resources: []\nnonsense: 1\n", "not an Envoy DiscoveryResponse"},
		{"no resource", "resources: []\n", "0 resources"},
		{"two resources", "resources:\n- {" + secretType + ", name: kubegate-agent-token}\n- {" + secretType + ", name: other}\n", "2 resources"},
		{"another secret name", "resources:\n- {" + secretType + ", name: other, generic_secret: {secret: {filename: " + dir + "/token}}}\n", `"other"`},
		{"token inline", "resources:\n- {" + secretType + ", name: kubegate-agent-token, generic_secret: {secret: {inline_string: eyJ}}}\n", "read from the file"},
		{"another file", "resources:\n- {" + secretType + ", name: kubegate-agent-token, generic_secret: {secret: {filename: /tmp/token}}}\n", "/tmp/token"},
		{"not a secret", "resources:\n- {\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: x}\n", "not an envoy.extensions.transport_sockets.tls.v3.Secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTokenSDS([]byte(tt.file), dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}
