// Package browser drives Debian's chromium, headless, with chromedp, for the tests
// of kubegate's browser half (the Dashboard, the login pages). Each test gets its
// own browser (its own profile, cookies and cache) and a Page whose steps are
// recorded: on failure, a screenshot of the page after each of the last steps, the
// page's HTML and the browser console go to a directory that outlives the test
// ($KUBEGATE_ARTIFACTS, or a new directory under the system's temporary one), and
// the test log says where.
//
// A test that needs the browser and finds none fails, naming the install command:
// the test bed installs it (test/tools/build.sh), so a missing browser is a broken
// machine, not a reason to skip.
package browser

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// InstallHint is what to run when chromium is missing.
const InstallHint = "run test/tools/build.sh as root (it runs `apt-get install -y chromium`), or: sudo apt-get update && sudo apt-get install -y chromium"

// EnvChromium names another chromium binary (default: `chromium` on PATH).
const EnvChromium = "KUBEGATE_CHROMIUM"

// EnvArtifacts is where failed tests leave their screenshots and console logs.
const EnvArtifacts = "KUBEGATE_ARTIFACTS"

// Options configure Start. The zero value is usable for plain-HTTP pages and for
// TLS servers whose certificate is given in TrustCertificates.
type Options struct {
	// TrustCertificates are certificates whose servers chromium accepts. Chromium on
	// Linux reads its trust anchors only from an NSS database ($HOME/.pki/nssdb),
	// which needs NSS's certutil (another package) to write; instead each
	// certificate's SubjectPublicKeyInfo hash goes to
	// --ignore-certificate-errors-spki-list, which accepts a chain only when a
	// certificate in it, as the server sends it, has one of these keys
	// (chromium services/network/ignore_errors_cert_verifier.h). Every other
	// certificate error still fails, unlike --ignore-certificate-errors. Give the
	// server's own certificate (the CA too is fine when the server sends it).
	TrustCertificates []*x509.Certificate
	// Timeout bounds the whole test's browsing. Default: 3 minutes.
	Timeout time.Duration
	// StepTimeout bounds one step (a wait, a click). Default: 30 s.
	StepTimeout time.Duration
	// KeepSteps is how many steps' screenshots are kept for a failure. Default: 12.
	KeepSteps int
	// Width and Height of the window. Default: 1280×900.
	Width, Height int
}

// CertificatesFromPEMFile reads every certificate of a PEM file, for
// Options.TrustCertificates (e.g. envoy/devcert's tls.crt and ca.crt).
func CertificatesFromPEMFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return out, nil
}

// SPKIHash is chromium's form of a certificate's key for
// --ignore-certificate-errors-spki-list: base64 of SHA-256 of the DER
// SubjectPublicKeyInfo.
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// FindChromium returns the browser binary, or an error saying how to install it.
func FindChromium() (string, error) {
	if p := os.Getenv(EnvChromium); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvChromium, p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		return "", fmt.Errorf("no `chromium` on PATH (Debian's chromium package is not installed); %s", InstallHint)
	}
	return p, nil
}

// step is one recorded step: its name, the error if it failed, and a screenshot of
// the page afterwards.
type step struct {
	seq  int
	name string
	url  string
	err  error
	png  []byte
	at   time.Time
}

// session is one browser and tab, shared by a Page and its subtest views.
type session struct {
	root    testing.TB
	opts    Options
	ctx     context.Context // the tab's context: the browser lives as long as it
	actx    context.Context // ctx with the test's deadline
	cancels []context.CancelFunc

	mu      sync.Mutex
	seq     int
	steps   []step // the last opts.KeepSteps
	console []string
	dumped  map[int]bool // steps already written, by seq
	dumpDir string
}

// Page is a browser tab bound to a test. Its methods fail the test (t.Fatalf) when
// a step fails, after saving the artifacts. Use For in subtests.
type Page struct {
	*session
	t testing.TB
}

// cspProbe runs before every document's own scripts (Page.addScriptToEvaluateOnNewDocument):
// it records each Content-Security-Policy violation the document reports
// (the securitypolicyviolation event, CSP Level 3 §5.3), so a test can assert none.
const cspProbe = `(() => {
  const seen = [];
  Object.defineProperty(window, '__kubegateCSP', { value: seen });
  document.addEventListener('securitypolicyviolation', (e) => {
    seen.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at ' + e.sourceFile + ':' + e.lineNumber);
  });
})();`

