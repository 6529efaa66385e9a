package chartmesh

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"kubegate.dev/kubegate/envoy"
	"sigs.k8s.io/yaml"
)

// kubeVersion is the test API server's (test/tools/build.sh): helm template
// otherwise checks Chart.yaml's kubeVersion against its built-in default.
const kubeVersion = "1.37.2"

// The mesh value sets that render.
var istioValueSets = []struct {
	name, values string
	port         uint32
}{
	{"istio, defaults", "mesh:\n  mode: istio\n", 8443},
	{"istio, another listener port and a revision", "mesh:\n  mode: istio\n  istio:\n    revision: canary\nlistener:\n  port: 9443\n", 9443},
}

func render(t testing.TB, values string) []map[string]any {
	t.Helper()
	objs, err := helmTemplate(t, chartDir(t), values)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// patches reads the rendered EnvoyFilter's patches: the listener and the clusters
// it adds to the gateway proxy. Any other patch is an error: only ADDs of
// kubegate's own resources keep Istio's configuration out of kubegate's path.
func patches(t testing.TB, ef map[string]any) (listener any, clusters []any) {
	t.Helper()
	spec, _ := ef["spec"].(map[string]any)
	ps, _ := spec["configPatches"].([]any)
	for i, p := range ps {
		pm := p.(map[string]any)
		patch := pm["patch"].(map[string]any)
		match, _ := pm["match"].(map[string]any)
		if patch["operation"] != "ADD" || match["context"] != "GATEWAY" || len(match) != 1 {
			t.Fatalf("configPatches[%d]: %v %v on %v; want only ADD with match.context GATEWAY", i, patch["operation"], match, pm["applyTo"])
		}
		switch pm["applyTo"] {
		case "LISTENER":
			if listener != nil {
				t.Fatalf("configPatches[%d]: a second listener", i)
			}
			listener = patch["value"]
		case "CLUSTER":
			clusters = append(clusters, patch["value"])
		default:
			t.Fatalf("configPatches[%d] applies to %v", i, pm["applyTo"])
		}
	}
	if listener == nil {
		t.Fatal("the EnvoyFilter adds no listener")
	}
	return listener, clusters
}

// asBootstrap puts the patches where Validate reads them.
func asBootstrap(t testing.TB, listener any, clusters []any) []byte {
	t.Helper()
	j, err := json.Marshal(map[string]any{"static_resources": map[string]any{
		"listeners": []any{listener},
		"clusters":  clusters,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func singleEnvoyFilter(t testing.TB, objs []map[string]any) map[string]any {
	t.Helper()
	efs := find(objs, "EnvoyFilter")
	if len(efs) != 1 {
		t.Fatalf("rendered %d EnvoyFilters, want 1", len(efs))
	}
	return efs[0]
}

// TestIstioModeRendersValidFragments renders each istio value set with the real
// helm CLI and checks what istiod would hand Istio's proxy: the patches pass every
// rule of `kubegate envoy validate` and are exactly kubegate's builders' output for
// that port; the ConfigMap's SDS response names the token file.
func TestIstioModeRendersValidFragments(t *testing.T) {
	for _, vs := range istioValueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := render(t, vs.values)
			ef := singleEnvoyFilter(t, objs)
			listener, clusters := patches(t, ef)
			if fs := envoy.Validate(asBootstrap(t, listener, clusters)); len(fs) > 0 {
				t.Fatalf("the rendered EnvoyFilter fails kubegate's validation:\n%s", envoy.FormatFindings(fs))
			}
			// What an operator runs on the object (kubegate envoy validate).
			efYAML, err := yaml.Marshal(ef)
			if err != nil {
				t.Fatal(err)
			}
			if fs := envoy.ValidateEnvoyFilter(efYAML); len(fs) > 0 {
				t.Fatalf("envoy.ValidateEnvoyFilter of the rendered EnvoyFilter:\n%s", envoy.FormatFindings(fs))
			}
			want, wantSDS := builtFragments(t, vs.port, chartAgentID)
			if !reflect.DeepEqual(listener, want.Listener) {
				t.Errorf("the rendered listener is not envoy.MeshResources' listener for port %d", vs.port)
			}
			if !reflect.DeepEqual(clusters, want.Clusters) {
				t.Errorf("the rendered clusters are not envoy.MeshResources' clusters")
			}
			cm := named(objs, "ConfigMap", "kg-kubegate-mesh-token-sds")
			if cm == nil {
				t.Fatal("the token SDS ConfigMap did not render")
			}
			sds, _ := cm["data"].(map[string]any)["token-sds.yaml"].(string)
			if err := envoy.CheckTokenSDS([]byte(sds), tokenDir, chartAgentID); err != nil {
				t.Errorf("the rendered ConfigMap: %v", err)
			}
			if strings.TrimSpace(sds) != strings.TrimSpace(string(wantSDS)) {
				t.Errorf("the rendered token SDS is not envoy.TokenSDS output:\n%s", sds)
			}
		})
	}
}

// TestMeshModeNoneRendersNoMeshObjects: the default renders nothing of the mesh.
func TestMeshModeNoneRendersNoMeshObjects(t *testing.T) {
	objs, err := helmTemplate(t, chartDir(t), "mesh:\n  mode: none\n")
	if err != nil && !strings.Contains(err.Error(), "rendered nothing") {
		t.Fatal(err)
	}
	for _, o := range objs {
		if md, _ := o["metadata"].(map[string]any); md != nil {
			if l, _ := md["labels"].(map[string]any); l["app.kubernetes.io/component"] == "mesh" || o["kind"] == "EnvoyFilter" {
				t.Errorf("mesh.mode none rendered %v %v", o["kind"], md["name"])
			}
		}
	}
}

// httpFilter returns the typed_config of the listener's HTTP filter name.
func httpFilter(t testing.TB, listener any, name string) map[string]any {
	t.Helper()
	chains := listener.(map[string]any)["filter_chains"].([]any)
	hcm := chains[0].(map[string]any)["filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
	for _, f := range hcm["http_filters"].([]any) {
		if f.(map[string]any)["name"] == name {
			return f.(map[string]any)["typed_config"].(map[string]any)
		}
	}
	t.Fatalf("no HTTP filter %s", name)
	return nil
}

// upstreamInjector is the typed_config of the credential_injector in the API
// server cluster's upstream filters (the first cluster of the fragments).
func upstreamInjector(t *testing.T, clusters []any) map[string]any {
	t.Helper()
	opts := clusters[0].(map[string]any)["typed_extension_protocol_options"].(map[string]any)[envoy.UpstreamHTTPOptionsKey].(map[string]any)
	for _, f := range opts["http_filters"].([]any) {
		if m := f.(map[string]any); m["name"] == envoy.FilterCredentialInjector {
			return m["typed_config"].(map[string]any)
		}
	}
	t.Fatalf("no upstream filter %s", envoy.FilterCredentialInjector)
	return nil
}

// TestTamperedFragmentsAreRefused shows the check above bites: each edit an
// operator (or a merge of another EnvoyFilter) could make to the rendered patches
// that would fail open or break exec is reported under its rule.
func TestTamperedFragmentsAreRefused(t *testing.T) {
	tests := []struct {
		name, rule string
		edit       func(t *testing.T, listener any, clusters []any) []any
	}{
		{"ext_authz fails open", envoy.RuleExtAuthzFailClosed, func(t *testing.T, l any, cs []any) []any {
			httpFilter(t, l, envoy.FilterExtAuthz)["failure_mode_allow"] = true
			return cs
		}},
		{"ext_authz without raw headers", envoy.RuleExtAuthzRawHeaders, func(t *testing.T, l any, cs []any) []any {
			delete(httpFilter(t, l, envoy.FilterExtAuthz), "encode_raw_headers")
			return cs
		}},
		{"ext_proc fails open", envoy.RuleExtProcFailClosed, func(t *testing.T, l any, cs []any) []any {
			httpFilter(t, l, envoy.FilterExtProc)["failure_mode_allow"] = true
			return cs
		}},
		{"ext_proc buffers the body", envoy.RuleExtProcBodyMode, func(t *testing.T, l any, cs []any) []any {
			httpFilter(t, l, envoy.FilterExtProc)["processing_mode"].(map[string]any)["request_body_mode"] = "BUFFERED"
			return cs
		}},
		{"ext_proc without the ext_authz metadata", envoy.RuleExtProcMetadata, func(t *testing.T, l any, cs []any) []any {
			delete(httpFilter(t, l, envoy.FilterExtProc), "metadata_options")
			return cs
		}},
		{"token kept from the client", envoy.RuleCredentialOverwrite, func(t *testing.T, _ any, cs []any) []any {
			delete(upstreamInjector(t, cs), "overwrite")
			return cs
		}},
		{"token file not watched", envoy.RuleCredentialRotation, func(t *testing.T, _ any, cs []any) []any {
			cred := upstreamInjector(t, cs)["credential"].(map[string]any)["typed_config"].(map[string]any)["credential"].(map[string]any)
			delete(cred["sds_config"].(map[string]any)["path_config_source"].(map[string]any), "watched_directory")
			return cs
		}},
		{"API server over HTTP/2", envoy.RuleUpstreamHTTP11, func(t *testing.T, _ any, cs []any) []any {
			opts := cs[0].(map[string]any)["typed_extension_protocol_options"].(map[string]any)[envoy.UpstreamHTTPOptionsKey].(map[string]any)
			opts["explicit_http_config"] = map[string]any{"http2_protocol_options": map[string]any{}}
			return cs
		}},
		{"authz cluster missing", envoy.RuleClusterRefs, func(t *testing.T, _ any, cs []any) []any {
			var out []any
			for _, c := range cs {
				if c.(map[string]any)["name"] != envoy.AuthzCluster {
					out = append(out, c)
				}
			}
			return out
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listener, clusters := patches(t, singleEnvoyFilter(t, render(t, istioValueSets[0].values)))
			clusters = tt.edit(t, listener, clusters)
			fs := envoy.Validate(asBootstrap(t, listener, clusters))
			for _, f := range fs {
				if f.Rule == tt.rule {
					return
				}
			}
			t.Fatalf("no %s finding; got:\n%s", tt.rule, envoy.FormatFindings(fs))
		})
	}
}

// TestRefusedMeshModes: a mode that cannot keep the chain fail-closed, an unknown
// mode, and istio with settings its pre-built listener cannot honour all fail
// `helm template` with a message that names the value and the way out.
func TestRefusedMeshModes(t *testing.T) {
	tests := []struct {
		name, values string
		want         []string
	}{
		{"istio CUSTOM authorization", "mesh:\n  mode: istio-custom\n",
			[]string{"mesh.mode=istio-custom is refused", "encode_raw_headers", "filter_enabled_metadata", "no ext_proc provider", "Use mesh.mode=istio"}},
		{"Envoy Gateway policies", "mesh:\n  mode: envoy-gateway\n",
			[]string{"mesh.mode=envoy-gateway is refused", "mutation_rules", "enabled per route", "static Secret", "Use mesh.mode=none"}},
		{"unknown mode", "mesh:\n  mode: linkerd\n", []string{`mesh.mode="linkerd" is not a mode`, "none", "istio"}},
		// Only the value's name: the core templates may refuse it first, in their words.
		{"istio with a TCP authz", "mesh:\n  mode: istio\nsockets:\n  authz: 127.0.0.1:9001\n", []string{"sockets.authz"}},
		{"istio with another API server", "mesh:\n  mode: istio\napiServer:\n  url: https://10.0.0.1:6443\n", []string{`apiServer.url="https://10.0.0.1:6443"`, "mesh.mode=none"}},
		{"istio with render flags", "mesh:\n  mode: istio\nenvoy:\n  renderArgs: [--client-rate-limit=5]\n", []string{"envoy.renderArgs", "mesh.mode=none"}},
		{"istio without istiod's namespace", "mesh:\n  mode: istio\n  istio:\n    istiodNamespace: \"\"\n", []string{"mesh.istio.istiodNamespace is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := helmTemplate(t, chartDir(t), tt.values)
			if err == nil {
				t.Fatalf("helm template rendered %d objects; want a refusal", len(objs))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the refusal does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestHelmLintMeshValueSets: `helm lint` passes for each mesh value set that
// renders. (It cannot check the refused modes: in lint mode Helm's engine reports
// a template's `fail` as an [INFO] line and lints on, engine.go; TestRefusedMeshModes
// checks them with `helm template`, which is what `helm install` runs.)
func TestHelmLintMeshValueSets(t *testing.T) {
	lint := func(t *testing.T, values string) (string, error) {
		dir, err := os.MkdirTemp("", "kubegate-values-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		base, vf := filepath.Join(dir, "base.yaml"), filepath.Join(dir, "values.yaml")
		if err := os.WriteFile(base, baseValues(t), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vf, []byte(values), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(helmBin(t), "lint", chartDir(t), "--kube-version", kubeVersion, "--values", base, "--values", vf).CombinedOutput()
		return string(out), err
	}
	for _, vs := range istioValueSets {
		t.Run(vs.name, func(t *testing.T) {
			if out, err := lint(t, vs.values); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
		})
	}
}
