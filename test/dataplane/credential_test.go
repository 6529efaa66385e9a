package dataplane

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/sds"
)

// editGeneric edits the credential injector's generic credential in a bootstrap.
func editGeneric(t testing.TB, b *bootstrapv3.Bootstrap, edit func(*credinjectorv3.CredentialInjector, *genericv3.Generic)) {
	t.Helper()
	f := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	hcm := &hcmv3.HttpConnectionManager{}
	mustUnpack(t, f.GetTypedConfig(), hcm)
	for _, hf := range hcm.GetHttpFilters() {
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
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
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
		if !strings.Contains(err.Error(), envoy.TokenSecretName) {
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
	snap, err := cachev3.NewSnapshot("v1", map[resource.Type][]types.Resource{resource.SecretType: {sds.Secret(envoy.TokenSecretName, "ads-token")}})
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
