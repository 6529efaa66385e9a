package contract_test

import (
	"regexp"
	"slices"
	"testing"

	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/extproc"
)

// rendered is the bootstrap `kubegate envoy render` writes, read back as Envoy
// would read it.
func rendered(t *testing.T) *hcmv3.HttpConnectionManager {
	t.Helper()
	o := envoy.DefaultOptions()
	o.CheckFiles = false
	o.TLSCertFile, o.TLSKeyFile = "/etc/kubegate/tls/tls.crt", "/etc/kubegate/tls/tls.key"
	o.APIServer, o.APIServerCA = "https://kubernetes.default.svc:443", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	o.AllowNonLoopback = true
	o.AgentID = 1
	for _, a := range []struct {
		dst *envoy.Addr
		s   string
	}{{&o.Listen, "0.0.0.0:8443"}, {&o.Authz, "authz:9001"}, {&o.ExtProc, "extproc:9002"}, {&o.XDS, "xds:9003"}} {
		var err error
		if *a.dst, err = envoy.ParseAddr(a.s); err != nil {
			t.Fatal(err)
		}
	}
	y, err := envoy.Render(o)
	if err != nil {
		t.Fatal(err)
	}
	b, findings := envoy.Decode(y)
	if len(findings) > 0 {
		t.Fatalf("the rendered bootstrap does not decode: %v", findings)
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&hcm) {
					if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
						t.Fatal(err)
					}
					return &hcm
				}
			}
		}
	}
	t.Fatal("the rendered bootstrap has no HTTP connection manager")
	return nil
}

// TestRenderedConfigAgreesWithServices: what Envoy is configured with is what
// kubegate authz and extproc act on — the route prefix, the headers ext_authz
// may remove and set, the metadata ext_proc is forwarded, the headers ext_proc may
// set. A disagreement fails requests at best, and for a credential header lets
// the user's credential reach the cluster.
func TestRenderedConfigAgreesWithServices(t *testing.T) {
	hcm := rendered(t)
	var authz extauthzv3.ExtAuthz
	var proc extprocv3.ExternalProcessor
	for _, f := range hcm.GetHttpFilters() {
		switch {
		case f.GetTypedConfig().MessageIs(&authz):
			if err := f.GetTypedConfig().UnmarshalTo(&authz); err != nil {
				t.Fatal(err)
			}
		case f.GetTypedConfig().MessageIs(&proc):
			if err := f.GetTypedConfig().UnmarshalTo(&proc); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Envoy matches allow_expression against the whole lower-cased name (RE2).
	allows := func(expr, name string) bool {
		return regexp.MustCompile("^(?:" + expr + ")$").MatchString(name)
	}

	t.Run("routes are the services' and the kubeconfig's, routed by authz's header", func(t *testing.T) {
		var prefixes, roots []string
		for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if r.GetRoute() == nil {
					continue
				}
				if p := r.GetMatch().GetPrefix(); p != "" {
					prefixes = append(prefixes, p)
				}
				if p := r.GetMatch().GetPathSeparatedPrefix(); p != "" {
					roots = append(roots, p)
				}
				if h := r.GetRoute().GetClusterHeader(); h != contract.HeaderUpstream {
					t.Errorf("route %q takes its cluster from %q (cluster %q); kubegate authz routes with %q", r.GetName(), h, r.GetRoute().GetCluster(), contract.HeaderUpstream)
				}
			}
		}
		if !slices.Equal(prefixes, []string{contract.PathPrefix}) || extauthz.PathPrefix != contract.PathPrefix || contract.ProxyPath+"/" != contract.PathPrefix {
			t.Fatalf("routes to the API server %q, authz checks %q, kubeconfig points at %q; want all %q", prefixes, extauthz.PathPrefix, contract.ProxyPath, contract.PathPrefix)
		}
		slices.Sort(roots)
		want := slices.Sorted(slices.Values(contract.APIRootPaths))
		if !slices.Equal(roots, want) {
			t.Fatalf("top-level API routes %q, authz accepts %q", roots, want)
		}
	})
	t.Run("the agent's cluster has the name authz routes to", func(t *testing.T) {
		if envoy.APIServerCluster(1) != contract.UpstreamCluster(1) {
			t.Fatalf("envoy names agent 1's cluster %q, authz routes to %q", envoy.APIServerCluster(1), contract.UpstreamCluster(1))
		}
	})
	t.Run("ext_authz may remove every credential header and set Impersonate-User", func(t *testing.T) {
		expr := authz.GetDecoderHeaderMutationRules().GetAllowExpression().GetRegex()
		ident := handoff.NewIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil)
		for _, h := range append(slices.Clone(contract.CredentialHeaders), ident.UserHeader().GetHeader().GetKey(), contract.HeaderUpstream) {
			if !allows(expr, h) {
				t.Errorf("ext_authz's mutation rules (%q) refuse %q, which kubegate authz removes or sets", expr, h)
			}
		}
		for _, h := range []string{contract.HeaderImpersonateGroup, contract.HeaderImpersonateExtraPrefix + "x", "host"} {
			if allows(expr, h) {
				t.Errorf("ext_authz's mutation rules (%q) allow %q, which only ext_proc or nobody may set", expr, h)
			}
		}
	})
	t.Run("ext_proc is forwarded the hand-off namespace", func(t *testing.T) {
		got := proc.GetMetadataOptions().GetForwardingNamespaces().GetUntyped()
		if !slices.Equal(got, []string{handoff.Namespace}) || handoff.Namespace != contract.MetadataNamespace {
			t.Fatalf("ext_proc is forwarded %q; kubegate authz writes and extproc reads %q", got, handoff.Namespace)
		}
	})
	t.Run("ext_proc may set the impersonation headers and nothing else", func(t *testing.T) {
		expr := proc.GetMutationRules().GetAllowExpression().GetRegex()
		for _, h := range []string{extproc.HeaderImpersonateUser, extproc.HeaderImpersonateGroup, extproc.HeaderImpersonateExtraPrefix + extproc.EscapeExtraKey("agent.gitlab.com/id")} {
			if !allows(expr, h) {
				t.Errorf("ext_proc's mutation rules (%q) refuse %q, which kubegate extproc sets", expr, h)
			}
		}
		for _, h := range append(slices.Clone(contract.CredentialHeaders), contract.HeaderError, contract.HeaderUpstream) {
			if allows(expr, h) {
				t.Errorf("ext_proc's mutation rules (%q) allow %q", expr, h)
			}
		}
	})
}