// Start opens a headless chromium for t. It fails t when the browser is missing or
// does not start. The browser stops when t ends; when t failed, the artifacts are
// saved first.
func Start(t testing.TB, opts Options) *Page {
	t.Helper()
	bin, err := FindChromium()
	if err != nil {
		t.Fatalf("this test drives a real browser: %v", err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Minute
	}
	if opts.StepTimeout <= 0 {
		opts.StepTimeout = 30 * time.Second
	}
	if opts.KeepSteps <= 0 {
		opts.KeepSteps = 12
	}
	if opts.Width <= 0 || opts.Height <= 0 {
		opts.Width, opts.Height = 1280, 900
	}
	flags := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		// The new headless mode is the real browser without a window
		// (developer.chrome.com/docs/chromium/headless); the old one is a separate
		// implementation.
		chromedp.Flag("headless", "new"),
		chromedp.WindowSize(opts.Width, opts.Height),
	)
	if os.Geteuid() == 0 {
		// Chromium's sandbox refuses to run as root; as root (the test bed's
		// containers) there is no other way. An ordinary user keeps the sandbox.
		flags = append(flags, chromedp.NoSandbox)
	}
	if len(opts.TrustCertificates) > 0 {
		hashes := make([]string, len(opts.TrustCertificates))
		for i, c := range opts.TrustCertificates {
			hashes[i] = SPKIHash(c)
		}
		flags = append(flags, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(hashes, ",")))
	}
	s := &session{root: t, opts: opts, dumped: map[int]bool{}}
	// Not t.Context(): it ends before the cleanups run, and the failure artifacts
	// need the browser.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), flags...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	s.ctx = ctx
	s.cancels = append(s.cancels, cancelAlloc, cancelCtx)
	t.Cleanup(s.close)
	p := &Page{session: s, t: t}
	t.Cleanup(func() {
		if t.Failed() {
			p.dump("test failed")
		}
	})
	// The first action starts the browser, without a deadline (a deadline on it
	// would end the browser with it: chromedp's Run doc).
	console := chromedp.Console(ctx)
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspProbe})
		return err
	})); err != nil {
		t.Fatalf("starting chromium (%s): %v", bin, err)
	}
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			line := fmt.Sprintf("%s %s %s", m.Time.UTC().Format("15:04:05.000"), m.Type, m.String())
			if m.URL != "" {
				line += fmt.Sprintf(" (%s:%d)", m.URL, m.Line+1)
			}
			s.mu.Lock()
			if len(s.console) < 5000 {
				s.console = append(s.console, line)
			}
			s.mu.Unlock()
		}
	}()
	actx, cancelDeadline := context.WithTimeout(ctx, opts.Timeout)
	s.actx = actx
	s.cancels = append(s.cancels, cancelDeadline)
	return p
}

func (s *session) close() {
	for i := len(s.cancels) - 1; i >= 0; i-- {
		s.cancels[i]()
	}
}

// For returns the page bound to a subtest: its failures fail st, and st's failure
// saves the artifacts too.
func (p *Page) For(st testing.TB) *Page {
	q := &Page{session: p.session, t: st}
	st.Cleanup(func() {
		if st.Failed() {
			q.dump(st.Name() + " failed")
		}
	})
	return q
}

// T is the test the page fails.
func (p *Page) T() testing.TB { return p.t }

// Context is the tab's context with the test's deadline, for chromedp calls of
// one's own (chromedp.Run(p.Context(), ...)).
func (p *Page) Context() context.Context { return p.actx }

// Step runs actions as one named step, with StepTimeout, and records a screenshot
// afterwards. A failure saves the artifacts and fails the test.
func (p *Page) Step(name string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	err := p.try(name, actions...)
	if err != nil {
		p.dump(fmt.Sprintf("step %q failed", name))
		p.t.Fatalf("browser step %q: %v", name, err)
	}
}

// try runs a step and records it; it returns the step's error.
func (p *Page) try(name string, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(p.actx, p.opts.StepTimeout)
	err := chromedp.Do(ctx, actions...)
	cancel()
	p.record(name, err)
	return err
}

