package envoy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamconnsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Agent is one agent the gateway serves: its API server gets the cluster
// APIServerCluster(ID) with the token secret TokenSecretFor(ID).
type Agent struct {
	ID          int64
	APIServer   string // https://host:port of the agent's Kubernetes API server
	APIServerCA string // CA bundle (PEM) that signed that API server's certificate
}

// Options are the inputs of Render, one per `kubegate envoy render` flag.
type Options struct {
	Listen      Addr   // downstream listener, host:port or a unix socket
	TLSCertFile string // listener certificate chain (PEM), read by Envoy
	TLSKeyFile  string // listener private key (PEM), read by Envoy
	// Agents are the agents served (--gateway-config). When empty, AgentID,
	// APIServer and APIServerCA are the one agent (the single-agent flags).
	Agents      []Agent
	AgentID     int64  // the one agent's id (--agent-id)
	APIServer   string // https://host:port of the Kubernetes API server
	APIServerCA string // CA bundle (PEM) that signed the API server's certificate
	Authz       Addr   // kubegate authz
	ExtProc     Addr   // kubegate extproc
	XDS         Addr   // kubegate xds (SDS for the agent token)
	// Browser is kubegate authz's browser listener (--browser): when set, the
	// browser routes and cluster are rendered (browser.go); zero renders none.
	Browser Addr
	// TokenSDSDir, set only by the service-mesh modes (MeshResources), makes the
	// credential injector read the agent token through a file-based SDS
	// subscription in this directory (TokenSDSFile) instead of gRPC SDS from XDS,
	// which is then not used: an SDS config source over gRPC needs a cluster from
	// the bootstrap, and a mesh's Envoy gets kubegate's clusters over CDS.
	TokenSDSDir  string
	Admin        string // Envoy admin address; "" disables the admin interface
	NodeID       string
	NodeCluster  string
	AuthzTimeout time.Duration // ext_authz gRPC call deadline
	// ExtProcTimeout is ext_proc's message_timeout.
	ExtProcTimeout      time.Duration
	ConnectTimeout      time.Duration
	StreamIdleTimeout   time.Duration
	MaxHeadersCount     uint32
	MaxRequestHeadersKB uint32
	MaxConnections      uint32
	// Against slow and greedy clients (hardening.go).
	RequestHeadersTimeout       time.Duration // HCM request_headers_timeout
	TLSHandshakeTimeout         time.Duration // filter chain transport_socket_connect_timeout
	MaxConcurrentStreams        uint32        // HTTP/2 streams per connection
	InitialStreamWindowSize     uint32        // HTTP/2 stream window, bytes
	InitialConnectionWindowSize uint32        // HTTP/2 connection window, bytes
	ConnectionBufferBytes       uint32        // listener per_connection_buffer_limit_bytes
	ClientRateLimit             uint32        // requests per second per client address
	ClientRateBurst             uint32        // bucket size per client address
	// AllowNonLoopback lets --authz, --extproc and --xds name an address that is
	// not loopback or a unix socket (the services see credentials and serve the
	// agent token; see checkPrivate).
	AllowNonLoopback bool
	// CheckFiles makes Render read the certificate, key and CA files and fail if
	// they are missing or malformed. Off when rendering for another machine
	// (docker-compose renders paths that exist only inside the Envoy container).
	CheckFiles bool
}

// DefaultOptions has every optional field at its default.
func DefaultOptions() Options {
	return Options{
		Admin:               DefaultAdmin,
		NodeID:              DefaultNodeID,
		NodeCluster:         DefaultNodeCluster,
		AuthzTimeout:        DefaultAuthzTimeout,
		ExtProcTimeout:      DefaultExtProcTimeout,
		ConnectTimeout:      DefaultConnectTimeout,
		StreamIdleTimeout:   DefaultStreamIdleTimeout,
		MaxHeadersCount:     DefaultMaxHeadersCount,
		MaxRequestHeadersKB: DefaultMaxRequestHeadersKB,
		MaxConnections:      DefaultMaxConnections,
		CheckFiles:          true,

		RequestHeadersTimeout:       DefaultRequestHeadersTimeout,
		TLSHandshakeTimeout:         DefaultTLSHandshakeTimeout,
		MaxConcurrentStreams:        DefaultMaxConcurrentStreams,
		InitialStreamWindowSize:     DefaultInitialStreamWindowSize,
		InitialConnectionWindowSize: DefaultInitialConnectionWindowSize,
		ConnectionBufferBytes:       DefaultConnectionBufferBytes,
		ClientRateLimit:             DefaultClientRateLimit,
		ClientRateBurst:             DefaultClientRateBurst,
	}
}

