package dataplane

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/envoy/sds"
)

// editGeneric edits the credential injector's generic credential in a bootstrap.
// editGeneric edits the credential_injector (and its generic credential) of
// every cluster's upstream HTTP filters: where kubegate renders the agent token.
func editGeneric(t testing.TB, b *bootstrapv3.Bootstrap, edit func(*credinjectorv3.CredentialInjector, *genericv3.Generic)) {
	t.Helper()
	for _, cl := range b.GetStaticResources().GetClusters() {
		a, ok := cl.GetTypedExtensionProtocolOptions()[envoy.UpstreamHTTPOptionsKey]
		if !ok {
			continue
		}
		po := &upstreamhttpv3.HttpProtocolOptions{}
		mustUnpack(t, a, po)
		for _, hf := range po.GetHttpFilters() {
			ci := &credinjectorv3.CredentialInjector{}
			if hf.GetTypedConfig().MessageIs(ci) {
				mustUnpack(t, hf.GetTypedConfig(), ci)
				g := &genericv3.Generic{}
				mustUnpack(t, ci.GetCredential().GetTypedConfig(), g)
				edit(ci, g)
				ci.Credential.TypedConfig = mustAny(t, g)
				hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, ci)}
			}
		}
		cl.TypedExtensionProtocolOptions[envoy.UpstreamHTTPOptionsKey] = mustAny(t, po)
	}
}

func mustUnpack(t testing.TB, a *anypb.Any, m proto.Message) {
	t.Helper()
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// waitSecret polls until the data plane uses the secret version (the SDS push is
// asynchronous); the deadline only guards against a hang.
func waitSecret(t testing.TB, dp *DataPlane, version string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for dp.SecretVersion() != version {
		if time.Now().After(deadline) {
			t.Fatalf("secret version %q never arrived (have %q)", version, dp.SecretVersion())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCredentialInjector: the agent token from kubegate xds replaces every
// Authorization line the request still has (overwrite: true → setCopy), a rotated
// token is used once SDS pushes it, and the prefix comes from header_value_prefix.
func TestCredentialInjector(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	xdsSrv, xds := realXDS(t, agentToken)
	var obs observed
	// This ext_authz leaves Authorization in place, so the injector must overwrite it.
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}), Options{OnUpstreamRequest: obs.record})
	cl := client(t, c, false)

	status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer user-1", "Bearer user-2"}})
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := obs.last(t).Values("authorization"); !slices.Equal(got, []string{"Bearer " + agentToken}) {
		t.Errorf("authorization %q, want only the agent token", got)
	}

	const rotated = "agent-sa-token-2"
	if _, err := xdsSrv.Publish(context.Background(), rotated); err != nil {
		t.Fatal(err)
	}
	waitSecret(t, dp, sds.Version(rotated))
	do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil)
	if got := obs.last(t).Values("authorization"); !slices.Equal(got, []string{"Bearer " + rotated}) {
		t.Errorf("after rotation authorization %q, want the new token", got)
	}
}

// TestNoSecretYet: the listener warms until the secret arrives or
// initial_fetch_timeout passes (0: forever); after the timeout, requests fail with
// credential_injector's 401 "Failed to inject credential." until the secret comes.
func TestNoSecretYet(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	xdsSrv, xds := realXDS(t, "")
	withFetchTimeout := func(d time.Duration) func(*bootstrapv3.Bootstrap) {
		return func(b *bootstrapv3.Bootstrap) {
			editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
				g.GetCredential().GetSdsConfig().InitialFetchTimeout = durationpb.New(d)
			})
		}
	}
	base := setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: xds, apiserver: rec.url(), caFile: rec.caFile}

	t.Run("warming waits for the secret", func(t *testing.T) {
		s := base
		s.editBootstrap = withFetchTimeout(0)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		dp, err := Start(ctx, render(t, c, s), Options{})
		if err == nil {
			dp.Close()
			t.Fatal("Start returned without the secret and with initial_fetch_timeout 0")
		}
		if !strings.Contains(err.Error(), tokenSecret) {
			t.Errorf("error %q does not name the secret", err)
		}
	})

	t.Run("401 after initial_fetch_timeout, then the secret", func(t *testing.T) {
		s := base
		s.editBootstrap = withFetchTimeout(100 * time.Millisecond)
		dp := start(t, render(t, c, s), Options{})
		cl := client(t, c, true)
		status, hdr, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil)
		if status != http.StatusUnauthorized || body != "Failed to inject credential." || hdr.Get("Content-Type") != "text/plain" {
			t.Errorf("got %d %q (%s), want 401 \"Failed to inject credential.\"", status, body, hdr.Get("Content-Type"))
		}
		if _, err := xdsSrv.Publish(context.Background(), agentToken); err != nil {
			t.Fatal(err)
		}
		waitSecret(t, dp, sds.Version(agentToken))
		if status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusOK {
			t.Errorf("with the secret: %d %q", status, body)
		}
	})
	if n := len(rec.requests()); n != 1 {
		t.Errorf("%d requests reached the upstream, want only the one made with the secret", n)
	}
}

