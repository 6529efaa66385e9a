package session

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sealed values.
const (
	// Version is the first field of every sealed value.
	Version = "v1"
	// MaxSealedLen bounds a sealed value (a cookie value); longer ones are refused
	// before anything is decoded. Browsers keep cookies up to 4096 bytes
	// (RFC 6265 §6.1), so nothing longer can be one of ours.
	MaxSealedLen = 4096
	// PurposeSession is the purpose the session cookie is sealed for; SealValue
	// refuses it.
	PurposeSession = "session"

	nonceLen = 12 // GCM's standard 96-bit nonce
	tagLen   = 16
)

// errForged is every way a value fails to open that means "not sealed by us for
// this purpose": the cause stays in the log, the client sees only Unauthorized.
var errForged = errors.New("does not open: forged, tampered with, or sealed for another purpose")

// additionalData binds the version, key id and purpose: a value sealed for one
// purpose fails authentication under any other. The key id has a fixed length, so
// the concatenation is unambiguous.
func additionalData(kid, purpose string) []byte {
	return []byte(Version + "." + kid + "." + purpose)
}

// seal seals plaintext for purpose with the current key.
func seal(k *keyring, purpose string, plaintext []byte) (string, error) {
	cur := k.current()
	nonce := make([]byte, nonceLen, nonceLen+len(plaintext)+tagLen)
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("no randomness for a nonce: %w", err)
	}
	box := cur.aead.Seal(nonce, nonce, plaintext, additionalData(cur.id, purpose))
	out := Version + "." + cur.id + "." + base64.RawURLEncoding.EncodeToString(box)
	if len(out) > MaxSealedLen {
		return "", fmt.Errorf("the sealed value would be %d bytes, over the %d a cookie may hold", len(out), MaxSealedLen)
	}
	return out, nil
}

// open opens a value sealed for purpose with whichever key its id names.
func open(k *keyring, purpose, sealed string) ([]byte, error) {
	if len(sealed) > MaxSealedLen {
		return nil, fmt.Errorf("the value is %d bytes, longer than any kubegate seals (%d)", len(sealed), MaxSealedLen)
	}
	version, rest, ok := strings.Cut(sealed, ".")
	if !ok || version != Version {
		return nil, fmt.Errorf("not a %s sealed value", Version)
	}
	kid, body, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, errors.New("no key id")
	}
	aead, known := k.byID[kid]
	if !known {
		return nil, fmt.Errorf("sealed with key id %q, which is not in the session key file (removed after rotation, or forged)", kid)
	}
	box, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return nil, errors.New("the sealed part is not base64url")
	}
	if len(box) < nonceLen+tagLen {
		return nil, errors.New("truncated")
	}
	plain, err := aead.Open(nil, box[:nonceLen], box[nonceLen:], additionalData(kid, purpose))
	if err != nil {
		return nil, errForged
	}
	return plain, nil
}

// sealValue is SealValue's format: the expiry (Unix milliseconds, big-endian) then
// the caller's bytes.
func sealValue(k *keyring, purpose string, plaintext []byte, until time.Time) (string, error) {
	buf := make([]byte, 8, 8+len(plaintext))
	binary.BigEndian.PutUint64(buf, uint64(until.UnixMilli()))
	return seal(k, purpose, append(buf, plaintext...))
}

func openValue(k *keyring, purpose, sealed string, now time.Time) ([]byte, error) {
	plain, err := open(k, purpose, sealed)
	if err != nil {
		return nil, err
	}
	if len(plain) < 8 {
		return nil, errForged
	}
	until := time.UnixMilli(int64(binary.BigEndian.Uint64(plain)))
	if !now.Before(until) {
		return nil, fmt.Errorf("expired at %s", until.UTC().Format(time.RFC3339))
	}
	return plain[8:], nil
}

// validPurpose refuses purposes SealValue must not use.
func validPurpose(purpose string) error {
	switch {
	case purpose == "":
		return errors.New("SealValue needs a purpose (e.g. \"oidc-login\")")
	case purpose == PurposeSession:
		return errors.New("the purpose \"session\" is the session cookie's own: use Issue")
	}
	return nil
}
