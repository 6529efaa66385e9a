package directory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"kubegate.dev/kubegate/identity"
)

func mustHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPasswordHashAtLoad(t *testing.T) {
	good := mustHash(t, "correct horse")
	bc, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	salt, key := "c29tZXNhbHRzb21lc2FsdA", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
	argon := func(v, params string) string { return "$argon2id$" + v + "$" + params + "$" + salt + "$" + key }
	tests := []struct {
		name, hash, wantErr string
	}{
		{name: "argon2id with OWASP's parameters", hash: good},
		{name: "bcrypt $2a$", hash: string(bc)},
		{name: "bcrypt $2b$", hash: "$2b$" + string(bc)[4:]},
		{name: "bcrypt $2y$", hash: "$2y$" + string(bc)[4:]},
		{name: "argon2id at the bounds", hash: argon("v=19", "m=65536,t=4,p=4")},
		{name: "plain text", hash: "hunter2", wantErr: "not a password digest kubegate knows"},
		{name: "sha256 token digest", hash: HashToken("x"), wantErr: "not a password digest kubegate knows"},
		{name: "argon2i", hash: "$argon2i$v=19$m=19456,t=2,p=1$" + salt + "$" + key, wantErr: "use argon2id"},
		{name: "argon2id version 16", hash: argon("v=16", "m=19456,t=2,p=1"), wantErr: "version 19"},
		{name: "argon2id without a version", hash: "$argon2id$m=19456,t=2,p=1$" + salt + "$" + key, wantErr: "argon2id digests look like"},
		{name: "argon2id params out of order", hash: argon("v=19", "t=2,m=19456,p=1"), wantErr: "argon2id digests look like"},
		{name: "argon2id leading zero", hash: argon("v=19", "m=019456,t=2,p=1"), wantErr: "argon2id digests look like"},
		{name: "argon2id memory of 4 GiB", hash: argon("v=19", "m=4194304,t=1,p=1"), wantErr: "above 65536 KiB"},
		{name: "argon2id ten thousand passes", hash: argon("v=19", "m=19456,t=10000,p=1"), wantErr: "t=10000 must be between 1 and 10"},
		{name: "argon2id too much work", hash: argon("v=19", "m=65536,t=5,p=1"), wantErr: "m·t = 327680"},
		{name: "argon2id 255 lanes", hash: argon("v=19", "m=19456,t=2,p=255"), wantErr: "p=255 must be between 1 and 4"},
		{name: "argon2id zero passes", hash: argon("v=19", "m=19456,t=0,p=1"), wantErr: "t=0"},
		{name: "argon2id tiny memory", hash: argon("v=19", "m=4,t=2,p=1"), wantErr: "at least 8·p"},
		{name: "argon2id padded salt", hash: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "==$" + key, wantErr: "salt must be"},
		{name: "argon2id short salt", hash: "$argon2id$v=19$m=19456,t=2,p=1$YWJj$" + key, wantErr: "salt must be"},
		{name: "argon2id short hash", hash: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$YWJj", wantErr: "hash must be"},
		{name: "argon2id extra field", hash: argon("v=19", "m=19456,t=2,p=1") + "$x", wantErr: "argon2id digests look like"},
		{name: "bcrypt cost 31", hash: "$2b$31$" + string(bc)[7:], wantErr: "cost 31 is above 13"},
		{name: "bcrypt truncated", hash: string(bc)[:40], wantErr: "not a bcrypt hash"},
		{name: "bcrypt too long", hash: string(bc) + "xx", wantErr: "60 characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := fmt.Sprintf("users:\n  - {id: 1, username: a}\n  - {id: 2, username: b, password_hash: %q}\n", tt.hash)
			_, err := Parse("dir.yaml", []byte(doc))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused a good hash: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %q, want an error containing %q", tt.hash, tt.wantErr)
			}
			msg := err.Error()
			if !strings.Contains(msg, "line 3: users[1].password_hash: ") || !strings.Contains(msg, tt.wantErr) {
				t.Fatalf("error %q does not name line 3, users[1].password_hash and %q", msg, tt.wantErr)
			}
			if len(tt.hash) > 8 && strings.Contains(msg, tt.hash) {
				t.Fatalf("error %q quotes the digest", msg)
			}
		})
	}
}

