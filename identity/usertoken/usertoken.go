// Package usertoken is the user's side of kubegate's personal access token
// credential (access.md §2, §6): it obtains the token that `kubegate get-token` hands
// to kubectl, either by creating a short-lived k8s_proxy-scoped personal access token
// with the user's own GitLab token (the way `glab cluster agent get-token` does), or
// by reading a static token from a file (the sandbox, or a token made by hand), and it
// renders the client.authentication.k8s.io ExecCredential kubectl reads.
//
// It lives under identity/ because it is the client half of identity/gitlab: that
// package checks the tokens this one obtains.
package usertoken

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Token is a credential for the gateway, before it is wrapped as pat:<agent>:<token>.
type Token struct {
	Secret string
	// ExpiresAt is the instant the token stops working; zero when unknown (a static
	// token), in which case the ExecCredential carries no expiry.
	ExpiresAt time.Time
}

// Source obtains the token get-token prints.
type Source interface {
	Token(ctx context.Context) (Token, error)
}

// StaticFile is a Source that reads a token from a file each time, unchanged. The
// file holds the personal access token alone (surrounding whitespace is ignored).
type StaticFile struct {
	Path string
}

// Token reads the file.
func (s StaticFile) Token(context.Context) (Token, error) {
	secret, err := readSecretFile(s.Path, "token file (--token-file)")
	if err != nil {
		return Token{}, err
	}
	if strings.HasPrefix(secret, "pat:") {
		return Token{}, fmt.Errorf("the token file %s holds a whole gateway credential (pat:<agent-id>:<token>); put only the token in it, get-token adds the rest", s.Path)
	}
	return Token{Secret: secret}, nil
}

// readSecretFile reads a file that holds one secret. Messages name the file and what
// it is for, never its content.
func readSecretFile(path, what string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the %s: %w", what, err)
	}
	secret := strings.TrimSpace(string(data))
	if secret == "" {
		return "", fmt.Errorf("the %s %s is empty: put the token in it", what, path)
	}
	if strings.ContainsAny(secret, " \t\r\n") {
		return "", fmt.Errorf("the %s %s holds more than one line or word: put only the token in it", what, path)
	}
	return secret, nil
}

// EnvGitLabToken names the environment variable that can hold the user's GitLab token.
const EnvGitLabToken = "GITLAB_TOKEN"

// ErrNoGitLabToken is returned when neither --gitlab-token-file nor GITLAB_TOKEN
// supplies the user's GitLab token.
var ErrNoGitLabToken = errors.New("no GitLab token configured: kubegate needs a GitLab personal access token of yours with the api scope, " +
	"to create short-lived k8s_proxy tokens for kubectl. Create one (GitLab: User settings > Access tokens) and set " +
	EnvGitLabToken + "=<token>, or put it in a file and pass --gitlab-token-file FILE")

// ResolveGitLabToken finds the user's own GitLab token: the file, when one is given,
// wins over the environment variable.
func ResolveGitLabToken(file string, getenv func(string) string) (string, error) {
	if file != "" {
		return readSecretFile(file, "GitLab token file (--gitlab-token-file)")
	}
	if tok := strings.TrimSpace(getenv(EnvGitLabToken)); tok != "" {
		return tok, nil
	}
	return "", ErrNoGitLabToken
}

// ExpiryDate is the expires_at date to ask GitLab for: the UTC date reached after d.
// GitLab ends a token's life at 00:00 UTC on its expires_at date, so d = 24h gives a
// token valid until the end of the current UTC day, as glab does. Within the last
// minutes of a day (less than margin left) it moves on a day, so that the token is not
// handed out already expiring.
func ExpiryDate(now time.Time, d, margin time.Duration) time.Time {
	t := now.UTC().Add(d)
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if day.Sub(now) <= margin {
		day = day.AddDate(0, 0, 1)
	}
	return day
}
