package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/internal/filewatch"
)

// Defaults for Config's zero fields, and the bounds Config is checked against.
const (
	DefaultIdleTimeout = 30 * time.Minute
	DefaultMaxAge      = 8 * time.Hour
	// MaxMaxAge is the longest absolute lifetime allowed: a week.
	MaxMaxAge = 7 * 24 * time.Hour
	// RefreshEvery is the least time between two refreshes of one session: a
	// Dashboard polling the session does not re-seal the cookie each time.
	RefreshEvery = time.Minute
)

// Method values for Issue.
const (
	MethodPassword = "password"
	MethodOIDC     = "oidc"
)

// Session is one browser login.
type Session struct {
	ID     string // random 128-bit, base64url: the revocation key (never logged in full)
	User   identity.User
	Method string // "password" or "oidc"
	// RefreshedAt is the last activity (the idle timer); ExpiresAt is absolute.
	IssuedAt, RefreshedAt, ExpiresAt time.Time
	// CSRFToken is random 256-bit, base64url, sealed inside the cookie: bound to this session.
	CSRFToken string
}

// IdleExpiresAt is when the session ends without activity: RefreshedAt +
// idle, never after ExpiresAt.
func (s *Session) IdleExpiresAt(idle time.Duration) time.Time {
	if t := s.RefreshedAt.Add(idle); t.Before(s.ExpiresAt) {
		return t
	}
	return s.ExpiresAt
}

// CSRFMatches reports, in constant time, whether token is this session's CSRF
// token. An empty token never matches.
func (s *Session) CSRFMatches(token string) bool {
	if token == "" || s.CSRFToken == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRFToken)) == 1
}

// ShortID is the session id's first 8 characters: enough to follow a session in
// the logs, too little to be the revocation key.
func (s *Session) ShortID() string {
	if len(s.ID) > 8 {
		return s.ID[:8]
	}
	return s.ID
}

// String describes the session without its secrets.
func (s Session) String() string {
	return fmt.Sprintf("session %s… of %s (%s, expires %s)", s.ShortID(), s.User.Username, s.Method, s.ExpiresAt.UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the CSRF token.
func (s Session) GoString() string { return s.String() }

// LogValue keeps the CSRF token and most of the id out of structured logs.
func (s Session) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("id", s.ShortID()),
		slog.String("user", s.User.Username),
		slog.Int64("user_id", s.User.ID),
		slog.String("method", s.Method),
		slog.Time("issued_at", s.IssuedAt),
		slog.Time("expires_at", s.ExpiresAt),
	)
}

// payload is the sealed encoding of a Session: short names, times in Unix
// milliseconds.
type payload struct {
	ID       string `json:"i"`
	UserID   int64  `json:"u"`
	Username string `json:"n"`
	Method   string `json:"m"`
	Issued   int64  `json:"t"`
	Refresh  int64  `json:"r"`
	Expires  int64  `json:"e"`
	CSRF     string `json:"c"`
}

func (s *Session) payload() payload {
	return payload{ID: s.ID, UserID: s.User.ID, Username: s.User.Username, Method: s.Method,
		Issued: s.IssuedAt.UnixMilli(), Refresh: s.RefreshedAt.UnixMilli(), Expires: s.ExpiresAt.UnixMilli(), CSRF: s.CSRFToken}
}

func (p payload) session() *Session {
	return &Session{ID: p.ID, User: identity.User{ID: p.UserID, Username: p.Username}, Method: p.Method,
		IssuedAt: time.UnixMilli(p.Issued).UTC(), RefreshedAt: time.UnixMilli(p.Refresh).UTC(), ExpiresAt: time.UnixMilli(p.Expires).UTC(), CSRFToken: p.CSRF}
}

// Config configures a Manager.
type Config struct {
	// KeyFile holds the keys, one per line (base64 of 32 random bytes; '#'
	// comments); first = current, rest = previous (still accepted).
	KeyFile     string
	IdleTimeout time.Duration // default 30m
	MaxAge      time.Duration // absolute; default 8h
	// Revocations records logouts; nil: a Memory store (one replica only).
	Revocations Revocations
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Log receives key reloads and warnings; nil discards them.
	Log *slog.Logger
}

// Validate checks the durations.
func (c *Config) Validate() error {
	var errs []error
	if c.IdleTimeout <= 0 || c.MaxAge <= 0 {
		errs = append(errs, errors.New("the session idle timeout and max age must both be positive"))
	}
	if c.IdleTimeout > c.MaxAge {
		errs = append(errs, fmt.Errorf("the session idle timeout (%s) is longer than its max age (%s): an idle timeout that can never apply is a mistake; shorten it", c.IdleTimeout, c.MaxAge))
	}
	if c.MaxAge > MaxMaxAge {
		errs = append(errs, fmt.Errorf("the session max age (%s) is over a week: a stolen cookie would work that long; keep it at most 168h", c.MaxAge))
	}
	return errors.Join(errs...)
}

