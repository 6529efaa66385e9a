package weborigin

import (
	"net/url"
	"testing"
)

func TestOf(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"https://gateway.example:8443/ui/", "https://gateway.example:8443"},
		{"HTTPS://Gateway.Example:8443", "https://gateway.example:8443"},
		{"https://gateway.example:443", "https://gateway.example"},
		{"http://127.0.0.1:80/x", "http://127.0.0.1"},
		{"http://127.0.0.1:443", "http://127.0.0.1:443"}, // 443 is only https's default
		{"https://[::1]:8443", "https://[::1]:8443"},
		{"https://[::1]", "https://[::1]"},
	} {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := Of(u); got != tt.want {
			t.Errorf("Of(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