// passwordDir has users in every state a password check must refuse alike.
func passwordDir(t *testing.T) *Directory {
	t.Helper()
	pw := mustHash(t, "right-password")
	bc, err := HashPasswordBcrypt("bcrypt-password", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`users:
  - {id: 1, username: alice, password_hash: %q}
  - {id: 2, username: mallory, state: blocked, password_hash: %q}
  - {id: 3, username: nopass}
  - {id: 4, username: bea, password_hash: %q}
  - {id: 5, username: dora, state: deactivated, password_hash: %q}
`, pw, pw, bc, pw)
	d, err := Parse("dir.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestCheckPassword: only an active user's right password passes; every other
// case — wrong password, unknown user, blocked or deactivated user (even with the
// right password), a user without a password — is the same rejection, computes
// exactly one hash (the cost of a wrong password: no early return that a stopwatch
// could tell apart), and never carries the password.
func TestCheckPassword(t *testing.T) {
	d := passwordDir(t)
	tests := []struct {
		name, user, password string
		want                 string // username on success
	}{
		{name: "right password", user: "alice", password: "right-password", want: "alice"},
		{name: "username in other case", user: "ALICE", password: "right-password", want: "alice"},
		{name: "bcrypt user", user: "bea", password: "bcrypt-password", want: "bea"},
		{name: "wrong password", user: "alice", password: "wrong-password"},
		{name: "password in other case", user: "alice", password: "RIGHT-PASSWORD"},
		{name: "password with a suffix", user: "alice", password: "right-password\x00"},
		{name: "unknown user", user: "zed", password: "right-password"},
		{name: "blocked user, right password", user: "mallory", password: "right-password"},
		{name: "deactivated user, right password", user: "dora", password: "right-password"},
		{name: "user without a password", user: "nopass", password: "right-password"},
		{name: "empty password", user: "alice", password: ""},
		{name: "empty username", user: "", password: "right-password"},
		{name: "over-long password", user: "alice", password: strings.Repeat("x", MaxPasswordLen+1)},
		{name: "bcrypt user, argon2 user's password", user: "bea", password: "right-password"},
	}
	var first *identity.Error
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hashesComputed.Load()
			u, err := d.CheckPassword(context.Background(), tt.user, tt.password)
			if n := hashesComputed.Load() - before; n != 1 {
				t.Errorf("the check computed %d hashes, want exactly 1", n)
			}
			if tt.want != "" {
				if err != nil || u.Username != tt.want || u.ID == 0 {
					t.Fatalf("got %+v %v, want %s", u, err, tt.want)
				}
				return
			}
			var e *identity.Error
			if !errors.As(err, &e) || e.Reason != identity.ReasonInvalid || e.Public != identity.Unauthorized || u != (identity.User{}) {
				t.Fatalf("got %+v %v, want the one rejection (invalid_credential, Unauthorized)", u, err)
			}
			if first == nil {
				first = e
			} else if e.Public != first.Public || e.Reason != first.Reason {
				t.Fatalf("rejection %q differs from %q", e.Public, first.Public)
			}
			if tt.password != "" && strings.Contains(e.Error(), tt.password) {
				t.Fatalf("error %q contains the password", e.Error())
			}
		})
	}
}

// The dummy a user without a hash is checked against has the directory's most
// common parameters, so it costs what a real check costs in that directory.
func TestDummyLikeTheDirectory(t *testing.T) {
	a1, a2 := mustHash(t, "a"), mustHash(t, "b")
	b1, err := HashPasswordBcrypt("c", 5)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := HashPasswordBcrypt("d", 5)
	b3, _ := HashPasswordBcrypt("e", 5)
	tests := []struct {
		name   string
		hashes []string
		want   string
	}{
		{"no passwords: argon2id defaults", nil, fmt.Sprintf("argon2id:%d:%d:%d:32", DefaultArgon2Memory, DefaultArgon2Time, DefaultArgon2Threads)},
		{"mostly argon2id", []string{a1, b1, a2}, fmt.Sprintf("argon2id:%d:%d:%d:32", DefaultArgon2Memory, DefaultArgon2Time, DefaultArgon2Threads)},
		{"mostly bcrypt", []string{b1, a1, b2, b3}, "bcrypt:5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("users:\n")
			for i, h := range tt.hashes {
				fmt.Fprintf(&b, "  - {id: %d, username: u%d, password_hash: %q}\n", i+1, i, h)
			}
			d, err := Parse("dir.yaml", []byte(b.String()))
			if err != nil {
				t.Fatal(err)
			}
			if got := d.dummy.get().costKey(); got != tt.want {
				t.Fatalf("dummy %s, want %s", got, tt.want)
			}
		})
	}
}

// At MaxConcurrentPasswordChecks running checks, the next is refused at once as
// busy (a 503 to retry), not queued; a cancelled request computes nothing.
func TestCheckPasswordBounded(t *testing.T) {
	d := passwordDir(t)
	for range MaxConcurrentPasswordChecks {
		passwordChecks <- struct{}{}
	}
	before := hashesComputed.Load()
	_, err := d.CheckPassword(context.Background(), "alice", "right-password")
	for range MaxConcurrentPasswordChecks {
		<-passwordChecks
	}
	var e *identity.Error
	if !errors.As(err, &e) || e.Reason != identity.ReasonBusy || !e.Unavailable() {
		t.Fatalf("got %v, want busy", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.CheckPassword(ctx, "alice", "right-password"); !errors.As(err, &e) || !e.Unavailable() {
		t.Fatalf("cancelled: got %v, want unavailable", err)
	}
	if n := hashesComputed.Load() - before; n != 0 {
		t.Fatalf("refused checks computed %d hashes", n)
	}
	if _, err := d.CheckPassword(context.Background(), "alice", "right-password"); err != nil {
		t.Fatalf("after the others finished: %v", err)
	}
}

func TestHashPassword(t *testing.T) {
	for _, pw := range []string{"", strings.Repeat("x", MaxPasswordLen+1)} {
		if _, err := HashPassword(pw); err == nil {
			t.Fatalf("hashed %d-byte password", len(pw))
		}
	}
	if _, err := HashPasswordBcrypt(strings.Repeat("x", 73), 4); err == nil || !strings.Contains(err.Error(), "72 bytes") {
		t.Fatalf("bcrypt of 73 bytes: %v", err)
	}
	if _, err := HashPasswordBcrypt("x", MaxBcryptCost+1); err == nil {
		t.Fatal("hashed with a cost the directory refuses")
	}
}

func TestSandboxPasswords(t *testing.T) {
	d := sandboxDir(t)
	for _, tt := range []struct{ user, pw string }{{"alice", "alice-sandbox-password"}, {"bob", "bob-sandbox-password"}} {
		if u, err := d.CheckPassword(context.Background(), tt.user, tt.pw); err != nil || u.Username != tt.user {
			t.Fatalf("%s: %v", tt.user, err)
		}
	}
	if _, err := d.CheckPassword(context.Background(), "carol", "alice-sandbox-password"); err == nil {
		t.Fatal("carol has no password")
	}
}