// record takes the screenshot of a step (with its own short deadline: the step's
// may be spent).
func (p *Page) record(name string, stepErr error) {
	// Short: a page in the middle of a navigation answers no screenshot, and the
	// step is not worth waiting long for.
	ctx, cancel := context.WithTimeout(p.ctx, 3*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		png = nil
	}
	url, _ := chromedp.Run(ctx, chromedp.Location())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.steps = append(p.steps, step{seq: p.seq, name: name, url: url, err: stepErr, png: png, at: time.Now()})
	if n := len(p.steps) - p.opts.KeepSteps; n > 0 {
		p.steps = append([]step(nil), p.steps[n:]...)
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// dump writes the recorded steps not yet written, the page's HTML and the console
// into the artifacts directory, and logs where it is.
func (p *Page) dump(why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dumpDir == "" {
		base := os.Getenv(EnvArtifacts)
		name := "browser-" + unsafeName.ReplaceAllString(p.root.Name(), "_") + "-"
		var err error
		if base != "" {
			if err = os.MkdirAll(base, 0o755); err == nil {
				p.dumpDir, err = os.MkdirTemp(base, name)
			}
		} else {
			p.dumpDir, err = os.MkdirTemp("", "kubegate-"+name)
		}
		if err != nil {
			p.t.Logf("browser artifacts: cannot create a directory: %v", err)
			return
		}
	}
	var index strings.Builder
	if b, err := os.ReadFile(filepath.Join(p.dumpDir, "steps.txt")); err == nil {
		index.Write(b)
	}
	fmt.Fprintf(&index, "--- %s (%s)\n", why, time.Now().UTC().Format(time.RFC3339))
	for _, s := range p.steps {
		if p.dumped[s.seq] {
			continue
		}
		p.dumped[s.seq] = true
		file := fmt.Sprintf("%03d-%s.png", s.seq, unsafeName.ReplaceAllString(s.name, "_"))
		if len(s.png) > 0 {
			_ = os.WriteFile(filepath.Join(p.dumpDir, file), s.png, 0o644)
		} else {
			file = "(no screenshot)"
		}
		status := "ok"
		if s.err != nil {
			status = "FAILED: " + s.err.Error()
		}
		fmt.Fprintf(&index, "%03d %s %q at %s: %s; %s\n", s.seq, s.at.UTC().Format("15:04:05.000"), s.name, s.url, status, file)
	}
	_ = os.WriteFile(filepath.Join(p.dumpDir, "steps.txt"), []byte(index.String()), 0o644)
	_ = os.WriteFile(filepath.Join(p.dumpDir, "console.log"), []byte(strings.Join(p.console, "\n")+"\n"), 0o644)
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	cancel()
	if err == nil {
		_ = os.WriteFile(filepath.Join(p.dumpDir, "page.html"), []byte(html), 0o644)
	}
	p.t.Logf("browser artifacts (%s): screenshots of the last %d steps, steps.txt, page.html and console.log in %s",
		why, p.opts.KeepSteps, p.dumpDir)
}

// ArtifactsDir is where the artifacts went, or "" when nothing was saved.
func (p *Page) ArtifactsDir() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dumpDir
}

// Console returns the browser console so far: console API calls, uncaught
// exceptions and the browser's own log entries (CSP refusals among them).
func (p *Page) Console() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.console...)
}

// CSPViolations returns the Content-Security-Policy violations the current
// document reported (the probe's record) and the console lines that report one.
func (p *Page) CSPViolations() []string {
	p.t.Helper()
	var out []string
	raw := Eval[[]string](p, "read the CSP violations", `window.__kubegateCSP ? Array.from(window.__kubegateCSP) : ['the CSP probe did not run in this document']`)
	out = append(out, raw...)
	for _, line := range p.Console() {
		if strings.Contains(line, "Content Security Policy") {
			out = append(out, line)
		}
	}
	return out
}

// AddInitScript runs js before the scripts of every document the page loads from
// now on (Page.addScriptToEvaluateOnNewDocument; like the CSP probe it is the
// test's, not the page's, so the page's CSP does not apply to it).
func (p *Page) AddInitScript(js string) {
	p.t.Helper()
	p.Step("add an init script", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: js})
		return err
	}))
}

// Navigate loads url and waits for its load event.
func (p *Page) Navigate(url string) {
	p.t.Helper()
	p.Step("navigate to "+url, chromedp.Navigate(url))
}

// WaitVisible waits until the CSS selector's element is visible.
func (p *Page) WaitVisible(sel string) {
	p.t.Helper()
	p.Step("wait for "+sel, chromedp.WaitVisible(chromedp.CSS(sel)))
}

// WaitGone waits until no element matches the CSS selector.
func (p *Page) WaitGone(sel string) {
	p.t.Helper()
	p.Step("wait for no "+sel, chromedp.WaitNotPresent(chromedp.CSS(sel)))
}

