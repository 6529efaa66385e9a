package devcert

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	hosts := []string{"localhost", "envoy", "127.0.0.1"}

	wrote, err := Ensure(dir, hosts, now)
	if err != nil || !wrote {
		t.Fatalf("first Ensure = %v, %v", wrote, err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, CAFile))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool}); err != nil {
			t.Errorf("certificate does not verify for %s: %v", h, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}

	tests := []struct {
		name      string
		hosts     []string
		at        time.Time
		wantWrite bool
	}{
		{"same hosts, restarted", hosts, now, false},
		{"subset of hosts", hosts[:1], now, false},
		{"a new host", append(hosts, "gateway.example"), now, true},
		{"close to expiry", hosts, now.Add(leafLifetime - renewBefore/2), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			if _, err := Ensure(d, hosts, now); err != nil {
				t.Fatal(err)
			}
			wrote, err := Ensure(d, tt.hosts, tt.at)
			if err != nil || wrote != tt.wantWrite {
				t.Fatalf("Ensure = %v, %v; want wrote=%v", wrote, err, tt.wantWrite)
			}
		})
	}
	if _, err := Ensure(t.TempDir(), nil, now); err == nil {
		t.Error("Ensure without hosts succeeded")
	}
}
