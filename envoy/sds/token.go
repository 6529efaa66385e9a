// Package sds serves the agent's service-account token to Envoy as an SDS generic
// secret, and pushes a new version whenever the token file changes, so Envoy's
// credential_injector always sends a current token without a restart.
package sds

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrEmpty is returned by ReadToken for a file with nothing but whitespace in it,
// which is what a token file looks like for a moment while it is being rewritten.
var ErrEmpty = errors.New("token file is empty")

// ReadToken reads a bearer token from a file the way kubelet writes a projected
// service-account token: the whole file, surrounding whitespace trimmed.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the token file: %w (give --token-file the path of a service-account token, e.g. a projected volume's token)", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%s: %w; write the agent's service-account token into it", path, ErrEmpty)
	}
	// The token becomes an HTTP header value (RFC 9110 field-value, and RFC 6750's
	// b64token for Bearer): visible ASCII only. A newline inside would split the
	// header; anything else is not a token.
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("%s: byte %d is %#x, which cannot appear in a bearer token; the file must hold only the token", path, i, c)
		}
	}
	return tok, nil
}