// Manager issues, opens, refreshes and revokes sessions. It is safe for
// concurrent use.
type Manager struct {
	cfg  Config
	now  func() time.Time
	log  *slog.Logger
	revs Revocations
	keys atomic.Pointer[keyring]
}

// New loads the key file and makes a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, now: cfg.Now, log: cfg.Log, revs: cfg.Revocations}
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.revs == nil {
		m.revs = NewMemory(m.now)
	}
	k, worldReadable, err := loadKeys(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	if worldReadable {
		m.log.Warn("the session key file is readable by every user of this machine: anyone who reads it can forge sessions; chmod 600 it (or 0400 in a Secret volume)", "file", cfg.KeyFile)
	}
	m.keys.Store(k)
	m.log.Info("browser sessions on", "key_ids", strings.Join(k.ids(), ","), "idle_timeout", cfg.IdleTimeout.String(), "max_age", cfg.MaxAge.String())
	return m, nil
}

// IdleTimeout is the configured idle timeout.
func (m *Manager) IdleTimeout() time.Duration { return m.cfg.IdleTimeout }

// MaxAge is the configured absolute lifetime.
func (m *Manager) MaxAge() time.Duration { return m.cfg.MaxAge }

// Run watches the key file for rotation until ctx ends: a new valid file replaces
// the keys at once (atomically); a file that does not parse keeps the old keys and
// is logged.
func (m *Manager) Run(ctx context.Context) error {
	w := filewatch.Watcher{Paths: []string{m.cfg.KeyFile}, CheckOnStart: true, Log: m.log}
	return w.Run(ctx, m.reload)
}

// reload re-reads the key file; it is Run's change handler.
func (m *Manager) reload() {
	k, worldReadable, err := loadKeys(m.cfg.KeyFile)
	if err != nil {
		m.log.Error("the session key file changed but cannot be used; the previous keys stay in service", "err", err.Error())
		return
	}
	if worldReadable {
		m.log.Warn("the session key file is readable by every user of this machine: chmod 600 it", "file", m.cfg.KeyFile)
	}
	old := m.keys.Swap(k)
	if old == nil || strings.Join(old.ids(), ",") != strings.Join(k.ids(), ",") {
		m.log.Info("session keys reloaded", "key_ids", strings.Join(k.ids(), ","))
	}
}

// Issue starts a session for u and sets its cookie on w.
func (m *Manager) Issue(w http.ResponseWriter, u identity.User, method string) (*Session, error) {
	switch method {
	case MethodPassword, MethodOIDC:
	default:
		return nil, fmt.Errorf("unknown login method %q: use %q or %q", method, MethodPassword, MethodOIDC)
	}
	if u.ID <= 0 || u.Username == "" {
		return nil, fmt.Errorf("cannot issue a session for user %q with id %d", u.Username, u.ID)
	}
	id, err := random(16)
	if err != nil {
		return nil, err
	}
	csrf, err := random(32)
	if err != nil {
		return nil, err
	}
	now := m.now().Truncate(time.Millisecond)
	s := &Session{ID: id, User: u, Method: method, IssuedAt: now, RefreshedAt: now, ExpiresAt: now.Add(m.cfg.MaxAge), CSRFToken: csrf}
	if err := m.setCookie(w, s); err != nil {
		return nil, err
	}
	return s, nil
}