// TestSecretOverADS: a bootstrap whose secret comes from `ads: {}` gets it over
// the AggregatedDiscoveryService stream of dynamic_resources.ads_config.
func TestSecretOverADS(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	snap, err := cachev3.NewSnapshot("v1", map[resource.Type][]types.Resource{resource.SecretType: {sds.Secret(tokenSecret, "ads-token")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), envoy.DefaultNodeID, snap); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ads := serveGRPC(t, func(g *grpc.Server) {
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, cache, nil))
	})
	var obs observed
	s := setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: ads, apiserver: rec.url(), caFile: rec.caFile,
		editBootstrap: func(b *bootstrapv3.Bootstrap) {
			editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
				g.GetCredential().GetSdsConfig().ConfigSourceSpecifier = &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}
			})
			b.DynamicResources = &bootstrapv3.Bootstrap_DynamicResources{AdsConfig: envoy.SDSConfigSource(envoy.XDSCluster).GetApiConfigSource()}
		}}
	dp := start(t, render(t, c, s), Options{OnUpstreamRequest: obs.record})
	if status, _, body := do(t, client(t, c, true), "GET", dp.URL()+"/k8s-proxy/api", nil); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := obs.last(t).Values("authorization"); !slices.Equal(got, []string{"Bearer ads-token"}) {
		t.Errorf("authorization %q", got)
	}
}

// rejectingSDS answers every StreamSecrets request with a response that does not
// carry the requested secret, which Envoy rejects ("Missing SDS resources for
// <name> in onConfigUpdate()", SdsApi::validateUpdateSize) with a NACK. It
// records the NACKs it receives.
type rejectingSDS struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	nacks chan string
}

func (r *rejectingSDS) StreamSecrets(st secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	other := mustAnyOf(&tlsv3.Secret{Name: "not-" + tokenSecret, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "x"}},
	}}})
	for n := 0; ; n++ {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if msg := req.GetErrorDetail().GetMessage(); msg != "" {
			select {
			case r.nacks <- msg:
			default:
			}
			continue // a NACK: wait for the stream to end
		}
		if err := st.Send(&discoveryv3.DiscoveryResponse{VersionInfo: "bad", Nonce: fmt.Sprint(n), TypeUrl: resource.SecretType, Resources: []*anypb.Any{other}}); err != nil {
			return nil
		}
	}
}

func mustAnyOf(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// TestGatewayWithoutTheAgentToken: the listener stops waiting for the SDS secret
// on the first rejected update, even with initial_fetch_timeout 0
// (SdsApi::onConfigUpdateFailed → init_target_.ready()), and on the timeout; then
// every request kubegate authz allowed fails in the credential injector (401
// "Failed to inject credential."), which the rendered local_reply_config turns
// into a 503 Kubernetes Status marked agent_token_missing, so the user does not
// take it for a rejection of their own credential. kubegate authz's own 401s are
// left alone, and nothing reaches the API server.
func TestGatewayWithoutTheAgentToken(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	bad := &rejectingSDS{nacks: make(chan string, 1)}
	badAddr := serveGRPC(t, func(g *grpc.Server) { secretv3.RegisterSecretDiscoveryServiceServer(g, bad) })
	_, emptyXDS := realXDS(t, "")
	fetchTimeout := func(d time.Duration) func(*bootstrapv3.Bootstrap) {
		return func(b *bootstrapv3.Bootstrap) {
			editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
				g.GetCredential().GetSdsConfig().InitialFetchTimeout = durationpb.New(d)
			})
		}
	}
	tests := []struct {
		name  string
		xds   string
		edit  func(*bootstrapv3.Bootstrap)
		nacks bool
	}{
		{name: "a rejected update ends the wait even without a timeout", xds: badAddr, edit: fetchTimeout(0), nacks: true},
		{name: "initial_fetch_timeout ends the wait", xds: emptyXDS, edit: fetchTimeout(100 * time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a hang guard only
			defer cancel()
			dp := start(t, render(t, c, setup{authz: realAuthz(t), extproc: realExtProc(t), xds: tt.xds, apiserver: rec.url(), caFile: rec.caFile, editBootstrap: tt.edit}), Options{})
			if tt.nacks {
				select {
				case msg := <-bad.nacks:
					if !strings.Contains(msg, "Missing SDS resources for "+tokenSecret) {
						t.Errorf("NACK %q", msg)
					}
				case <-ctx.Done():
					t.Fatal("the rejected update was not NACKed")
				}
			}
			cl := client(t, c, true)
			status, hdr, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {alicePAT()}})
			if status != http.StatusServiceUnavailable || hdr.Get("Content-Type") != "application/json" || hdr.Get("X-Kubegate-Error") != envoy.ReasonAgentTokenMissing ||
				!strings.Contains(body, `"kind":"Status"`) || !strings.Contains(body, "no service-account token for the agent") {
				t.Errorf("allowed request without the agent token: %d %s %q %q, want the 503 agent_token_missing Status", status, hdr.Get("Content-Type"), hdr.Get("X-Kubegate-Error"), body)
			}
			// client-go, as kubectl, shows the Status message.
			ca, err := os.ReadFile(filepath.Join(c.dir, devcert.CAFile))
			if err != nil {
				t.Fatal(err)
			}
			cs, err := kubernetes.NewForConfig(&rest.Config{Host: dp.URL() + "/k8s-proxy", BearerToken: strings.TrimPrefix(alicePAT(), "Bearer "), TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
			if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "kubegate: the gateway has no service-account token for the agent") {
				t.Errorf("client-go error %v, want ServiceUnavailable with kubegate's message", err)
			}
			// kubegate authz's own 401 is the client's credential, and stays so.
			status, hdr, body = do(t, cl, "GET", dp.URL()+"/k8s-proxy/api/v1/namespaces", http.Header{"Authorization": {"Bearer pat:1:wrong"}})
			if status != http.StatusUnauthorized || hdr.Get("X-Kubegate-Error") == envoy.ReasonAgentTokenMissing || !strings.Contains(body, `"kind":"Status"`) {
				t.Errorf("bad credential: %d %q %q, want kubegate authz's 401", status, hdr.Get("X-Kubegate-Error"), body)
			}
		})
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("%d requests reached the upstream without the agent token", n)
	}
}
