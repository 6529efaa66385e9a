package usertoken

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	clientauthv1beta1 "k8s.io/client-go/pkg/apis/clientauthentication/v1beta1"
	"sigs.k8s.io/yaml"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStaticFile(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
		wantErr string
	}{
		{"plain", "kg-sandbox-alice-token", "kg-sandbox-alice-token", ""},
		{"trailing newline", "glpat-abc\n", "glpat-abc", ""},
		{"empty", "\n", "", "is empty"},
		{"two words", "glpat-a glpat-b", "", "only the token"},
		{"whole credential", "pat:1:glpat-abc", "", "only the token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := StaticFile{Path: writeFile(t, tt.content)}.Token(t.Context())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "glpat") {
					t.Fatalf("error %q quotes the file's content", err)
				}
				return
			}
			if err != nil || tok.Secret != tt.want || !tok.ExpiresAt.IsZero() {
				t.Fatalf("Token = %+v, %v; want %q without expiry", tok, err, tt.want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := StaticFile{Path: filepath.Join(t.TempDir(), "nope")}.Token(t.Context())
		if err == nil || !strings.Contains(err.Error(), "--token-file") {
			t.Fatalf("err = %v, want one naming --token-file", err)
		}
	})
}

func TestResolveGitLabToken(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvGitLabToken {
				return v
			}
			return ""
		}
	}
	tests := []struct {
		name    string
		file    string
		env     string
		want    string
		wantErr error
	}{
		{"environment", "", "glpat-env", "glpat-env", nil},
		{"file wins", "glpat-file\n", "glpat-env", "glpat-file", nil},
		{"neither", "", "", "", ErrNoGitLabToken},
		{"blank environment", "", "  ", "", ErrNoGitLabToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			got, err := ResolveGitLabToken(path, env(tt.env))
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("ResolveGitLabToken = %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	t.Run("the message says what to do", func(t *testing.T) {
		for _, w := range []string{"GITLAB_TOKEN", "--gitlab-token-file", "api scope"} {
			if !strings.Contains(ErrNoGitLabToken.Error(), w) {
				t.Errorf("%q does not mention %s", ErrNoGitLabToken, w)
			}
		}
	})
	t.Run("empty file", func(t *testing.T) {
		if _, err := ResolveGitLabToken(writeFile(t, ""), env("glpat-env")); err == nil || !strings.Contains(err.Error(), "--gitlab-token-file") {
			t.Fatalf("err = %v, want an empty-file error (not a silent fall-back to the environment)", err)
		}
	})
}

func TestExecCredential(t *testing.T) {
	expiry := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		tok         Token
		info        string
		wantVersion string
		wantExpiry  string // RFC 3339, "" for none
		wantErr     string
	}{
		{"run by hand", Token{Secret: "glpat-x", ExpiresAt: expiry}, "", APIVersionV1, "2025-06-01T23:55:00Z", ""},
		{"kubectl asks v1", Token{Secret: "glpat-x", ExpiresAt: expiry},
			`{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}`, APIVersionV1, "2025-06-01T23:55:00Z", ""},
		{"kubectl asks v1beta1", Token{Secret: "glpat-x", ExpiresAt: expiry},
			`{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{}}`, APIVersionV1beta1, "2025-06-01T23:55:00Z", ""},
		{"static token: no expiry", Token{Secret: "kg-sandbox-alice-token"}, "", APIVersionV1, "", ""},
		{"unknown version", Token{Secret: "x"}, `{"apiVersion":"client.authentication.k8s.io/v1alpha1"}`, "", "", "set the kubeconfig user's exec apiVersion"},
		{"not JSON", Token{Secret: "x"}, `{`, "", "", "KUBERNETES_EXEC_INFO"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := ExecCredential(42, tt.tok, tt.info)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Decode strictly with client-go's own types, as kubectl does.
			var status *clientauthv1.ExecCredentialStatus
			var kind, version string
			switch tt.wantVersion {
			case APIVersionV1:
				var c clientauthv1.ExecCredential
				if err := yaml.UnmarshalStrict(out, &c); err != nil {
					t.Fatal(err)
				}
				kind, version, status = c.Kind, c.APIVersion, c.Status
			case APIVersionV1beta1:
				var c clientauthv1beta1.ExecCredential
				if err := yaml.UnmarshalStrict(out, &c); err != nil {
					t.Fatal(err)
				}
				kind, version = c.Kind, c.APIVersion
				status = &clientauthv1.ExecCredentialStatus{Token: c.Status.Token, ExpirationTimestamp: c.Status.ExpirationTimestamp}
			}
			if kind != "ExecCredential" || version != tt.wantVersion {
				t.Fatalf("kind/apiVersion = %s/%s, want ExecCredential/%s", kind, version, tt.wantVersion)
			}
			if want := "pat:42:" + tt.tok.Secret; status.Token != want {
				t.Fatalf("token = %q, want %q", status.Token, want)
			}
			got := ""
			if status.ExpirationTimestamp != nil {
				got = status.ExpirationTimestamp.UTC().Format(time.RFC3339)
			}
			if got != tt.wantExpiry {
				t.Fatalf("expirationTimestamp = %q, want %q", got, tt.wantExpiry)
			}
		})
	}
}

func TestExpiryDate(t *testing.T) {
	tests := []struct {
		name string
		now  time.Time
		d    time.Duration
		want string
	}{
		{"morning", time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC), 24 * time.Hour, "2025-06-02"},
		{"midnight exactly", time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), 24 * time.Hour, "2025-06-02"},
		{"6 minutes left", time.Date(2025, 6, 1, 23, 54, 0, 0, time.UTC), 24 * time.Hour, "2025-06-02"},
		{"5 minutes left", time.Date(2025, 6, 1, 23, 55, 0, 0, time.UTC), 24 * time.Hour, "2025-06-03"},
		{"non-UTC clock", time.Date(2025, 6, 1, 20, 0, 0, 0, time.FixedZone("UTC-5", -5*3600)), 24 * time.Hour, "2025-06-03"},
		{"month end", time.Date(2025, 6, 30, 12, 0, 0, 0, time.UTC), 48 * time.Hour, "2025-07-02"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExpiryDate(tt.now, tt.d, ExpiryBuffer).Format(time.DateOnly); got != tt.want {
				t.Fatalf("ExpiryDate = %s, want %s", got, tt.want)
			}
		})
	}
}
