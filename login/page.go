package login

import (
	"bytes"
	"html/template"
	"net/http"
	"net/url"

	"kubegate.dev/kubegate/contract"
)

// The pages are plain HTML without inline script or style (the CSP allows
// neither): a form that works without JavaScript, an error slot read out by
// screen readers (role=alert), and a link back where there is somewhere to go.
var pages = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} · kubegate</title>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
{{if .Error}}<p role="alert" id="error"><strong>{{.Error}}</strong></p>{{end}}
{{if .Message}}<p id="message">{{.Message}}</p>{{end}}
{{if .Form}}
{{if .Passwords}}
<form method="post" action="{{.LoginPath}}">
<p><label for="username">Username</label><br>
<input id="username" name="username" autocomplete="username" required autofocus value="{{.Username}}" maxlength="255"></p>
<p><label for="password">Password</label><br>
<input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024"></p>
{{if .Next}}<input type="hidden" name="next" value="{{.Next}}">{{end}}
<p><button type="submit">Log in</button></p>
</form>
{{end}}
{{if .OIDCHost}}<p><a id="oidc-login" href="{{.OIDCLink}}">Log in with {{.OIDCHost}}</a></p>{{end}}
{{end}}
{{if .Link}}<p><a href="{{.Link}}">{{.LinkText}}</a></p>{{end}}
</main>
</body>
</html>
`))

type pageData struct {
	Title, Error, Message string
	// The login form.
	Form, Passwords           bool
	LoginPath, Username, Next string
	OIDCHost, OIDCLink        string
	Link, LinkText            string
}

// page renders a page with status. The template is rendered into a buffer first,
// so a failure is a clean 500 rather than half a page.
func (h *Handler) page(w http.ResponseWriter, status int, d pageData) {
	var b bytes.Buffer
	if err := pages.Execute(&b, d); err != nil {
		h.log.Error("rendering a login page", "err", err.Error())
		http.Error(w, "kubegate: the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// loginForm is the login page's data, with an error message or none.
func (h *Handler) loginForm(next, username, errMsg string) pageData {
	d := pageData{Title: "Log in", Error: errMsg, Form: true, Passwords: h.cfg.Passwords != nil, LoginPath: contract.LoginPath,
		Username: username, Next: safeNext(next)}
	if h.oidc != nil {
		d.OIDCHost = h.oidc.host
		d.OIDCLink = contract.OIDCLoginPath
		if d.Next != "" {
			d.OIDCLink += "?" + url.Values{"next": {d.Next}}.Encode()
		}
	}
	return d
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	h.page(w, http.StatusOK, h.loginForm(r.URL.Query().Get("next"), "", ""))
}
