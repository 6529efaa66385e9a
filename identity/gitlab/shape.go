package gitlab

import (
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// What GitLab can issue as a personal access token, from its source and docs. A
// token that cannot be one is refused before any GitLab call, so junk costs neither
// a call nor a slot of the unauthenticated budget. Every rule below refuses only
// what GitLab can never have issued; prefixes are not checked, because an instance
// may set its own (https://docs.gitlab.com/administration/settings/account_and_limit_settings/#personal-access-token-prefix
// and #instance-token-prefix), and tokens made before a prefix change keep theirs.
//
//   - Classic tokens are the prefix (glpat- by default; none on tokens made before
//     that default, gitlab-org/gitlab#342327) followed by Devise.friendly_token's 20 characters
//     (letters, digits, '-', '_'): never shorter than 20.
//   - Routable tokens (gitlab-org/gitlab!169322, lib/authn/token_field/generator/routable_token.rb)
//     are prefix, base64url(payload), ".", version (2 base-36 digits, "01"), ".",
//     the base64 part's length (2 base-36 digits) and CRC-32 (IEEE, as Ruby's
//     Zlib.crc32) of everything before it, in 7 base-36 digits. Only they have a
//     '.' followed by exactly 9 characters at the end: a classic token's random part
//     has no '.', so whatever follows the last '.' of a classic token (in a custom
//     prefix) is at least its 20 random characters.
//
// Custom prefixes may contain characters kubegate does not accept in a token at
// all (tokenShaped); such instances are not supported.
const (
	minTokenLen = 20 // Devise.friendly_token's default length, the legacy unprefixed token

	routableTail    = 9 // 2 length digits + 7 CRC digits after the last '.'
	routableVersion = "01"
	routableCRCLen  = 7
)

// errShape explains every shape refusal; the token itself is never quoted.
var errShape = errors.New("the token cannot be a GitLab personal access token")

// checkShape refuses a token GitLab can never have issued as a personal access
// token, before anything is sent. nil means it may be one.
func checkShape(tok string) error {
	if !tokenShaped(tok) {
		return fmt.Errorf("%w: only letters, digits, '.', '_' and '-', at most %d characters", errShape, maxTokenLen)
	}
	if len(tok) < minTokenLen {
		return fmt.Errorf("%w: %d characters, GitLab's shortest tokens have %d", errShape, len(tok), minTokenLen)
	}
	dot := strings.LastIndexByte(tok, '.')
	if dot < 0 || len(tok)-dot-1 != routableTail {
		return nil // classic, or not decidable without knowing the instance's prefix
	}
	return checkRoutable(tok, dot)
}

// checkRoutable checks a token shaped like a routable one: "<prefix><base64>.<vv>.<ll><crc>"
// with the last '.' at dot. A version other than 01 is passed on: a later format
// is GitLab's to judge.
func checkRoutable(tok string, dot int) error {
	if dot < 3 || tok[dot-3] != '.' {
		return fmt.Errorf("%w: it ends like a routable token but lacks its version field", errShape)
	}
	if tok[dot-2:dot] != routableVersion {
		return nil
	}
	crcAt := len(tok) - routableCRCLen
	crc, err := strconv.ParseUint(tok[crcAt:], 36, 32)
	if err != nil || !isLowerBase36(tok[crcAt:]) {
		return fmt.Errorf("%w: a routable token's checksum is 7 base-36 digits", errShape)
	}
	if uint32(crc) != crc32.ChecksumIEEE([]byte(tok[:crcAt])) {
		return fmt.Errorf("%w: its routable-token checksum does not match", errShape)
	}
	n, err := strconv.ParseUint(tok[dot+1:crcAt], 36, 16)
	if err != nil || !isLowerBase36(tok[dot+1:crcAt]) || int(n) > dot-3 {
		return fmt.Errorf("%w: a routable token's length field does not fit the token", errShape)
	}
	for _, c := range []byte(tok[dot-3-int(n) : dot-3]) {
		if c == '.' {
			return fmt.Errorf("%w: a routable token's payload has no '.'", errShape)
		}
	}
	return nil
}

// isLowerBase36 reports digits and lower-case letters only: Ruby's Integer#to_s(36)
// writes lower case, while strconv.ParseUint also reads upper case.
func isLowerBase36(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}