// apiServerAddr parses --apiserver: https only (the agent token must never travel
// in clear), host and port, no path (the route rewrites to "/").
func apiServerAddr(raw string) (Addr, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return Addr{}, fmt.Errorf("--apiserver %q is not a URL like https://kubernetes.default.svc:443", raw)
	}
	if u.Scheme != "https" {
		return Addr{}, fmt.Errorf("--apiserver %q: the scheme must be https (the agent token must not travel in clear)", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return Addr{}, fmt.Errorf("--apiserver %q: give only scheme, host and port; a path, query or user is not supported", raw)
	}
	host := u.Host
	if u.Port() == "" {
		host += ":443"
	}
	return ParseAddr(strings.TrimPrefix(host, "//"))
}

// AgentList is the agents the options describe: Agents, or the one agent of the
// single-agent fields.
func (o Options) AgentList() []Agent {
	if len(o.Agents) > 0 {
		return o.Agents
	}
	return []Agent{{ID: o.AgentID, APIServer: o.APIServer, APIServerCA: o.APIServerCA}}
}

// checkAgents: either Agents or the single-agent fields, each agent with a
// positive, distinct id, an https server and a CA.
func (o Options) checkAgents() []error {
	var errs []error
	if len(o.Agents) > 0 {
		if o.AgentID != 0 || o.APIServer != "" || o.APIServerCA != "" {
			errs = append(errs, errors.New("give the agents either in the gateway configuration (--gateway-config) or with --agent-id, --apiserver and --apiserver-ca, not both"))
		}
		seen := map[int64]bool{}
		for i, a := range o.Agents {
			where := fmt.Sprintf("agents[%d]", i)
			if a.ID <= 0 {
				errs = append(errs, fmt.Errorf("%s: the agent id must be a positive number (GitLab's agent id), got %d", where, a.ID))
			} else if seen[a.ID] {
				errs = append(errs, fmt.Errorf("%s: agent id %d appears twice; each agent gets its own cluster %s", where, a.ID, APIServerCluster(a.ID)))
			}
			seen[a.ID] = true
			if a.APIServer == "" {
				errs = append(errs, fmt.Errorf("%s (agent %d): upstream.server is required", where, a.ID))
			} else if _, err := apiServerAddr(a.APIServer); err != nil {
				errs = append(errs, fmt.Errorf("%s (agent %d): %w", where, a.ID, err))
			}
			if a.APIServerCA == "" {
				errs = append(errs, fmt.Errorf("%s (agent %d): upstream.ca_file is required (the CA that signed the API server's certificate)", where, a.ID))
			}
		}
		return errs
	}
	if o.AgentID <= 0 {
		errs = append(errs, fmt.Errorf("--agent-id is required (a positive number, the GitLab agent id kubegate authz serves): it names the API server cluster %s, got %d", APIServerCluster(o.AgentID), o.AgentID))
	}
	if o.APIServer == "" {
		errs = append(errs, errors.New("--apiserver is required"))
	} else if _, err := apiServerAddr(o.APIServer); err != nil {
		errs = append(errs, err)
	}
	if o.APIServerCA == "" {
		errs = append(errs, errors.New("--apiserver-ca is required"))
	}
	return errs
}

