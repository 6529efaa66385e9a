package session

import (
	"context"
	"crypto/sha256"
	"testing"
)

// BenchmarkAuthenticate measures one session check (open the AES-GCM cookie, decode
// it, compare the CSRF token, ask the Memory store and the user lookup) against a
// floor measured in the same run: the SHA-256 of the same cookie, what the identity
// cache already spends to key any credential. Read the ratio, not the times.
func BenchmarkAuthenticate(b *testing.B) {
	f := newFixture(b)
	s, c := f.issue(b, alice)
	cr := cred(c.Value, s.CSRFToken)
	a := f.m.Authenticator(f.users)
	ctx := context.Background()
	b.Run("floor: sha256 of the cookie", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = sha256.Sum256([]byte(cr.Secret))
		}
	})
	b.Run("session check", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := a.Authenticate(ctx, cr); !ok {
				b.Fatal(err)
			}
		}
	})
}
