package chart

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// containerArgs returns the flags (name → value) of each container and init container.
func containerArgs(spec corev1.PodSpec) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		out[c.Name] = flagsOf(c.Args)
	}
	return out
}

// TestBrowserValues: with browser.enabled the chart gives authz the browser flags,
// its listener on the pod's loopback, the session key Secret mounted read-only with
// mode 0400 into authz alone, and Envoy's render --browser pointing at that
// listener; without it, none of that exists (session cookies stay refused). The
// etcd store gets its endpoints, TLS files and a NetworkPolicy rule to etcd.
func TestBrowserValues(t *testing.T) {
	browserFlags := []string{"--browser-listen", "--public-url", "--session-key-file", "--session-store",
		"--session-idle-timeout", "--session-max-age"}

	t.Run("off", func(t *testing.T) {
		spec := deployment(t, render(t, "kg", "kubegate", minimal(t))).Spec.Template.Spec
		args := containerArgs(spec)
		if _, ok := args["render-envoy"]["--browser"]; ok {
			t.Errorf("render-envoy has --browser with browser.enabled=false")
		}
		for _, f := range browserFlags {
			if _, ok := args["authz"][f]; ok {
				t.Errorf("authz has %s with browser.enabled=false", f)
			}
		}
		for _, v := range spec.Volumes {
			if strings.HasPrefix(v.Name, "session") {
				t.Errorf("volume %s with browser.enabled=false", v.Name)
			}
		}
	})

	for _, tc := range []struct {
		name  string
		v     values
		store string
		extra map[string]string // more authz flags and their values
	}{
		{"on, memory", withBrowser(t), "memory", map[string]string{"--public-url": "https://kubegate.example.com",
			"--session-idle-timeout": "30m", "--session-max-age": "8h"}},
		{"on, etcd (production)", production(t), "etcd", map[string]string{"--public-url": "https://kubegate.example.com",
			"--session-idle-timeout": "15m", "--session-max-age": "12h",
			"--session-etcd-endpoints":  "https://etcd-0.etcd:2379,https://etcd-1.etcd:2379",
			"--session-etcd-ca-file":    "/etc/kubegate/session-etcd/ca/ca.crt",
			"--session-etcd-cert-file":  "/etc/kubegate/session-etcd/client/tls.crt",
			"--session-etcd-key-file":   "/etc/kubegate/session-etcd/client/tls.key",
			"--session-sync-bound":      "5s",
			"--oidc-browser-client-id":  "kubegate-browser",
			"--oidc-client-secret-file": "/etc/kubegate/oidc-client/client-secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, "kg", "kubegate", tc.v)
			spec := deployment(t, objs).Spec.Template.Spec
			args := containerArgs(spec)
			authz := args["authz"]
			listen := authz["--browser-listen"]
			if listen != "127.0.0.1:8081" {
				t.Errorf("authz --browser-listen=%q, want 127.0.0.1:8081 (the pod's loopback: only its Envoy is a client)", listen)
			}
			if got := args["render-envoy"]["--browser"]; got != listen {
				t.Errorf("render-envoy --browser=%q, want authz's --browser-listen %q", got, listen)
			}
			if _, ok := args["render-envoy"]["--allow-non-loopback"]; ok {
				t.Error("render-envoy has --allow-non-loopback")
			}
			if got := authz["--session-store"]; got != tc.store {
				t.Errorf("--session-store=%q, want %q", got, tc.store)
			}
			for f, want := range tc.extra {
				if got := authz[f]; got != want {
					t.Errorf("authz %s=%q, want %q", f, got, want)
				}
			}
			// The key: a Secret volume with mode 0400, mounted read-only by authz
			// only, at the directory --session-key-file names.
			var keyVol *corev1.Volume
			for i, v := range spec.Volumes {
				if v.Name == "session-key" {
					keyVol = &spec.Volumes[i]
				}
			}
			if keyVol == nil || keyVol.Secret == nil || keyVol.Secret.SecretName != "kubegate-session-key" {
				t.Fatalf("no session-key volume from Secret kubegate-session-key: %+v", keyVol)
			}
			if m := keyVol.Secret.DefaultMode; m == nil || *m != 0o400 {
				t.Errorf("session-key defaultMode = %v, want 0400", m)
			}
			for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
				for _, m := range c.VolumeMounts {
					if m.Name != "session-key" {
						continue
					}
					if c.Name != "authz" {
						t.Errorf("container %s mounts the session key; only authz may", c.Name)
						continue
					}
					if !m.ReadOnly || m.MountPath+"/session.key" != authz["--session-key-file"] {
						t.Errorf("authz mounts the key at %s (readOnly %v), --session-key-file=%s", m.MountPath, m.ReadOnly, authz["--session-key-file"])
					}
				}
				if c.Name == "authz" && !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "browser" && p.ContainerPort == 8081 }) {
					t.Errorf("authz ports %v: no browser containerPort 8081", c.Ports)
				}
			}
			// Nothing outside the pod is let in to the browser port.
			var np networkingv1.NetworkPolicy
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "NetworkPolicy", "").Object, &np); err != nil {
				t.Fatal(err)
			}
			var toEtcd bool
			for _, r := range np.Spec.Ingress {
				for _, p := range r.Ports {
					if p.Port != nil && p.Port.IntValue() == 8081 {
						t.Errorf("the NetworkPolicy admits the browser port: %+v", r)
					}
				}
			}
			for _, r := range np.Spec.Egress {
				for _, p := range r.Ports {
					if p.Port != nil && p.Port.IntValue() == 2379 && len(r.To) == 1 && r.To[0].PodSelector != nil && r.To[0].PodSelector.MatchLabels["app"] == "etcd" {
						toEtcd = true
					}
				}
			}
			if toEtcd != (tc.store == "etcd") {
				t.Errorf("NetworkPolicy egress to etcd: %v, want %v", toEtcd, tc.store == "etcd")
			}
		})
	}
}
