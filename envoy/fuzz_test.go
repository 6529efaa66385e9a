package envoy

import (
	"strings"
	"testing"
)

// FuzzValidate: any input gives findings or a clean pass, never a panic, and every
// finding names a JSON path and a rule. A clean pass decodes to a bootstrap.
func FuzzValidate(f *testing.F) {
	o := DefaultOptions()
	o.CheckFiles = false
	o.TLSCertFile, o.TLSKeyFile, o.APIServer, o.APIServerCA = "/c", "/k", "https://k:6443", "/ca"
	o.AgentID = 1
	o.Listen, _ = ParseAddr("0.0.0.0:8443")
	o.Authz, _ = ParseAddr("a:1")
	o.ExtProc, _ = ParseAddr("unix:///e.sock")
	o.XDS, _ = ParseAddr("127.0.0.1:3")
	o.AllowNonLoopback = true
	y, err := Render(o)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(y)
	f.Add([]byte(`{"static_resources": {"listeners": [{"name": "x"}]}}`))
	f.Add([]byte("admin: {address: {socket_address: {address: 0.0.0.0, port_value: 1}}}"))
	f.Add([]byte(`{"static_resources":{"clusters":[{"name":"c","typed_extension_protocol_options":{"k":{"@type":"type.googleapis.com/google.protobuf.Duration","value":"1s"}}}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := Validate(data)
		for _, fd := range fs {
			if !strings.HasPrefix(fd.Path, "$") || fd.Rule == "" || fd.Message == "" {
				t.Fatalf("incomplete finding %+v", fd)
			}
		}
		if len(fs) == 0 {
			if b, dfs := Decode(data); b == nil || len(dfs) > 0 {
				t.Fatalf("Validate passed but Decode = %v, %v", b, dfs)
			}
		}
	})
}
