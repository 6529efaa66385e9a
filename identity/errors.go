package identity

import (
	"errors"
	"fmt"
)

// Reason is why a credential was not accepted. The values are stable: they are metric
// labels and appear in audit log lines. They are never shown to the client beyond
// what Error.Public says.
type Reason string

const (
	ReasonNoCredential Reason = "no_credential"          // nothing to authenticate with
	ReasonMalformed    Reason = "malformed_credential"   // a credential form is present but not well formed
	ReasonUnsupported  Reason = "unsupported_credential" // well formed, but this gateway does not accept that type
	ReasonWrongAgent   Reason = "wrong_agent"            // names an agent this gateway does not serve
	ReasonInvalid      Reason = "invalid_credential"     // unknown token, bad signature, user not found
	ReasonExpired      Reason = "expired"
	ReasonRevoked      Reason = "revoked"
	ReasonScope        Reason = "missing_scope" // PAT without the k8s_proxy scope
	ReasonInactive     Reason = "user_inactive" // user blocked or deactivated
	ReasonCSRF         Reason = "bad_csrf"
	ReasonUnavailable  Reason = "identity_unavailable" // the identity source could not answer
	ReasonBusy         Reason = "identity_busy"        // too many credentials being checked at once; retry
)

// Unauthorized is the only message a client sees once its credential reached an
// identity source: the gateway does not say whether a user, token or agent exists.
const Unauthorized = "Unauthorized"

// Error is a refused credential. Public is safe to send to the client; Err is the
// cause for the server's log and must never contain a secret.
type Error struct {
	Reason Reason
	Public string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Reason, e.Public, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Reason, e.Public)
}

func (e *Error) Unwrap() error { return e.Err }

// Unavailable reports whether the credential could not be checked because the
// identity source could not answer or was too busy to be asked (a 503, not a 401;
// never cached).
func (e *Error) Unavailable() bool { return e.Reason == ReasonUnavailable || e.Reason == ReasonBusy }

// Malformed returns a parse-time rejection whose message says what was wrong.
func Malformed(format string, args ...any) *Error {
	return &Error{Reason: ReasonMalformed, Public: fmt.Sprintf(format, args...)}
}

// Rejected returns a rejection from an identity source. The client sees only
// "Unauthorized"; cause is for the log.
func Rejected(reason Reason, cause error) *Error {
	return &Error{Reason: reason, Public: Unauthorized, Err: cause}
}

// SourceUnavailable returns the error for an identity source that could not be reached
// or answered with a server error.
func SourceUnavailable(source string, cause error) *Error {
	return &Error{
		Reason: ReasonUnavailable,
		Public: fmt.Sprintf("the identity source (%s) is unavailable; try again shortly, and tell the gateway's operator if it persists", source),
		Err:    cause,
	}
}

// Busy returns the error for a credential that was not checked because the source
// already has as many checks in flight as it allows: a 503 telling the client to
// retry, so that a flood of unknown credentials fails fast instead of queueing.
func Busy(source string, cause error) *Error {
	return &Error{
		Reason: ReasonBusy,
		Public: fmt.Sprintf("the identity source (%s) is checking too many credentials at once; try again in a few seconds", source),
		Err:    cause,
	}
}

// AsError extracts an *Error from err. A non-nil err that is not an *Error is treated
// as the source being unavailable: when kubegate cannot tell why, it denies, and the
// client is told to retry rather than that its credential is bad.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return SourceUnavailable("unknown", err)
}
