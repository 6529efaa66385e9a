package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/contract"
)

func sessionKeyFile(t *testing.T, dir string) string {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	file := filepath.Join(dir, "session-keys")
	if err := os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func sessionCheck(cookie, csrf, origin string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Id: "t", Method: "GET", Path: "/k8s-proxy/api/v1/namespaces/demo/pods",
		HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "cookie", RawValue: []byte(contract.SessionCookie + "=" + cookie)},
			{Key: "gitlab-agent-id", RawValue: []byte("1")},
			{Key: "x-csrf-token", RawValue: []byte(csrf)},
			{Key: "origin", RawValue: []byte(origin)},
		}},
	}}}}
}

// kubegate authz with --browser-listen: alice logs in with her sandbox password
// over HTTP, reads her session (her agent listed), her session cookie passes
// ext_authz, and after logout neither the session endpoint nor ext_authz accepts
// the cookie. The passwords never reach the log.
func TestAuthzBrowserLogin(t *testing.T) {
	dir := t.TempDir()
	sock := "unix://" + filepath.Join(dir, "authz.sock")
	browserAddr := freeAddr(t)
	public := "http://" + browserAddr
	p := startProcess(t, "authz", "--listen", sock, "--agent-id", "1", "--config-project-id", "1",
		"--agent-config", sandboxConfig, "--directory", sandboxDirectory,
		"--session-key-file", sessionKeyFile(t, dir), "--browser-listen", browserAddr, "--public-url", public, "--log-level", "info")
	conn := dial(t, sock)
	waitServing(t, conn, "envoy.service.auth.v3.Authorization", p)
	client := authv3.NewAuthorizationClient(conn)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, body string, hdr http.Header) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, public+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = hdr
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	if resp, body := do("GET", contract.LoginPath, "", http.Header{}); resp.StatusCode != 200 || !strings.Contains(body, `name="password"`) {
		t.Fatalf("login page: %s\n%s", resp.Status, body)
	}
	form := "application/x-www-form-urlencoded"
	resp, _ := do("POST", contract.LoginPath, url.Values{"username": {"alice"}, "password": {"wrong-sandbox-password"}}.Encode(),
		http.Header{"Origin": {public}, "Content-Type": {form}})
	if resp.StatusCode != 401 {
		t.Fatalf("a wrong password: %s", resp.Status)
	}
	resp, _ = do("POST", contract.LoginPath, url.Values{"username": {"alice"}, "password": {"alice-sandbox-password"}}.Encode(),
		http.Header{"Origin": {public}, "Content-Type": {form}})
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == contract.SessionCookie {
			cookie = c.Value
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == "" {
		t.Fatalf("alice's login: %s %v", resp.Status, resp.Header)
	}
	withCookie := func(h http.Header) http.Header {
		h.Set("Cookie", contract.SessionCookie+"="+cookie)
		return h
	}
	resp, body := do("GET", contract.SessionPath, "", withCookie(http.Header{}))
	var info contract.SessionInfo
	if err := json.Unmarshal([]byte(body), &info); err != nil || resp.StatusCode != 200 || info.User != "alice" || info.CSRFToken == "" ||
		len(info.Agents) != 1 || info.Agents[0].ID != 1 || info.Agents[0].AccessAs != "user" {
		t.Fatalf("session: %s %s", resp.Status, body)
	}
	if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("headers %v", resp.Header)
	}
	if r, err := client.Check(context.Background(), sessionCheck(cookie, info.CSRFToken, public)); err != nil || r.GetOkResponse() == nil {
		t.Fatalf("ext_authz refused alice's session: %v %v", r, err)
	}
	if r, _ := client.Check(context.Background(), sessionCheck(cookie, "not-the-token", public)); r.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("a wrong CSRF token passed ext_authz: %v", r)
	}

	if resp, _ := do("POST", contract.LogoutPath, "", withCookie(http.Header{})); resp.StatusCode != 401 {
		t.Fatalf("logout without the CSRF token: %s", resp.Status)
	}
	if resp, _ := do("POST", contract.LogoutPath, "", withCookie(http.Header{"X-Csrf-Token": {info.CSRFToken}})); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %s", resp.Status)
	}
	if resp, _ := do("GET", contract.SessionPath, "", withCookie(http.Header{})); resp.StatusCode != 401 {
		t.Fatalf("the session endpoint after logout: %s", resp.Status)
	}
	if r, _ := client.Check(context.Background(), sessionCheck(cookie, info.CSRFToken, public)); r.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("ext_authz accepted a logged-out session: %v", r)
	}
	sigterm(t, p)
	logs := p.log()
	for _, secret := range []string{"alice-sandbox-password", "wrong-sandbox-password", cookie, info.CSRFToken} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a secret reached the log: %.12q…", secret)
		}
	}
	for _, want := range []string{"serving the browser listener", `"msg":"logged in"`, `"msg":"logged out"`, "password login refused"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

func TestAuthzBrowserFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	keys := sessionKeyFile(t, dir)
	base := []string{"authz", "--listen", freeAddr(t), "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", sandboxDirectory}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no public URL", []string{"--browser-listen", freeAddr(t), "--session-key-file", keys}, "--browser-listen needs --public-url"},
		{"no session keys", []string{"--browser-listen", freeAddr(t), "--public-url", "https://kubegate.example.com"}, "--browser-listen needs --session-key-file"},
		{"plain http public URL", []string{"--browser-listen", freeAddr(t), "--session-key-file", keys, "--public-url", "http://kubegate.example.com"}, "plain http"},
		{"public URL with a path", []string{"--browser-listen", freeAddr(t), "--session-key-file", keys, "--public-url", "https://kubegate.example.com/x"}, "more than scheme, host and port"},
		{"browser client id without the listener", []string{"--oidc-browser-client-id", "x"}, "needs --browser-listen"},
		{"browser client id without an issuer", []string{"--browser-listen", freeAddr(t), "--session-key-file", keys, "--public-url", "https://k.example", "--oidc-browser-client-id", "x"}, "need --oidc-issuer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(kubegateBinary(t), append(base, tt.args...)...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Fatalf("err=%v out=%s, want %q", err, out, tt.want)
			}
		})
	}
}
