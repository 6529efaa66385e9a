package envoy

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
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
	if !names[testAPICluster] || !names[AuthzCluster] || !names[ExtProcCluster] || names[XDSCluster] {
		t.Errorf("clusters %v: want the API server, authz and extproc and no xds (the token comes from a file)", names)
	}
	sds, err := MarshalYAML(m.TokenSDS)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckTokenSDS(sds, "/var/run/kubegate/token", testAgentID); err != nil {
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
		{"two resources", "resources:\n- {" + secretType + ", name: kubegate-agent-token-7}\n- {" + secretType + ", name: other}\n", "2 resources"},
		{"another secret name", "resources:\n- {" + secretType + ", name: other, generic_secret: {secret: {filename: " + dir + "/token}}}\n", `"other"`},
		{"token inline", "resources:\n- {" + secretType + ", name: kubegate-agent-token-7, generic_secret: {secret: {inline_string: eyJ}}}\n", "read from the file"},
		{"another file", "resources:\n- {" + secretType + ", name: kubegate-agent-token-7, generic_secret: {secret: {filename: /tmp/token}}}\n", "/tmp/token"},
		{"not a secret", "resources:\n- {\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: x}\n", "not an envoy.extensions.transport_sockets.tls.v3.Secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckTokenSDS([]byte(tt.file), dir, testAgentID)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// meshEnvoyFilter is the EnvoyFilter the chart renders for m, edited by edit
// (the patches as plain values, the form a person edits).
func meshEnvoyFilter(t *testing.T, m *Mesh, edit func(patches []any)) []byte {
	t.Helper()
	value := func(msg proto.Message) any {
		y, err := MarshalYAML(msg)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := yaml.Unmarshal(y, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	patch := func(applyTo string, v any) any {
		return map[string]any{"applyTo": applyTo, "match": map[string]any{"context": "GATEWAY"}, "patch": map[string]any{"operation": "ADD", "value": v}}
	}
	var patches []any
	for _, c := range m.Clusters {
		patches = append(patches, patch("CLUSTER", value(c)))
	}
	patches = append(patches, patch("LISTENER", value(m.Listener)))
	if edit != nil {
		edit(patches)
	}
	y, err := yaml.Marshal(map[string]any{
		"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
		"metadata": map[string]any{"name": "kubegate", "namespace": "kubegate"},
		"spec":     map[string]any{"configPatches": patches},
	})
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestValidateEnvoyFilter(t *testing.T) {
	m, err := MeshResources(meshOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	listenerAt := func(patches []any) map[string]any { return patches[len(patches)-1].(map[string]any) }
	tests := []struct {
		name, rule, path string
		edit             func([]any) []any
	}{
		{"as built", "", "", nil},
		{"ext_authz fails open", RuleExtAuthzFailClosed, "$.spec.configPatches[3].patch.value.filter_chains[0]", func(ps []any) []any {
			l := listenerAt(ps)["patch"].(map[string]any)["value"].(map[string]any)
			hcm := l["filter_chains"].([]any)[0].(map[string]any)["filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
			for _, f := range hcm["http_filters"].([]any) {
				if f.(map[string]any)["name"] == FilterExtAuthz {
					f.(map[string]any)["typed_config"].(map[string]any)["failure_mode_allow"] = true
				}
			}
			return ps
		}},
		{"a MERGE into Istio's own listeners", RuleMeshPatches, "$.spec.configPatches[3]", func(ps []any) []any {
			listenerAt(ps)["patch"].(map[string]any)["operation"] = "MERGE"
			return ps
		}},
		{"a patch of another proxy context", RuleMeshPatches, "$.spec.configPatches[0]", func(ps []any) []any {
			ps[0].(map[string]any)["match"] = map[string]any{"context": "SIDECAR_INBOUND"}
			return ps
		}},
		{"an HTTP_FILTER patch", RuleMeshPatches, "$.spec.configPatches[4].applyTo", func(ps []any) []any {
			return append(ps, map[string]any{"applyTo": "HTTP_FILTER", "match": map[string]any{"context": "GATEWAY"}, "patch": map[string]any{"operation": "ADD", "value": map[string]any{}}})
		}},
		{"no listener", RuleMeshPatches, "$.spec.configPatches", func(ps []any) []any { return ps[:len(ps)-1] }},
		{"the authz cluster removed", RuleClusterRefs, "$.spec.configPatches[2].patch.value", func(ps []any) []any { return append(ps[:1:1], ps[2:]...) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var y []byte
			if tt.edit == nil {
				y = meshEnvoyFilter(t, m, nil)
			} else {
				var edited []any
				y = meshEnvoyFilter(t, m, func(ps []any) { edited = tt.edit(ps) })
				y = reencode(t, y, edited)
			}
			if !IsEnvoyFilter(y) {
				t.Fatal("IsEnvoyFilter: false for an EnvoyFilter")
			}
			fs := ValidateEnvoyFilter(y)
			if tt.rule == "" {
				if len(fs) > 0 {
					t.Fatalf("findings for the built EnvoyFilter:\n%s", FormatFindings(fs))
				}
				return
			}
			for _, f := range fs {
				if f.Rule == tt.rule && strings.HasPrefix(f.Path, tt.path) {
					return
				}
			}
			t.Fatalf("no %s finding under %s; got:\n%s", tt.rule, tt.path, FormatFindings(fs))
		})
	}
	t.Run("a bootstrap is not an EnvoyFilter", func(t *testing.T) {
		y, err := MarshalYAML(m.Bootstrap())
		if err != nil {
			t.Fatal(err)
		}
		if IsEnvoyFilter(y) {
			t.Fatal("IsEnvoyFilter: true for a bootstrap")
		}
	})
}

// reencode replaces the configPatches of the EnvoyFilter y with patches.
func reencode(t *testing.T, y []byte, patches []any) []byte {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal(y, &obj); err != nil {
		t.Fatal(err)
	}
	obj["spec"].(map[string]any)["configPatches"] = patches
	out, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
