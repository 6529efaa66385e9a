package dataplane

import (
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	credinjectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/test/projected"
)

// tokenVolume writes the projected volume a service mesh's proxy reads the agent
// token from (envoy.FileSDSConfigSource): the token and the SDS response naming it.
func tokenVolume(t testing.TB, dir, token string, sdsFile []byte) {
	t.Helper()
	if sdsFile == nil {
		r, err := envoy.TokenSDS(dir, sandboxAgent.ID)
		if err != nil {
			t.Fatal(err)
		}
		if sdsFile, err = envoy.MarshalYAML(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := projected.Write(dir, map[string][]byte{envoy.TokenFile: []byte(token), envoy.TokenSDSFile: sdsFile}); err != nil {
		t.Fatal(err)
	}
}

func fileSDS(t testing.TB, dir string) func(*bootstrapv3.Bootstrap) {
	return func(b *bootstrapv3.Bootstrap) {
		editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
			g.Credential.SdsConfig = envoy.FileSDSConfigSource(dir)
		})
		// kubegate xds is not used then; left in, its cluster would be one
		// x-kubegate-upstream could name (rule upstream-credential).
		cs := b.StaticResources.Clusters
		for i, cl := range cs {
			if cl.GetName() == envoy.XDSCluster {
				b.StaticResources.Clusters = append(cs[:i:i], cs[i+1:]...)
				break
			}
		}
	}
}

// TestSecretFromAWatchedFile: with file-based SDS the token file's content is the
// credential, and a kubelet-style swap of the volume (a move into the watched
// directory) brings the rotated token without a restart.
func TestSecretFromAWatchedFile(t *testing.T) {
	c := newCerts(t)
	rec := newRecorder(t, nil)
	dir := t.TempDir()
	tokenVolume(t, dir, "agent-file-token-1", nil)
	var obs observed
	dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: "127.0.0.1:1", apiserver: rec.url(), caFile: rec.caFile, editBootstrap: fileSDS(t, dir)}), Options{OnUpstreamRequest: obs.record})
	cl := client(t, c, false)

	if status, _, body := do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", http.Header{"Authorization": {"Bearer user-1"}}); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if got := obs.last(t).Values("authorization"); !slices.Equal(got, []string{"Bearer agent-file-token-1"}) {
		t.Fatalf("authorization %q, want the token from the file", got)
	}

	tokenVolume(t, dir, "agent-file-token-2", nil)
	deadline := time.Now().Add(10 * time.Second) // guards against a hang only
	for {
		do(t, cl, "GET", dp.URL()+"/k8s-proxy/api", nil)
		if got := obs.last(t).Values("authorization"); slices.Equal(got, []string{"Bearer agent-file-token-2"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated token never arrived; authorization %q", obs.last(t).Values("authorization"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBrokenSDSFileNeverForwards: an SDS file that does not parse, or names
// another secret, leaves the gateway without the agent token: requests are
// refused and none reaches the API server.
func TestBrokenSDSFileNeverForwards(t *testing.T) {
	for name, sdsFile := range map[string][]byte{
		"not yaml":       []byte("resources: ["),
		"unknown field":  []byte("resources: []\nsurprise: 1\n"),
		"another secret": []byte("resources:\n- {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: other, generic_secret: {secret: {inline_string: x}}}\n"),
	} {
		t.Run(name, func(t *testing.T) {
			c := newCerts(t)
			rec := newRecorder(t, nil)
			dir := t.TempDir()
			tokenVolume(t, dir, "agent-file-token", sdsFile)
			var obs observed
			dp := start(t, render(t, c, setup{authz: (&authzDouble{}).serve(t), extproc: (&processorDouble{}).serve(t), xds: "127.0.0.1:1", apiserver: rec.url(), caFile: rec.caFile, editBootstrap: fileSDS(t, dir)}), Options{OnUpstreamRequest: obs.record})
			status, _, body := do(t, client(t, c, false), "GET", dp.URL()+"/k8s-proxy/api", nil)
			if status == http.StatusOK || len(obs.all()) != 0 {
				t.Fatalf("status %d (%s), %d upstream requests: want a refusal and nothing upstream", status, body, len(obs.all()))
			}
		})
	}
}

// TestFileSDSWithoutWatchedDirectoryIsNotEmulated: the stand-in refuses the
// variant it does not emulate rather than guess.
func TestFileSDSWithoutWatchedDirectoryIsNotEmulated(t *testing.T) {
	c := newCerts(t)
	dir := t.TempDir()
	b := render(t, c, setup{authz: "127.0.0.1:1", extproc: "127.0.0.1:2", xds: "127.0.0.1:3", apiserver: "https://127.0.0.1:4", caFile: filepath.Join(c.dir, devcert.CAFile), editBootstrap: func(b *bootstrapv3.Bootstrap) {
		editGeneric(t, b, func(_ *credinjectorv3.CredentialInjector, g *genericv3.Generic) {
			src := envoy.FileSDSConfigSource(dir)
			src.GetPathConfigSource().WatchedDirectory = nil
			g.Credential.SdsConfig = src
		})
	}})
	// Not through Start: kubegate's own rules refuse it first (credential-rotation).
	bs, fs := envoy.Decode(b)
	if len(fs) > 0 {
		t.Fatal(envoy.FormatFindings(fs))
	}
	if _, err := parseBootstrap(bs); err == nil || !strings.Contains(err.Error(), "watched_directory") || !strings.Contains(err.Error(), "not emulated") {
		t.Fatalf("parseBootstrap: %v, want a refusal naming watched_directory", err)
	}
}
