package login

import (
	"encoding/json"
	"net/http"
	"strings"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
)

// logout handles POST LogoutPath: the session must be valid and the request must
// carry its CSRF token (header X-Csrf-Token, or form field csrf_token for a
// plain form), compared in constant time; then the session is revoked
// everywhere and its cookie cleared. Without both, nothing is revoked (a 401):
// a foreign page cannot log the user out.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	wantsJSON := strings.Contains(r.Header.Get("Accept"), "application/json")
	if origins := r.Header.Values("Origin"); len(origins) > 0 && !h.sameOrigin(r) {
		h.status(w, http.StatusForbidden, "the logout was sent from another site's page")
		return
	}
	s, err := h.sessions.FromRequest(r)
	if err != nil {
		h.identityError(w, err)
		return
	}
	csrf := r.Header.Values(contract.HeaderCSRFToken)
	var token string
	switch len(csrf) {
	case 0:
		form, ok := h.readForm(w, r)
		if !ok {
			return
		}
		if vs := form["csrf_token"]; len(vs) == 1 {
			token = vs[0]
		}
	case 1:
		token = csrf[0]
	}
	if !s.CSRFMatches(token) {
		h.log.Warn("logout refused: no or a wrong CSRF token", "session", *s)
		h.status(w, http.StatusUnauthorized, "the logout needs this session's CSRF token (X-Csrf-Token)")
		return
	}
	if err := h.sessions.Revoke(r.Context(), w, s); err != nil {
		h.log.Error("logout not recorded", "session", *s, "err", err.Error())
		h.identityError(w, err)
		return
	}
	h.log.Info("logged out", "session", *s)
	if wantsJSON {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(w, r, contract.LoginPath, http.StatusSeeOther)
}

// sessionInfo handles GET SessionPath: the current session, refreshed, as
// contract.SessionInfo with the agents its user can reach.
func (h *Handler) sessionInfo(w http.ResponseWriter, r *http.Request) {
	s, err := h.sessions.FromRequest(r)
	if err != nil {
		h.identityError(w, err)
		return
	}
	if s, err = h.sessions.Refresh(w, s); err != nil {
		h.identityError(w, err)
		return
	}
	agents, err := h.cfg.Agents.AgentsFor(r.Context(), s.User)
	if err != nil {
		h.log.Warn("listing the session user's agents", "session", *s, "err", err.Error())
		h.status(w, http.StatusServiceUnavailable, "the agents you can reach cannot be listed right now; try again shortly")
		return
	}
	if agents == nil {
		agents = []contract.AgentInfo{}
	}
	body, err := json.Marshal(contract.SessionInfo{User: s.User.Username, CSRFToken: s.CSRFToken, ExpiresAt: s.ExpiresAt,
		IdleExpiresAt: s.IdleExpiresAt(h.sessions.IdleTimeout()), Agents: agents})
	if err != nil {
		h.status(w, http.StatusInternalServerError, "the session could not be encoded")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// identityError answers a session error as a Status: 401, or 503 when the
// revocation store could not answer.
func (h *Handler) identityError(w http.ResponseWriter, err error) {
	e := identity.AsError(err)
	code := http.StatusUnauthorized
	if e.Unavailable() {
		code = http.StatusServiceUnavailable
	}
	if e.Reason != identity.ReasonNoCredential {
		h.log.Info("session refused", "reason", string(e.Reason), "err", errText(e))
	}
	h.status(w, code, e.Public)
}

// status writes a Kubernetes Status body, as every other gateway answer.
func (h *Handler) status(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(contract.HeaderError, string(contract.StatusReason(code)))
	w.WriteHeader(code)
	_, _ = w.Write(contract.StatusBody(code, msg))
}
