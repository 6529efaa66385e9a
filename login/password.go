package login

import (
	"errors"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/session"
)

// wrongPassword is the one message for every refused password login: a wrong
// password, an unknown, blocked or password-less user all read the same.
const wrongPassword = "Wrong username or password."

// passwordLogin handles POST LoginPath: same origin, bounded form, both attempt
// buckets, then the password check; a session and 303 on success.
func (h *Handler) passwordLogin(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Passwords == nil {
		h.page(w, http.StatusNotFound, h.loginForm("", "", "This gateway has no password login; use the link below."))
		return
	}
	if !h.sameOrigin(r) {
		h.log.Warn("login form refused: not sent from the gateway's own page", "origin", r.Header.Get("Origin"), "client", h.client(r))
		h.page(w, http.StatusForbidden, pageData{Title: "Log in", Error: "This login was not sent from this gateway's own login page, so it was refused.",
			Message: "Open the login page and log in there.", Link: "/ui/login", LinkText: "Go to the login page"})
		return
	}
	form, ok := h.readForm(w, r)
	if !ok {
		return
	}
	username, password, next := form.Get("username"), form.Get("password"), form.Get("next")
	if len(username) > 255 {
		username = username[:255]
	}
	now := h.now()
	okUser, waitUser := h.users.take(strings.ToLower(username), now)
	okClient, waitClient := h.clients.take(h.client(r), now)
	if !okUser || !okClient {
		wait := max(waitUser, waitClient)
		h.log.Warn("login attempts limited", "client", h.client(r), "per_user", !okUser, "per_client", !okClient, "retry_after", wait.String())
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		h.page(w, http.StatusTooManyRequests, h.loginForm(next, username,
			"Too many login attempts. Wait "+roundUp(wait)+" and try again."))
		return
	}
	u, err := h.cfg.Passwords.CheckPassword(r.Context(), username, password)
	if err != nil {
		if e := identity.AsError(err); e.Unavailable() {
			h.log.Warn("password login not checked", "reason", string(e.Reason), "err", errText(e))
			w.Header().Set("Retry-After", "2")
			h.page(w, http.StatusServiceUnavailable, h.loginForm(next, username,
				"The gateway is checking too many logins right now. Try again in a few seconds."))
			return
		}
		h.log.Info("password login refused", "client", h.client(r), "err", errText(identity.AsError(err)))
		h.page(w, http.StatusUnauthorized, h.loginForm(next, "", wrongPassword)) // the same page for every cause: not even the username echoed
		return
	}
	s, err := h.sessions.Issue(w, u, session.MethodPassword)
	if err != nil {
		h.log.Error("issuing a session", "user", u.Username, "err", err.Error())
		h.page(w, http.StatusInternalServerError, h.loginForm(next, username, "The gateway could not start a session. Try again; tell its operator if it persists."))
		return
	}
	h.log.Info("logged in", "session", *s, "client", h.client(r))
	http.Redirect(w, r, after(next), http.StatusSeeOther)
}

// readForm reads a url-encoded form of at most maxFormBody bytes; it answers
// 413 or 400 itself.
func (h *Handler) readForm(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.page(w, http.StatusRequestEntityTooLarge, pageData{Title: "Log in", Error: "The form was too large.", Link: "/ui/login", LinkText: "Go to the login page"})
		} else {
			h.page(w, http.StatusBadRequest, pageData{Title: "Log in", Error: "The form could not be read.", Link: "/ui/login", LinkText: "Go to the login page"})
		}
		return nil, false
	}
	return r.PostForm, true
}

// client is the request's client for the per-client limit.
func (h *Handler) client(r *http.Request) string {
	if h.cfg.ClientAddr != nil {
		return h.cfg.ClientAddr(r)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// errText is an identity error's cause for the log (never the client's input).
func errText(e *identity.Error) string {
	if e == nil {
		return ""
	}
	return e.Error()
}

func roundUp(d time.Duration) string {
	s := int(math.Ceil(d.Seconds()))
	if s <= 1 {
		return "a second"
	}
	return strconv.Itoa(s) + " seconds"
}

// ForwardedClient is a Config.ClientAddr for the listener behind kubegate's Envoy:
// the rightmost X-Forwarded-For entry, which Envoy appends with the client's
// address (HttpConnectionManager use_remote_address, which kubegate envoy
// validate requires, with no trusted hops: conn_manager_utility.cc
// mutateRequestHeaders), else the connection's address. A client that reaches
// the listener directly could write that header itself, so keep
// --browser-listen where only Envoy reaches it; the per-username limit holds
// either way.
func ForwardedClient(r *http.Request) string {
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		last := xff[len(xff)-1]
		if i := strings.LastIndexByte(last, ','); i >= 0 {
			last = last[i+1:]
		}
		if ip := net.ParseIP(strings.TrimSpace(last)); ip != nil {
			return ip.String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
