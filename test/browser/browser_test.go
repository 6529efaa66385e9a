package browser

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"kubegate.dev/kubegate/dashboard"
)

// pages serves small documents under the Dashboard's Content-Security-Policy.
func pages() http.Handler {
	mux := http.NewServeMux()
	page := func(path, body string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			dashboard.SecurityHeaders(w.Header())
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write([]byte(body))
		})
	}
	page("/clean", `<!doctype html><title>clean</title><link rel="stylesheet" href="/s.css"><script src="/s.js"></script><p id="p">clean</p>`)
	page("/inline", `<!doctype html><title>inline</title><p id="p" style="color:red">x</p><script>document.title='ran'</script>`)
	mux.HandleFunc("/s.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css")
		_, _ = w.Write([]byte("p { color: green }"))
	})
	mux.HandleFunc("/s.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		_, _ = w.Write([]byte("console.log('hello from s.js');"))
	})
	mux.HandleFunc("/cookie", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "c", Value: "v", Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
		_, _ = w.Write([]byte("<!doctype html><title>cookie</title>"))
	})
	return mux
}

func tlsServer(t *testing.T) *httptest.Server {
	ts := httptest.NewUnstartedServer(pages())
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// TestCSPViolationsAreSeen: the probe reports what the policy blocked, and nothing
// on a page that keeps to it, so "zero violations" in the Dashboard's test means
// something.
func TestCSPViolationsAreSeen(t *testing.T) {
	ts := tlsServer(t)
	p := Start(t, Options{TrustCertificates: []*x509.Certificate{ts.Certificate()}})
	tests := []struct {
		name, path string
		want       []string // substrings, each in some violation
	}{
		{name: "clean page", path: "/clean"},
		{name: "inline script and style attribute", path: "/inline", want: []string{"script-src", "style-src"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := p.For(t)
			p.Navigate(ts.URL + tt.path)
			p.WaitVisible("#p")
			if len(tt.want) > 0 {
				p.WaitFor("CSP violations", fmt.Sprintf(`window.__kubegateCSP.length >= %d ? 'yes' : ''`, len(tt.want)))
			} else {
				p.WaitText("#p", "clean")
			}
			got := p.CSPViolations()
			if len(tt.want) == 0 && len(got) != 0 {
				t.Fatalf("violations on a clean page: %q", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(strings.Join(got, "\n"), w) {
					t.Errorf("no violation of %s among %q", w, got)
				}
			}
		})
	}
	if title := Eval[string](p, "title", "document.title"); title == "ran" {
		t.Errorf("the inline script ran despite the policy")
	}
}

// TestOnlyTheGivenCertificateIsTrusted: without the server's certificate in
// TrustCertificates the page does not load (no blanket --ignore-certificate-errors).
func TestOnlyTheGivenCertificateIsTrusted(t *testing.T) {
	ts := tlsServer(t)
	t.Run("trusted", func(t *testing.T) {
		p := Start(t, Options{TrustCertificates: []*x509.Certificate{ts.Certificate()}})
		p.Navigate(ts.URL + "/clean")
		if got := p.Text("#p"); got != "clean" {
			t.Fatalf("text %q", got)
		}
	})
	t.Run("not trusted", func(t *testing.T) {
		// Every httptest server has the same built-in certificate: the trusted one
		// here is a new key's.
		p := Start(t, Options{TrustCertificates: []*x509.Certificate{newCert(t)}, StepTimeout: 10 * time.Second})
		err := p.try("navigate to an untrusted server", chromedp.Navigate(ts.URL+"/clean"))
		if err == nil || !strings.Contains(err.Error(), "ERR_CERT") {
			t.Fatalf("navigation to a server with an untrusted certificate: %v, want a net::ERR_CERT_... error", err)
		}
	})
}

func newCert(t *testing.T) *x509.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCookieAttributes(t *testing.T) {
	ts := tlsServer(t)
	p := Start(t, Options{TrustCertificates: []*x509.Certificate{ts.Certificate()}})
	p.Navigate(ts.URL + "/cookie")
	c := p.Cookie(ts.URL, "c")
	if c == nil {
		t.Fatalf("no cookie c among %v", p.Cookies(ts.URL))
	}
	if !c.Secure || !c.HTTPOnly || c.SameSite != network.CookieSameSiteLax || c.Path != "/" || !c.Session || c.Domain != "127.0.0.1" {
		t.Errorf("cookie %+v: want Secure, HttpOnly, SameSite=Lax, Path=/, a session cookie for host 127.0.0.1", *c)
	}
}

// TestFailureArtifacts: what a failed test leaves: a screenshot per recorded step,
// the steps' index, the page and the console.
func TestFailureArtifacts(t *testing.T) {
	ts := tlsServer(t)
	dir := t.TempDir()
	t.Setenv(EnvArtifacts, dir)
	p := Start(t, Options{TrustCertificates: []*x509.Certificate{ts.Certificate()}, KeepSteps: 2})
	p.Navigate(ts.URL + "/clean")
	p.WaitVisible("#p")
	p.WaitFor("the console line", `document.title`)
	p.WaitText("#p", "clean")
	p.dump("asked by the test")
	got := p.ArtifactsDir()
	if !strings.HasPrefix(got, dir) {
		t.Fatalf("artifacts in %q, want under %s", got, dir)
	}
	pngs, _ := filepath.Glob(filepath.Join(got, "*.png"))
	if len(pngs) != 2 {
		t.Errorf("%d screenshots %v, want the last 2 steps'", len(pngs), pngs)
	}
	for _, f := range pngs {
		b, err := os.ReadFile(f)
		if err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Errorf("%s is not a PNG (%v)", f, err)
		}
	}
	for file, want := range map[string]string{
		"steps.txt":   "asked by the test",
		"console.log": "hello from s.js",
		"page.html":   `<p id="p">clean</p>`,
	} {
		b, err := os.ReadFile(filepath.Join(got, file))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %v; want it to contain %q, got:\n%s", file, err, want, b)
		}
	}
}

// fatalRecorder is a test whose Fatalf is recorded (and ends its goroutine, as the
// real one does).
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestNoChromiumFails: a browser test on a machine without chromium fails, naming
// the install command; it does not skip.
func TestNoChromiumFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv(EnvChromium, "")
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(rec, Options{})
	}()
	<-done
	for _, want := range []string{"no `chromium` on PATH", "apt-get install -y chromium", "test/tools/build.sh"} {
		if !strings.Contains(rec.msg, want) {
			t.Errorf("failure %q lacks %q", rec.msg, want)
		}
	}
}
