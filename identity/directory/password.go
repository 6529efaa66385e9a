package directory

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"kubegate.dev/kubegate/identity"
)

// Password digests (a user's password_hash) are PHC strings of one of two kinds:
//
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<key>   (salt and key: unpadded standard base64)
//	$2a$<cost>$<22 chars of salt><31 chars of hash>            ($2b$ and $2y$ too: bcrypt)
//
// The format is the reference one of the Password Hashing Competition
// (github.com/P-H-C/phc-string-format, and the argon2 reference implementation's
// encoding), which argon2 command-line tools and most libraries print; bcrypt's is
// the one golang.org/x/crypto/bcrypt reads. `kubegate directory hash-password`
// prints either.
//
// The parameters are bounded at load: a directory is trusted less than the
// binary, and one check of a hash with m=4 GiB or t=10,000 would cost gigabytes or
// seconds for every login attempt anyone makes.
const (
	// DefaultArgon2Memory, DefaultArgon2Time and DefaultArgon2Threads are OWASP's
	// first recommended argon2id configuration (Password Storage Cheat Sheet:
	// m=19 MiB, t=2, p=1).
	DefaultArgon2Memory  = 19456
	DefaultArgon2Time    = 2
	DefaultArgon2Threads = 1
	// DefaultBcryptCost is OWASP's minimum work factor for bcrypt.
	DefaultBcryptCost = 10

	// MaxArgon2Memory (KiB), MaxArgon2Time, MaxArgon2Threads and MaxBcryptCost
	// bound what a directory may ask of one check: at most 64 MiB, and at most 4
	// passes over 64 MiB (m·t ≤ 262,144 KiB), a few hundred milliseconds on one
	// core; bcrypt cost 13 is about as long.
	MaxArgon2Memory  = 64 << 10
	MaxArgon2Time    = 10
	MaxArgon2Work    = 4 * MaxArgon2Memory
	MaxArgon2Threads = 4
	MaxBcryptCost    = 13

	// MaxPasswordLen bounds a password: longer ones are refused as wrong
	// without being hashed.
	MaxPasswordLen = 1024

	// MaxConcurrentPasswordChecks is how many password checks may run at once in
	// the process (every directory, including ones a reload replaced, shares the
	// bound): each argon2id check holds its m KiB, so 4 × 64 MiB at most. A check
	// beyond it is refused at once as busy (503, try again) instead of queueing.
	MaxConcurrentPasswordChecks = 4
)

// passwordChecks is the process's semaphore of running checks.
var passwordChecks = make(chan struct{}, MaxConcurrentPasswordChecks)

// hashesComputed counts password hashes computed by checks, for the tests that
// hold every refusal to the cost of one hash.
var hashesComputed atomic.Int64

// Argon2Params are argon2id's parameters as the PHC string writes them.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32 // passes
	Threads uint8  // lanes
}

// passwordHash is a parsed password_hash.
type passwordHash struct {
	kind string // "argon2id" or "bcrypt"
	// argon2id
	params    Argon2Params
	salt, key []byte
	// bcrypt: the whole PHC string
	bcrypt []byte
	cost   int
}

var b64 = base64.RawStdEncoding.Strict()

// parsePasswordHash reads and bounds a PHC string. Its errors never quote the
// string (a digest is not the password, but it is what an offline guesser needs).
func parsePasswordHash(s string) (*passwordHash, error) {
	switch {
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s)
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("not a bcrypt hash ($2b$<cost>$<53 characters>): %v", err)
		}
		if len(s) != 60 {
			return nil, errors.New("not a bcrypt hash: a bcrypt hash is 60 characters long")
		}
		if cost > MaxBcryptCost {
			return nil, fmt.Errorf("bcrypt cost %d is above %d, the most kubegate allows (each login attempt would take seconds); hash again with kubegate directory hash-password --algorithm bcrypt", cost, MaxBcryptCost)
		}
		return &passwordHash{kind: "bcrypt", bcrypt: []byte(s), cost: cost}, nil
	case strings.HasPrefix(s, "$argon2i$"), strings.HasPrefix(s, "$argon2d$"):
		return nil, errors.New("argon2i and argon2d are not accepted: use argon2id (kubegate directory hash-password prints one)")
	}
	return nil, errors.New(`not a password digest kubegate knows: give an argon2id ("$argon2id$v=19$m=…,t=…,p=…$salt$hash") or bcrypt ("$2b$…") PHC string (kubegate directory hash-password prints one)`)
}

