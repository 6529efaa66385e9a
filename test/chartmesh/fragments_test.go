package chartmesh

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"kubegate.dev/kubegate/envoy"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/helm/kubegate/files/mesh from envoy.MeshResources")

// The paths the chart gives Istio's proxy (templates/mesh/_mesh.tpl, which
// TestIstioPodFragmentMatchesTheFragments holds to these).
const (
	socketDir = "/run/kubegate"
	tlsDir    = "/etc/kubegate/tls"
	tokenDir  = "/var/run/kubegate/token"
	apiServer = "https://kubernetes.default.svc:443"
)

// meshOptions are the options the chart's fragments are built with: kubegate's
// defaults, the chart's paths, and the listener port.
// placeholderAgentID is the agent id the chart's files/mesh are built for; the
// chart's kubegate.mesh.istioFragments and istio-token-sds.yaml put its
// agent.id in its place (the cluster kubegate_apiserver_<id> and the secret
// kubegate-agent-token-<id>).
const placeholderAgentID = 4242424242

// chartAgentID is the agent.id of the value sets the tests render.
const chartAgentID = 1

func meshOptions(t testing.TB, port uint32, agentID int64) envoy.Options {
	t.Helper()
	o := envoy.DefaultOptions()
	o.AgentID = agentID
	o.CheckFiles = false // paths inside the pod
	o.Admin = ""         // the mesh proxy has its own admin interface
	o.Listen = envoy.Addr{Host: "0.0.0.0", Port: port}
	o.TLSCertFile, o.TLSKeyFile = tlsDir+"/tls.crt", tlsDir+"/tls.key"
	o.APIServer, o.APIServerCA = apiServer, tokenDir+"/"+envoy.CAFile
	var err error
	if o.Authz, err = envoy.ParseAddr("unix://" + socketDir + "/authz.sock"); err != nil {
		t.Fatal(err)
	}
	if o.ExtProc, err = envoy.ParseAddr("unix://" + socketDir + "/extproc.sock"); err != nil {
		t.Fatal(err)
	}
	o.TokenSDSDir = tokenDir
	return o
}

// asJSONValue is m as Envoy's JSON (snake_case, the explicit defaults written),
// decoded into plain Go values: what the chart holds and what a rendered patch
// value decodes to.
func asJSONValue(t testing.TB, m proto.Message) any {
	t.Helper()
	y, err := envoy.MarshalYAML(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(y, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// fragments is files/mesh/istio.json: what istio-envoyfilter.yaml adds.
type fragments struct {
	Listener any   `json:"listener"`
	Clusters []any `json:"clusters"`
}

func builtFragments(t testing.TB, port uint32, agentID int64) (fragments, []byte) {
	t.Helper()
	m, err := envoy.MeshResources(meshOptions(t, port, agentID))
	if err != nil {
		t.Fatalf("envoy.MeshResources: %v", err)
	}
	f := fragments{Listener: asJSONValue(t, m.Listener)}
	for _, c := range m.Clusters {
		f.Clusters = append(f.Clusters, asJSONValue(t, c))
	}
	sds, err := envoy.MarshalYAML(m.TokenSDS)
	if err != nil {
		t.Fatal(err)
	}
	return f, sds
}

// TestMeshFilesAreTheBuildersOutput keeps the chart's Envoy fragments equal to
// what kubegate's builders produce, so no Envoy configuration is written by hand
// in the chart. Run with -update after changing the builders.
func TestMeshFilesAreTheBuildersOutput(t *testing.T) {
	f, sds := builtFragments(t, 8443, placeholderAgentID)
	js, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	js = append(js, '\n')
	dir := filepath.Join(chartDir(t), "files", "mesh")
	want := map[string][]byte{"istio.json": js, "token-sds.yaml": sds}
	for name, data := range want {
		p := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (generate it: go test ./test/chartmesh -run TestMeshFilesAreTheBuildersOutput -update)", err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s differs from envoy.MeshResources output; regenerate with: go test ./test/chartmesh -run TestMeshFilesAreTheBuildersOutput -update", p)
		}
	}
	if err := envoy.CheckTokenSDS(sds, tokenDir, placeholderAgentID); err != nil {
		t.Errorf("the token SDS file: %v", err)
	}
}