// Check reports every problem with the options at once.
func (o Options) Check() error {
	var errs []error
	req := func(v, flag string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", flag))
		}
	}
	reqAddr := func(a Addr, flag string) {
		if a == (Addr{}) {
			errs = append(errs, fmt.Errorf("%s is required", flag))
		}
	}
	reqAddr(o.Listen, "--listen")
	req(o.TLSCertFile, "--tls-cert")
	req(o.TLSKeyFile, "--tls-key")
	errs = append(errs, o.checkAgents()...)
	reqAddr(o.Authz, "--authz")
	reqAddr(o.ExtProc, "--extproc")
	if o.TokenSDSDir == "" {
		reqAddr(o.XDS, "--xds")
	} else if !strings.HasPrefix(o.TokenSDSDir, "/") || o.XDS != (Addr{}) {
		errs = append(errs, fmt.Errorf("token SDS directory %q: give an absolute path and no --xds (the token comes from the file, not from kubegate xds)", o.TokenSDSDir))
	}
	req(o.NodeID, "--node-id")
	if o.Admin != "" {
		a, err := ParseAddr(o.Admin)
		if err != nil {
			errs = append(errs, fmt.Errorf("--admin: %w", err))
		} else if !isLocal(a) {
			errs = append(errs, fmt.Errorf("--admin %s: the admin interface can change and stop Envoy; bind it to loopback or a unix socket", o.Admin))
		}
	}
	positive := func(d time.Duration, flag string) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %v", flag, d))
		}
	}
	positive(o.AuthzTimeout, "--authz-timeout")
	positive(o.ExtProcTimeout, "--extproc-timeout")
	positive(o.ConnectTimeout, "--connect-timeout")
	if o.StreamIdleTimeout < MinStreamIdleTimeout {
		errs = append(errs, fmt.Errorf("--stream-idle-timeout %v is shorter than %v: idle watches and `kubectl logs -f` would be cut", o.StreamIdleTimeout, MinStreamIdleTimeout))
	}
	if o.MaxHeadersCount == 0 {
		errs = append(errs, errors.New("--max-headers-count must be positive"))
	}
	if o.MaxRequestHeadersKB == 0 || o.MaxRequestHeadersKB > 8192 {
		errs = append(errs, fmt.Errorf("--max-request-headers-kb must be from 1 to 8192 (Envoy's range), got %d", o.MaxRequestHeadersKB))
	}
	if o.MaxConnections == 0 {
		errs = append(errs, errors.New("--max-connections must be positive"))
	}
	errs = append(errs, o.checkHardening()...)
	errs = append(errs, o.checkBrowser()...)
	if o.CheckFiles && len(errs) == 0 {
		errs = append(errs, checkFiles(o)...)
	}
	return errors.Join(errs...)
}

// checkFiles reads what Envoy will read at start, so a wrong path fails here with
// a message instead of in Envoy's log.
func checkFiles(o Options) []error {
	var errs []error
	if _, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile); err != nil {
		errs = append(errs, fmt.Errorf("--tls-cert %s / --tls-key %s: %v", o.TLSCertFile, o.TLSKeyFile, err))
	}
	for _, a := range o.AgentList() {
		if err := checkCABundle(a.APIServerCA); err != nil {
			errs = append(errs, fmt.Errorf("the API server CA of agent %d (--apiserver-ca or upstream.ca_file): %w", a.ID, err))
		}
	}
	return errs
}

func checkCABundle(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("%s: certificate %d does not parse: %v", path, n+1, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s holds no PEM certificate (want the cluster CA, e.g. /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)", path)
	}
	return nil
}

// isLocal: a unix socket, localhost, or a loopback IP.
func isLocal(a Addr) bool {
	if a.Path != "" || a.Host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(a.Host)
	return err == nil && ip.IsLoopback()
}

// Bootstrap builds the whole Envoy bootstrap: the listener, one API server cluster
// per agent, the three kubegate service clusters and an overload limit on
// downstream connections. Everything is static except the agent tokens, which
// arrive over SDS from XDSCluster.
func Bootstrap(o Options) (*bootstrapv3.Bootstrap, error) {
	if o.TokenSDSDir != "" {
		return nil, errors.New("a token SDS directory is for a service mesh's Envoy (MeshResources); kubegate's own bootstrap serves the token with kubegate xds (--xds)")
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	listener, err := Listener(o)
	if err != nil {
		return nil, err
	}
	clusters, err := apiServerClusters(o)
	if err != nil {
		return nil, err
	}
	for _, c := range []struct {
		name string
		addr Addr
	}{{AuthzCluster, o.Authz}, {ExtProcCluster, o.ExtProc}, {XDSCluster, o.XDS}} {
		gc, err := GRPCCluster(c.name, c.addr, o.ConnectTimeout, o.MaxConnections)
		if err != nil {
			return nil, err
		}
		clusters = append(clusters, gc)
	}
	if o.Browser != (Addr{}) {
		bc, err := BrowserCluster(o.Browser, o.ConnectTimeout, o.MaxConnections)
		if err != nil {
			return nil, err
		}
		clusters = append(clusters, bc)
	}
	monitor, err := typed(&downstreamconnsv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(o.MaxConnections)})
	if err != nil {
		return nil, err
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: o.NodeID, Cluster: o.NodeCluster},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{listener},
			Clusters:  clusters,
		},
		OverloadManager: &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name:       DownstreamConnectionsRM,
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: monitor},
		}}},
	}
	if o.Admin != "" {
		a, err := ParseAddr(o.Admin)
		if err != nil {
			return nil, err
		}
		b.Admin = &bootstrapv3.Admin{Address: a.Envoy()}
	}
	return b, nil
}

