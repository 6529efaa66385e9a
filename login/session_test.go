package login

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
)

// Logout needs the session AND its CSRF token; without them nothing is revoked.
// After it, the old cookie is refused by SessionPath and by the session
// authenticator ext_authz uses.
func TestLogout(t *testing.T) {
	f := newFixture(t)
	other := f.browser()
	other.login("bob", "bob-password")
	otherInfo, _ := other.session()
	tests := []struct {
		name     string
		hdr      http.Header
		body     string
		wantCode int
	}{
		{name: "no CSRF token", wantCode: 401},
		{name: "another session's CSRF token", hdr: http.Header{"X-Csrf-Token": {otherInfo.CSRFToken}}, wantCode: 401},
		{name: "an empty CSRF token", hdr: http.Header{"X-Csrf-Token": {""}}, wantCode: 401},
		{name: "two CSRF headers", hdr: http.Header{"X-Csrf-Token": {"{csrf}", "{csrf}"}}, wantCode: 401},
		{name: "CSRF in the query only", body: "", hdr: http.Header{}, wantCode: 401},
		{name: "foreign Origin with the token", hdr: http.Header{"Origin": {"https://evil.example"}, "X-Csrf-Token": {"{csrf}"}}, wantCode: 403},
	}
	b := f.browser()
	b.login("alice", "alice-password")
	info, _ := b.session()
	cookie := b.cookies[contract.SessionCookie].Value
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{}
			for k, vs := range tt.hdr {
				for _, v := range vs {
					hdr.Add(k, strings.ReplaceAll(v, "{csrf}", info.CSRFToken))
				}
			}
			path := contract.LogoutPath
			if tt.name == "CSRF in the query only" {
				path += "?csrf_token=" + url.QueryEscape(info.CSRFToken)
			}
			resp := b.do("POST", path, strings.NewReader(tt.body), hdr)
			read(t, resp)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("got %s, want %d", resp.Status, tt.wantCode)
			}
			if _, code := b.session(); code != 200 {
				t.Fatalf("the session was revoked: %d", code)
			}
		})
	}
	t.Run("with the CSRF token in the form", func(t *testing.T) {
		resp := b.do("POST", contract.LogoutPath, strings.NewReader(url.Values{"csrf_token": {info.CSRFToken}}.Encode()),
			http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {publicURL}})
		read(t, resp)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != contract.LoginPath {
			t.Fatalf("got %s to %q", resp.Status, resp.Header.Get("Location"))
		}
		if b.cookies[contract.SessionCookie] != nil {
			t.Fatal("the cookie was not cleared")
		}
	})
	t.Run("the old cookie is refused afterwards", func(t *testing.T) {
		replay := f.browser()
		replay.cookies[contract.SessionCookie] = &http.Cookie{Name: contract.SessionCookie, Value: cookie, Path: "/"}
		if _, code := replay.session(); code != 401 {
			t.Fatalf("SessionPath answered %d to a logged-out cookie", code)
		}
		_, ok, err := f.sessions.Authenticator(f.users()).Authenticate(context.Background(),
			identity.Credential{Type: identity.AccessSessionCookie, AgentID: 1, Secret: cookie, CSRF: info.CSRFToken})
		var e *identity.Error
		if ok || !errors.As(err, &e) || e.Reason != identity.ReasonRevoked {
			t.Fatalf("the authenticator answered %v %v to a logged-out cookie", ok, err)
		}
		resp := replay.do("POST", contract.LogoutPath, nil, http.Header{"X-Csrf-Token": {info.CSRFToken}})
		read(t, resp)
		if resp.StatusCode != 401 {
			t.Fatalf("logout with a logged-out cookie: %s", resp.Status)
		}
	})
	t.Run("fetch logout: 204", func(t *testing.T) {
		if _, code := other.session(); code != 200 {
			t.Fatal("bob's session ended with alice's")
		}
		resp := other.do("POST", contract.LogoutPath, nil, http.Header{"X-Csrf-Token": {otherInfo.CSRFToken}, "Accept": {"application/json"}})
		read(t, resp)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("got %s", resp.Status)
		}
		if _, code := other.session(); code != 401 {
			t.Fatal("still logged in")
		}
	})
}

// No password, cookie, CSRF token, code, state, verifier, ID token or client
// secret reaches the log, over every flow the handler serves.
func TestNoSecretInLogs(t *testing.T) {
	f := newFixture(t)
	b := f.browser()
	var secrets []string
	b.login("alice", "alice-password")
	secrets = append(secrets, "alice-password", b.cookies[contract.SessionCookie].Value)
	info, _ := b.session()
	secrets = append(secrets, info.CSRFToken)
	f.browser().postLogin(url.Values{"username": {"alice"}, "password": {"wrong-guess-123"}}, sameOrigin).Body.Close()
	f.browser().postLogin(url.Values{"username": {"mallory"}, "password": {"mallory-password"}}, sameOrigin).Body.Close()
	f.browser().postLogin(url.Values{"username": {"alice"}, "password": {"cross-site-pw"}}, http.Header{"Origin": {"https://evil.example"}}).Body.Close()
	secrets = append(secrets, "wrong-guess-123", "mallory-password", "cross-site-pw")
	b.do("POST", contract.LogoutPath, nil, http.Header{"X-Csrf-Token": {"wrong-csrf-token-value"}}).Body.Close()
	secrets = append(secrets, "wrong-csrf-token-value")

	o := f.browser()
	auth := o.startOIDC("")
	secrets = append(secrets, o.cookies[LoginCookie].Value, auth.Query().Get("state"), auth.Query().Get("nonce"), auth.Query().Get("code_challenge"), f.secret)
	cb := o.atProvider(auth)
	cbURL, _ := url.Parse(cb)
	secrets = append(secrets, cbURL.Query().Get("code"))
	o.callback(cb)
	secrets = append(secrets, o.cookies[contract.SessionCookie].Value)
	o.callback(cb) // a replay, refused
	b.do("POST", contract.LogoutPath, nil, http.Header{"X-Csrf-Token": {info.CSRFToken}}).Body.Close()

	logs := f.logs.String()
	if !strings.Contains(logs, "logged in") || !strings.Contains(logs, "password login refused") || !strings.Contains(logs, "logged out") {
		t.Fatalf("the log lacks the events:\n%s", logs)
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("a secret of the test is empty")
		}
		if strings.Contains(logs, s) {
			t.Errorf("the log contains a secret %.12q…", s)
		}
	}
	if strings.Contains(logs, "eyJ") {
		t.Error("the log contains a JWT")
	}
}
