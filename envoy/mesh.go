package envoy

import (
	"errors"
	"fmt"
	"path"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// A service mesh's Envoy (Istio's gateway proxy, configured by istiod over xDS)
// carries kubegate's chain when it is handed kubegate's own listener and clusters:
// Mesh is that set, built by the same builders as the bootstrap, so every rule of
// Validate holds for it (Mesh.Bootstrap). Only the agent token travels
// differently: an SDS config source over gRPC must name a cluster that is
// "statically defined" in the bootstrap and not "added via api"
// (Config::Utility::checkApiConfigSourceSubscriptionBackingCluster, used by the
// SDS subscription factory in Envoy's source/common/config/), and a mesh delivers
// kubegate's clusters over CDS. So the token is read with file-based SDS from a
// projected volume (FileSDSConfigSource), and kubegate xds does not run.

// Names of the files in Options.TokenSDSDir, one projected volume whose sources
// are the ServiceAccount token (TokenFile), the cluster CA (CAFile) and the SDS
// response (TokenSDSFile, from a ConfigMap).
const (
	TokenSDSFile = "token-sds.yaml"
	TokenFile    = "token"
	CAFile       = "ca.crt"
)

// FileSDSConfigSource reads the agent token through file-based SDS: Envoy loads
// TokenSDSFile (a DiscoveryResponse, TokenSDS) and reloads it when an entry of dir
// is moved to — "if trying to load an xDS resource using a Kubernetes ConfigMap,
// the following configuration might be used: path: /config_map/xds/current/
// lds.yaml, watched_directory: /config_map/xds" (config_source.proto,
// PathConfigSource.watched_directory). The kubelet updates a projected volume by
// renaming its ..data symlink, which is such a move; the reload reads the token
// file again.
func FileSDSConfigSource(dir string) *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{PathConfigSource: &corev3.PathConfigSource{
			Path:             path.Join(dir, TokenSDSFile),
			WatchedDirectory: &corev3.WatchedDirectory{Path: dir},
		}},
	}
}

// TokenSDS is the content of TokenSDSFile: one generic secret named
// TokenSecretFor(agentID) whose value is the token file, read by Envoy itself (the
// DataSource's filename), so the ConfigMap holding this response never holds the
// token.
func TokenSDS(dir string, agentID int64) (*discoveryv3.DiscoveryResponse, error) {
	secret, err := anypb.New(&tlsv3.Secret{
		Name: TokenSecretFor(agentID),
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path.Join(dir, TokenFile)}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("packing the token secret: %w", err)
	}
	return &discoveryv3.DiscoveryResponse{
		TypeUrl:   secret.GetTypeUrl(),
		Resources: []*anypb.Any{secret},
	}, nil
}

// Mesh is kubegate's part of a mesh Envoy's configuration.
type Mesh struct {
	// Listener is kubegate's TLS listener with the whole filter chain.
	Listener *listenerv3.Listener
	// Clusters are the API server, kubegate authz and kubegate extproc.
	Clusters []*clusterv3.Cluster
	// TokenSDS is the content of TokenSDSFile.
	TokenSDS *discoveryv3.DiscoveryResponse
}

// MeshResources builds Mesh from o, whose TokenSDSDir must be set and XDS unset,
// and checks it with kubegate's rules (Mesh.Bootstrap): a set that Validate would
// refuse is a bug.
func MeshResources(o Options) (*Mesh, error) {
	if o.TokenSDSDir == "" {
		return nil, errors.New("a service mesh's Envoy reads the agent token from a projected volume: give the token SDS directory")
	}
	if len(o.Agents) > 1 {
		return nil, fmt.Errorf("a service mesh's Envoy serves one agent, got %d: its agent token comes from one projected ServiceAccount token (TokenSDSFile names one file), and the chart's mesh mode runs one agent per release; serve several agents with kubegate's own Envoy (mesh.mode=none)", len(o.Agents))
	}
	if o.Browser != (Addr{}) {
		return nil, errors.New("the browser routes (--browser) are not rendered for a service mesh's Envoy yet; serve the Dashboard with kubegate's own Envoy (mesh.mode=none)")
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	m := &Mesh{}
	var err error
	if m.Listener, err = Listener(o); err != nil {
		return nil, err
	}
	api, err := apiServerClusters(o)
	if err != nil {
		return nil, err
	}
	m.Clusters = append(m.Clusters, api...)
	for _, c := range []struct {
		name string
		addr Addr
	}{{AuthzCluster, o.Authz}, {ExtProcCluster, o.ExtProc}} {
		gc, err := GRPCCluster(c.name, c.addr, o.ConnectTimeout, o.MaxConnections)
		if err != nil {
			return nil, err
		}
		m.Clusters = append(m.Clusters, gc)
	}
	if m.TokenSDS, err = TokenSDS(o.TokenSDSDir, o.AgentList()[0].ID); err != nil {
		return nil, err
	}
	if findings := CheckBootstrap(m.Bootstrap()); len(findings) > 0 {
		return nil, fmt.Errorf("kubegate built mesh resources that fail its own validation (a bug):\n%s", FormatFindings(findings))
	}
	return m, nil
}

// Bootstrap puts the listener and clusters into a bootstrap's static resources,
// the form Validate checks. A mesh's Envoy has more (its own bootstrap, admin,
// stats), but nothing of it is in kubegate's listener's path.
func (m *Mesh) Bootstrap() *bootstrapv3.Bootstrap {
	return &bootstrapv3.Bootstrap{StaticResources: &bootstrapv3.Bootstrap_StaticResources{
		Listeners: []*listenerv3.Listener{m.Listener},
		Clusters:  m.Clusters,
	}}
}

// CheckTokenSDS reads a TokenSDSFile as Envoy's filesystem subscription does (one
// DiscoveryResponse, JSON or YAML; unknown fields refused) and checks that it is
// the one secret credential_injector asks for, read from the token file in dir.
func CheckTokenSDS(data []byte, dir string, agentID int64) error {
	secretName := TokenSecretFor(agentID)
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("%s: %v", TokenSDSFile, err)
	}
	var r discoveryv3.DiscoveryResponse
	if err := protojson.Unmarshal(j, &r); err != nil {
		return fmt.Errorf("%s is not an Envoy DiscoveryResponse: %v", TokenSDSFile, err)
	}
	if len(r.GetResources()) != 1 {
		return fmt.Errorf("%s has %d resources; want exactly the secret %q", TokenSDSFile, len(r.GetResources()), secretName)
	}
	var s tlsv3.Secret
	if err := r.GetResources()[0].UnmarshalTo(&s); err != nil {
		return fmt.Errorf("%s: the resource is not an envoy.extensions.transport_sockets.tls.v3.Secret: %v", TokenSDSFile, err)
	}
	if err := s.ValidateAll(); err != nil {
		return fmt.Errorf("%s: %v", TokenSDSFile, err)
	}
	want := path.Join(dir, TokenFile)
	if s.GetName() != secretName || s.GetGenericSecret().GetSecret().GetFilename() != want {
		return fmt.Errorf("%s: want the generic secret %q read from the file %s, got %q from %q", TokenSDSFile, secretName, want, s.GetName(), s.GetGenericSecret().GetSecret().GetFilename())
	}
	return nil
}