// apiServerClusters are the agents' API server clusters, in the order given.
func apiServerClusters(o Options) ([]*clusterv3.Cluster, error) {
	var clusters []*clusterv3.Cluster
	sds := tokenSDS(o)
	for _, a := range o.AgentList() {
		api, err := APIServer(a, sds, o.ConnectTimeout, o.MaxConnections)
		if err != nil {
			return nil, fmt.Errorf("agent %d: %w", a.ID, err)
		}
		clusters = append(clusters, api)
	}
	return clusters, nil
}

// Render returns the bootstrap as YAML, after checking that it passes Validate:
// a rendered configuration that kubegate itself would reject is a bug.
func Render(o Options) ([]byte, error) {
	b, err := Bootstrap(o)
	if err != nil {
		return nil, err
	}
	if findings := CheckBootstrap(b); len(findings) > 0 {
		return nil, fmt.Errorf("kubegate rendered a configuration that fails its own validation (a bug):\n%s", FormatFindings(findings))
	}
	return MarshalYAML(b)
}

// MarshalYAML encodes a message as YAML with Envoy's snake_case field names.
// protojson's output is deliberately unstable; going through sigs.k8s.io/yaml
// sorts the keys, so the result is deterministic and diffable.
func MarshalYAML(m proto.Message) ([]byte, error) {
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	var doc any
	if err := json.Unmarshal(j, &doc); err != nil {
		return nil, fmt.Errorf("re-reading the JSON encoding: %w", err)
	}
	writeExplicitDefaults(doc)
	if j, err = json.Marshal(doc); err != nil {
		return nil, fmt.Errorf("re-encoding JSON: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("converting JSON to YAML: %w", err)
	}
	return y, nil
}

// explicitDefaults are proto3 fields whose zero value is the safe one and so is
// never encoded, but which a reader of the configuration should see written
// (envoy.md: "failure_mode_allow: false (the default; write it anyway)"). Keyed
// by the type URL of the typed_config that holds them; nested keys are paths.
var explicitDefaults = map[string]map[string]any{
	"type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz": {
		"failure_mode_allow": false,
		"shadow_mode":        false,
	},
	"type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor": {
		"failure_mode_allow":                 false,
		"observability_mode":                 false,
		"disable_immediate_response":         false,
		"allow_mode_override":                false,
		"processing_mode.request_body_mode":  "NONE",
		"processing_mode.response_body_mode": "NONE",
	},
	"type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector": {
		"allow_request_without_credential": false,
	},
	"type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": {
		"local_rate_limit_per_downstream_connection": false,
	},
}

// writeExplicitDefaults adds explicitDefaults to every matching typed_config in a
// decoded protojson document. The result decodes to the same message.
func writeExplicitDefaults(v any) {
	switch x := v.(type) {
	case map[string]any:
		// A route's cluster_not_found_response_code is SERVICE_UNAVAILABLE, the
		// enum's zero (rule cluster-not-found-503): written, since cluster_header's
		// own comment says a missing header "will return a 404 response"
		// (route_components.proto) while the field's says 503 is the default.
		if _, ok := x["cluster_header"]; ok {
			if _, set := x["cluster_not_found_response_code"]; !set {
				x["cluster_not_found_response_code"] = "SERVICE_UNAVAILABLE"
			}
		}
		if url, ok := x["@type"].(string); ok {
			for path, val := range explicitDefaults[url] {
				obj := x
				keys := strings.Split(path, ".")
				for _, k := range keys[:len(keys)-1] {
					next, ok := obj[k].(map[string]any)
					if !ok {
						next = map[string]any{}
						obj[k] = next
					}
					obj = next
				}
				if _, set := obj[keys[len(keys)-1]]; !set {
					obj[keys[len(keys)-1]] = val
				}
			}
		}
		for _, e := range x {
			writeExplicitDefaults(e)
		}
	case []any:
		for _, e := range x {
			writeExplicitDefaults(e)
		}
	}
}
