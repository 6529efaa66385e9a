package session

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KeyLen is the length of a session key: AES-256.
const KeyLen = 32

// keyGenHint tells an operator how to make a key.
const keyGenHint = "make one with: head -c 32 /dev/urandom | base64"

// key is one sealing key and its id.
type key struct {
	id   string // base64url of the first 8 bytes of SHA-256(key): 11 characters
	aead cipher.AEAD
}

// keyring is the keys of one version of the key file: keys[0] seals, all open.
type keyring struct {
	keys []key
	byID map[string]cipher.AEAD
}

func (k *keyring) current() key { return k.keys[0] }

// ids lists the key ids, current first: safe to log (a hash prefix reveals nothing
// about the key).
func (k *keyring) ids() []string {
	out := make([]string, len(k.keys))
	for i, kk := range k.keys {
		out[i] = kk.id
	}
	return out
}

// keyID is the id of a raw key.
func keyID(raw []byte) string {
	sum := sha256.Sum256(raw)
	return base64.RawURLEncoding.EncodeToString(sum[:8])
}

// loadKeys reads and parses the key file. worldReadable reports a file others can
// read (a warning, not an error: the operator may have reasons, e.g. a volume
// whose mode they cannot set).
func loadKeys(file string) (k *keyring, worldReadable bool, err error) {
	if file == "" {
		return nil, false, errors.New("no session key file: set --session-key-file to a file of keys (" + keyGenHint + ")")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, false, fmt.Errorf("session key file: %w", err)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o004 != 0 {
		worldReadable = true
	}
	k, err = parseKeys(data)
	if err != nil {
		return nil, worldReadable, fmt.Errorf("session key file %s: %w", file, err)
	}
	return k, worldReadable, nil
}

// parseKeys parses a key file's content: one base64 key per line, first = current.
func parseKeys(data []byte) (*keyring, error) {
	k := &keyring{byID: map[string]cipher.AEAD{}}
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		raw, err := decodeKey(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v; each line must be one key, base64 of exactly %d random bytes (%s)", line, err, KeyLen, keyGenHint)
		}
		id := keyID(raw)
		if first, dup := seen[id]; dup {
			return nil, fmt.Errorf("line %d repeats the key of line %d: remove the duplicate (a rotation puts a NEW key first: %s)", line, first, keyGenHint)
		}
		seen[id] = line
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
		k.keys = append(k.keys, key{id: id, aead: aead})
		k.byID[id] = aead
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(k.keys) == 0 {
		return nil, errors.New("holds no key: put one key per line (" + keyGenHint + ")")
	}
	return k, nil
}

// decodeKey decodes one key in any of the base64 alphabets, padded or not, and
// insists on exactly KeyLen bytes.
func decodeKey(text string) ([]byte, error) {
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if raw, err = enc.DecodeString(text); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("not base64")
	}
	if len(raw) != KeyLen {
		return nil, fmt.Errorf("the key is %d bytes", len(raw))
	}
	return raw, nil
}