func parseArgon2id(s string) (*passwordHash, error) {
	const form = `argon2id digests look like "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>" (unpadded base64)`
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" {
		return nil, errors.New(form)
	}
	if parts[2] != "v=19" {
		return nil, fmt.Errorf("only argon2 version 19 (v=19) is accepted; %s", form)
	}
	var m, t, p uint64
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return nil, errors.New(form)
	}
	for i, want := range []struct {
		name string
		v    *uint64
	}{{"m", &m}, {"t", &t}, {"p", &p}} {
		num, ok := strings.CutPrefix(params[i], want.name+"=")
		n, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || num != strconv.FormatUint(n, 10) {
			return nil, errors.New(form)
		}
		*want.v = n
	}
	switch {
	case p < 1 || p > MaxArgon2Threads:
		return nil, fmt.Errorf("argon2id p=%d must be between 1 and %d", p, MaxArgon2Threads)
	case t < 1 || t > MaxArgon2Time:
		return nil, fmt.Errorf("argon2id t=%d must be between 1 and %d", t, MaxArgon2Time)
	case m < 8*p:
		return nil, fmt.Errorf("argon2id m=%d must be at least 8·p KiB", m)
	case m > MaxArgon2Memory:
		return nil, fmt.Errorf("argon2id m=%d KiB is above %d KiB (64 MiB), the most kubegate allows for one check", m, MaxArgon2Memory)
	case m*t > MaxArgon2Work:
		return nil, fmt.Errorf("argon2id m·t = %d KiB is above %d: each login attempt would take too long; lower t", m*t, MaxArgon2Work)
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 || len(salt) > 64 {
		return nil, fmt.Errorf("argon2id salt must be 8 to 64 bytes of unpadded base64; %s", form)
	}
	key, err := b64.DecodeString(parts[5])
	if err != nil || len(key) < 16 || len(key) > 64 {
		return nil, fmt.Errorf("argon2id hash must be 16 to 64 bytes of unpadded base64; %s", form)
	}
	return &passwordHash{kind: "argon2id", params: Argon2Params{Memory: uint32(m), Time: uint32(t), Threads: uint8(p)}, salt: salt, key: key}, nil
}

// matches hashes password with h's salt and parameters and compares in constant
// time.
func (h *passwordHash) matches(password string) bool {
	hashesComputed.Add(1)
	switch h.kind {
	case "argon2id":
		got := argon2.IDKey([]byte(password), h.salt, h.params.Time, h.params.Memory, h.params.Threads, uint32(len(h.key)))
		return subtle.ConstantTimeCompare(got, h.key) == 1
	case "bcrypt":
		return bcrypt.CompareHashAndPassword(h.bcrypt, []byte(password)) == nil // constant time inside
	}
	return false
}

// costKey identifies a hash's cost, to pick the dummy like the directory's hashes.
func (h *passwordHash) costKey() string {
	if h.kind == "bcrypt" {
		return "bcrypt:" + strconv.Itoa(h.cost)
	}
	return fmt.Sprintf("argon2id:%d:%d:%d:%d", h.params.Memory, h.params.Time, h.params.Threads, len(h.key))
}

// HashPassword returns the argon2id PHC string of password with OWASP's
// parameters and a random 16-byte salt.
func HashPassword(password string) (string, error) {
	return HashPasswordArgon2id(password, Argon2Params{Memory: DefaultArgon2Memory, Time: DefaultArgon2Time, Threads: DefaultArgon2Threads})
}

