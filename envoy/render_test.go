package envoy

import (
	"strings"
	"testing"
)

// testOptions renders for another machine: the files are not read.
func testOptions(t *testing.T) Options {
	t.Helper()
	o := DefaultOptions()
	o.CheckFiles = false
	o.TLSCertFile, o.TLSKeyFile = "/etc/kubegate/tls/tls.crt", "/etc/kubegate/tls/tls.key"
	o.APIServer, o.APIServerCA = "https://kubernetes.default.svc:443", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	o.Listen = mustAddr(t, "0.0.0.0:8443")
	o.Authz = mustAddr(t, "authz:9001")
	o.ExtProc = mustAddr(t, "extproc:9002")
	o.XDS = mustAddr(t, "xds:9003")
	o.AllowNonLoopback = true // service names, as between the containers of a pod's network namespace
	return o
}

func mustAddr(t *testing.T, s string) Addr {
	t.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRenderedConfigValidates(t *testing.T) {
	tests := []struct {
		name string
		edit func(*testing.T, *Options)
	}{
		{"dns names", func(*testing.T, *Options) {}},
		{"ip addresses", func(t *testing.T, o *Options) {
			o.APIServer = "https://10.96.0.1"
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "127.0.0.1:9001"), mustAddr(t, "[::1]:9002"), mustAddr(t, "127.0.0.1:9003")
		}},
		{"unix sockets", func(t *testing.T, o *Options) {
			o.Listen = mustAddr(t, "unix:///run/kubegate/envoy.sock")
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "unix:///run/kubegate/authz.sock"), mustAddr(t, "unix:///run/kubegate/extproc.sock"), mustAddr(t, "unix:///run/kubegate/xds.sock")
			o.Admin = "unix:///run/kubegate/admin.sock"
		}},
		{"no admin, other limits", func(t *testing.T, o *Options) {
			o.Admin = ""
			o.MaxHeadersCount, o.MaxRequestHeadersKB, o.MaxConnections = 100, 60, 10
			o.StreamIdleTimeout = 2 * MinStreamIdleTimeout
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(t, &o)
			y, err := Render(o)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if fs := Validate(y); len(fs) > 0 {
				t.Fatalf("rendered config has findings:\n%s", FormatFindings(fs))
			}
			// The fields envoy.md wants written although they are the defaults.
			for _, want := range []string{"failure_mode_allow: false", "request_body_mode: NONE", "response_body_mode: NONE", "allow_request_without_credential: false"} {
				if !strings.Contains(string(y), want) {
					t.Errorf("rendered YAML lacks %q", want)
				}
			}
		})
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a, err := Render(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := Render(testOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Fatal("two renders of the same options differ")
		}
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"http apiserver", func(o *Options) { o.APIServer = "http://k8s:6443" }, "scheme must be https"},
		{"apiserver with path", func(o *Options) { o.APIServer = "https://k8s:6443/prefix" }, "path, query or user"},
		{"apiserver not a url", func(o *Options) { o.APIServer = "k8s" }, "not a URL"},
		{"missing tls cert", func(o *Options) { o.TLSCertFile = "" }, "--tls-cert is required"},
		{"missing authz", func(o *Options) { o.Authz = Addr{} }, "--authz is required"},
		{"public admin", func(o *Options) { o.Admin = "0.0.0.0:9901" }, "loopback"},
		{"short idle timeout", func(o *Options) { o.StreamIdleTimeout = MinStreamIdleTimeout / 2 }, "--stream-idle-timeout"},
		{"headers kb over Envoy's range", func(o *Options) { o.MaxRequestHeadersKB = 9000 }, "1 to 8192"},
		{"zero authz timeout", func(o *Options) { o.AuthzTimeout = 0 }, "--authz-timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(&o)
			_, err := Render(o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Render error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    Addr
		wantErr string
	}{
		{in: "authz:9001", want: Addr{Host: "authz", Port: 9001}},
		{in: "[::1]:80", want: Addr{Host: "::1", Port: 80}},
		{in: "unix:///run/a.sock", want: Addr{Path: "/run/a.sock"}},
		{in: "unix://run/a.sock", wantErr: "absolute path"},
		{in: "grpc://a:1", wantErr: "only host:port"},
		{in: ":9001", wantErr: "has no host"},
		{in: "a:0", wantErr: "1 to 65535"},
		{in: "a:http", wantErr: "1 to 65535"},
		{in: "a", wantErr: "not host:port"},
		{in: "", wantErr: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAddr = %+v, %v; want %+v", got, err, tt.want)
			}
			if back, _ := ParseAddr(got.String()); back != got {
				t.Errorf("String() %q does not parse back", got.String())
			}
		})
	}
}