func random(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("no randomness: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Seal returns the cookie value of s.
func (m *Manager) seal(s *Session) (string, error) {
	plain, err := json.Marshal(s.payload())
	if err != nil {
		return "", err
	}
	return seal(m.keys.Load(), PurposeSession, plain)
}

func (m *Manager) setCookie(w http.ResponseWriter, s *Session) error {
	v, err := m.seal(s)
	if err != nil {
		return err
	}
	maxAge := int(s.ExpiresAt.Sub(m.now()) / time.Second)
	if maxAge <= 0 {
		return errors.New("the session has already expired")
	}
	http.SetCookie(w, &http.Cookie{Name: contract.SessionCookie, Value: v, Path: "/", MaxAge: maxAge,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	return nil
}

// clearCookie tells the browser to drop the session cookie (Max-Age=0).
func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: contract.SessionCookie, Value: "", Path: "/", MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

// maxPayload bounds the decoded session: ids, a username and the CSRF token fit
// many times over.
const maxPayload = 2048

// open opens and checks a cookie value: sealed by one of our keys as a session,
// well formed and not expired. It does not ask the revocation store.
func (m *Manager) open(value string) (*Session, error) {
	plain, err := open(m.keys.Load(), PurposeSession, value)
	if err != nil {
		return nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("session cookie: %w", err))
	}
	if len(plain) > maxPayload {
		return nil, identity.Rejected(identity.ReasonInvalid, errors.New("session cookie payload too large"))
	}
	var p payload
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || dec.More() {
		return nil, identity.Rejected(identity.ReasonInvalid, errors.New("session cookie opens but its payload does not decode"))
	}
	s := p.session()
	if s.ID == "" || s.CSRFToken == "" || s.User.ID <= 0 || s.User.Username == "" || s.ExpiresAt.Before(s.IssuedAt) {
		return nil, identity.Rejected(identity.ReasonInvalid, errors.New("session cookie opens but is incomplete"))
	}
	now := m.now()
	if !now.Before(s.ExpiresAt) {
		return nil, identity.Rejected(identity.ReasonExpired, fmt.Errorf("%s: reached its max age at %s", s, s.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	if idle := s.IdleExpiresAt(m.cfg.IdleTimeout); !now.Before(idle) {
		return nil, identity.Rejected(identity.ReasonExpired, fmt.Errorf("%s: idle since %s (idle timeout %s)", s, s.RefreshedAt.UTC().Format(time.RFC3339), m.cfg.IdleTimeout))
	}
	return s, nil
}

// checkRevoked asks the revocation store. A store error fails closed (503).
func (m *Manager) checkRevoked(ctx context.Context, s *Session) error {
	revoked, err := m.revs.Revoked(ctx, s.ID)
	if err != nil {
		return identity.SourceUnavailable("session revocations", fmt.Errorf("%s: %w", s, err))
	}
	if revoked {
		return identity.Rejected(identity.ReasonRevoked, fmt.Errorf("%s: logged out", s))
	}
	// Asked after Revoked: a store that forgets (Memory, when full) moves its
	// horizon before dropping entries, so one of the two answers refuses.
	if f, ok := m.revs.(Forgetful); ok {
		if since := f.RememberedSince(); s.IssuedAt.Before(since) {
			return identity.Rejected(identity.ReasonRevoked, fmt.Errorf("%s: issued at %s, before the revocation store's memory begins (%s): logouts before then are not known, so the session is refused and the user must log in again (with --session-store=memory a restart of the gateway logs everyone out)",
				s, s.IssuedAt.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339)))
		}
	}
	return nil
}

// FromRequest returns the verified, unrevoked session of r's cookie, or an
// *identity.Error saying why not (401; 503 when the revocation store cannot
// answer). It does not check the CSRF token: a handler that changes state checks
// CSRFMatches itself.
func (m *Manager) FromRequest(r *http.Request) (*Session, error) {
	var value string
	n := 0
	for _, c := range r.CookiesNamed(contract.SessionCookie) {
		value = c.Value
		n++
	}
	switch {
	case n == 0:
		return nil, &identity.Error{Reason: identity.ReasonNoCredential, Public: "not logged in: no " + contract.SessionCookie + " cookie; log in at " + contract.LoginPath}
	case n > 1:
		return nil, identity.Malformed("more than one %s cookie", contract.SessionCookie)
	case value == "":
		return nil, identity.Malformed("the %s cookie is empty", contract.SessionCookie)
	}
	s, err := m.open(value)
	if err != nil {
		return nil, err
	}
	if err := m.checkRevoked(r.Context(), s); err != nil {
		return nil, err
	}
	return s, nil
}

// Refresh moves s's idle timer to now and sets the re-sealed cookie on w; the
// absolute expiry stays. A session refreshed less than RefreshEvery ago is
// returned as it is, with no cookie set.
func (m *Manager) Refresh(w http.ResponseWriter, s *Session) (*Session, error) {
	now := m.now().Truncate(time.Millisecond)
	if now.Sub(s.RefreshedAt) < RefreshEvery {
		return s, nil
	}
	if !now.Before(s.ExpiresAt) {
		return nil, identity.Rejected(identity.ReasonExpired, fmt.Errorf("%s: reached its max age", s))
	}
	out := *s
	out.RefreshedAt = now
	if err := m.setCookie(w, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Revoke logs s out: the revocation is recorded until s's absolute expiry (the
// cookie is refused after it anyway) and w clears the cookie. The cookie is cleared
// even when the store fails; the error then says the logout is not recorded.
func (m *Manager) Revoke(ctx context.Context, w http.ResponseWriter, s *Session) error {
	clearCookie(w)
	if err := m.revs.Revoke(ctx, s.ID, s.ExpiresAt); err != nil {
		return identity.SourceUnavailable("session revocations", fmt.Errorf("recording the logout of %s: %w", s, err))
	}
	return nil
}

// SealValue seals plaintext for purpose, valid for ttl: for short-lived cookies
// (the OIDC login state). The purpose is bound as additional data, so a value
// sealed for one purpose never opens as another, or as a session.
func (m *Manager) SealValue(purpose string, plaintext []byte, ttl time.Duration) (string, error) {
	if err := validPurpose(purpose); err != nil {
		return "", err
	}
	if ttl <= 0 {
		return "", errors.New("SealValue needs a positive ttl")
	}
	return sealValue(m.keys.Load(), purpose, plaintext, m.now().Add(ttl))
}

// OpenValue opens a value SealValue sealed for purpose, if it has not expired.
func (m *Manager) OpenValue(purpose, sealed string) ([]byte, error) {
	if err := validPurpose(purpose); err != nil {
		return nil, err
	}
	plain, err := openValue(m.keys.Load(), purpose, sealed, m.now())
	if err != nil {
		return nil, fmt.Errorf("the sealed %s value: %w", purpose, err)
	}
	return plain, nil
}