// HashPasswordArgon2id returns the argon2id PHC string of password with p.
func HashPasswordArgon2id(password string, p Argon2Params) (string, error) {
	if err := checkNewPassword(password); err != nil {
		return "", err
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
	s := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
	if _, err := parsePasswordHash(s); err != nil { // what the directory would refuse is not printed
		return "", err
	}
	return s, nil
}

// HashPasswordBcrypt returns the bcrypt hash of password.
func HashPasswordBcrypt(password string, cost int) (string, error) {
	if err := checkNewPassword(password); err != nil {
		return "", err
	}
	if cost > MaxBcryptCost {
		return "", fmt.Errorf("bcrypt cost %d is above %d, the most the directory accepts", cost, MaxBcryptCost)
	}
	b, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if errors.Is(err, bcrypt.ErrPasswordTooLong) {
		return "", errors.New("bcrypt reads at most 72 bytes of a password; use argon2id for a longer one")
	}
	return string(b), err
}

func checkNewPassword(password string) error {
	switch {
	case password == "":
		return errors.New("the password is empty")
	case len(password) > MaxPasswordLen:
		return fmt.Errorf("the password is longer than %d bytes", MaxPasswordLen)
	}
	return nil
}

// dummy is what a check of a user without a usable hash verifies against, so
// that an unknown user, a blocked one and one without a password cost what a
// wrong password costs: a hash with the directory's most common parameters and
// a random salt and key no password matches.
type dummy struct {
	once sync.Once
	like *passwordHash // parameters to copy; nil: the defaults
	hash *passwordHash
}

func (d *dummy) get() *passwordHash {
	d.once.Do(func() {
		like := d.like
		if like != nil && like.kind == "bcrypt" {
			var pw [16]byte
			_, _ = rand.Read(pw[:])
			if b, err := bcrypt.GenerateFromPassword([]byte(base64.RawURLEncoding.EncodeToString(pw[:])), like.cost); err == nil {
				d.hash = &passwordHash{kind: "bcrypt", bcrypt: b, cost: like.cost}
				return
			}
		}
		h := &passwordHash{kind: "argon2id", params: Argon2Params{Memory: DefaultArgon2Memory, Time: DefaultArgon2Time, Threads: DefaultArgon2Threads}}
		h.salt, h.key = make([]byte, 16), make([]byte, 32)
		if like != nil && like.kind == "argon2id" {
			h.params, h.key = like.params, make([]byte, len(like.key))
		}
		_, _ = rand.Read(h.salt)
		_, _ = rand.Read(h.key)
		d.hash = h
	})
	return d.hash
}

// mostCommon picks the hash whose parameters most users' hashes share.
func mostCommon(hashes []*passwordHash) *passwordHash {
	counts := map[string]int{}
	var best *passwordHash
	for _, h := range hashes {
		k := h.costKey()
		counts[k]++
		if best == nil || counts[k] > counts[best.costKey()] {
			best = h
		}
	}
	return best
}

// errWrongPassword is the single answer for every refused password check.
func wrongPassword(cause string) error {
	return identity.Rejected(identity.ReasonInvalid, errors.New(cause))
}

// CheckPassword verifies username's password: the user must exist, be active and
// have a password_hash that the password matches. Every refusal is the same
// identity.Rejected (ReasonInvalid, "Unauthorized"; the cause, never the
// password, is in Err for the log) and costs the same: a user without a usable
// hash is checked against a dummy hash like the directory's. When
// MaxConcurrentPasswordChecks checks are already running the answer is at once
// identity.Busy (503: try again).
func (d *Directory) CheckPassword(ctx context.Context, username, password string) (identity.User, error) {
	if err := ctx.Err(); err != nil {
		return identity.User{}, identity.SourceUnavailable("directory", err)
	}
	select {
	case passwordChecks <- struct{}{}:
		defer func() { <-passwordChecks }()
	default:
		return identity.User{}, identity.Busy("directory password check", fmt.Errorf("%d password checks already running", MaxConcurrentPasswordChecks))
	}
	if password == "" || len(password) > MaxPasswordLen {
		d.dummy.get().matches("") // the same cost as any other refusal
		return identity.User{}, wrongPassword("empty or over-long password")
	}
	u := d.usersByName[strings.ToLower(username)]
	h := d.dummy.get()
	if u != nil && u.password != nil {
		h = u.password
	}
	ok := h.matches(password)
	switch {
	case u == nil:
		return identity.User{}, wrongPassword("no such user")
	case u.password == nil:
		return identity.User{}, wrongPassword(fmt.Sprintf("user %s has no password_hash", u.Username))
	case !ok:
		return identity.User{}, wrongPassword(fmt.Sprintf("wrong password for %s", u.Username))
	case u.state != "active":
		return identity.User{}, wrongPassword(fmt.Sprintf("user %s is %s", u.Username, u.state))
	}
	return u.User, nil
}