// Click clicks the CSS selector's element (once visible).
func (p *Page) Click(sel string) {
	p.t.Helper()
	p.Step("click "+sel, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel)))
}

// Type focuses the element and types text (kb.Enter etc. for keys).
func (p *Page) Type(sel, text string) {
	p.t.Helper()
	p.Step("type into "+sel, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.SendKeys(chromedp.CSS(sel), text))
}

// SetValue replaces a field's value (no key events; for a <select>, choose with
// Select).
func (p *Page) SetValue(sel, value string) {
	p.t.Helper()
	p.Step("set "+sel, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.SetValue(chromedp.CSS(sel), value))
}

// Select picks an <option> of a <select> by value and fires its change event, as a
// person choosing would.
func (p *Page) Select(sel, value string) {
	p.t.Helper()
	js := fmt.Sprintf(`(() => { const s = document.querySelector(%s); s.value = %s; s.dispatchEvent(new Event('change', {bubbles: true})); return s.value; })()`, jsString(sel), jsString(value))
	got := Eval[string](p, "choose "+value+" in "+sel, js)
	if got != value {
		p.dump("select")
		p.t.Fatalf("%s has no option %q", sel, value)
	}
}

// Press sends keys to the focused element (kb.Tab, kb.Enter, plain text).
func (p *Page) Press(keys string) {
	p.t.Helper()
	name := keys
	switch keys {
	case kb.Tab:
		name = "Tab"
	case kb.Enter:
		name = "Enter"
	case kb.Escape:
		name = "Escape"
	}
	p.Step("press "+name, chromedp.KeyEvent(keys))
}

// Text returns the visible text of the CSS selector's element.
func (p *Page) Text(sel string) string {
	p.t.Helper()
	var text string
	p.Step("read "+sel, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var err error
		text, err = chromedp.Text(chromedp.CSS(sel))(ctx, t)
		return err
	}))
	return text
}

// WaitText waits until the element's text contains want (its textContent, so it
// works for hidden and scrolled-away text too) and returns the text.
func (p *Page) WaitText(sel, want string) string {
	p.t.Helper()
	return p.WaitFor(fmt.Sprintf("%s to contain %q", sel, want), fmt.Sprintf(
		`(() => { const e = document.querySelector(%s); const t = e ? e.textContent : ''; return t.includes(%s) ? t : ''; })()`,
		jsString(sel), jsString(want)))
}

// WaitFor polls a JavaScript expression (a promise is awaited) until it is a
// non-empty string (a condition that also says what it saw) and returns it.
func (p *Page) WaitFor(what, expr string) string {
	p.t.Helper()
	var got string
	err := p.try("wait for "+what, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for {
			v, err := chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise)(ctx, t)
			if err != nil {
				return err
			}
			if v != "" {
				got = v
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("timed out: %w", ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}))
	if err != nil {
		p.dump(fmt.Sprintf("wait for %s failed", what))
		p.t.Fatalf("browser: waiting for %s: %v", what, err)
	}
	return got
}

// Eval evaluates a JavaScript expression in the page (awaiting a promise) and
// decodes its JSON value into T.
func Eval[T any](p *Page, name, expr string) T {
	p.t.Helper()
	var out T
	err := p.try(name, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		raw, err := chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise)(ctx, t)
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &out)
	}))
	if err != nil {
		p.dump(fmt.Sprintf("%s failed", name))
		p.t.Fatalf("browser: %s: %v", name, err)
	}
	return out
}

// Cookies returns the browser's cookies for the URLs, with their attributes
// (Network.getCookies).
func (p *Page) Cookies(urls ...string) []*network.Cookie {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.actx, p.opts.StepTimeout)
	defer cancel()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: urls})
	if err != nil {
		p.dump("reading cookies failed")
		p.t.Fatalf("browser: reading cookies for %v: %v", urls, err)
	}
	return res.Cookies
}

// Cookie returns the named cookie for url, or nil.
func (p *Page) Cookie(url, name string) *network.Cookie {
	p.t.Helper()
	for _, c := range p.Cookies(url) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Screenshot records a named step with a screenshot and nothing else (to mark a
// moment in the artifacts).
func (p *Page) Screenshot(name string) { p.record(name, nil) }

// jsString quotes s as a JavaScript string literal (JSON is one).
func jsString(s string) string {
	b, err := json.Marshal(s)
	if err != nil { // a Go string always encodes
		panic(errors.Join(errors.New("jsString"), err))
	}
	return string(b)
}
