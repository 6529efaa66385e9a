package browser

import (
	"fmt"
	"strconv"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"kubegate.dev/kubegate/contract"
)

// Selectors of the Dashboard's page (dashboard/assets/index.html and app.js). The
// Dashboard's own browser test uses them, so a change there breaks it first.
const (
	SelUser         = "#kg-user"
	SelLogout       = "#kg-logout"
	SelErrors       = "#kg-errors"
	SelStatus       = "#kg-status"
	SelMessage      = "#kg-message"
	SelAgent        = "#kg-agent"
	SelAgentField   = "#kg-agent-field"
	SelNSList       = "#kg-ns"
	SelNSListField  = "#kg-ns-list-field"
	SelNSText       = "#kg-ns-text"
	SelNSTextField  = "#kg-ns-text-field"
	SelTable        = "#kg-table"
	SelTableBody    = "#kg-table-body"
	SelBack         = "#kg-back"
	SelYAML         = "#kg-yaml"
	SelEvents       = "#kg-events"
	SelEventsBody   = "#kg-events-body"
	SelLog          = "#kg-log"
	SelLogState     = "#kg-log-state"
	SelLogContainer = "#kg-log-container"
	SelConfirm      = "#kg-confirm"
	SelConfirmOK    = "#kg-confirm-ok"
	SelConfirmInput = "#kg-confirm-input"
)

// SelKind is the button that shows a kind's table ("pods", "deployments", ...).
func SelKind(kind string) string { return fmt.Sprintf(`#kg-kinds button[data-kind=%q]`, kind) }

// SelRow is the table row of the object named name.
func SelRow(name string) string { return fmt.Sprintf(`%s tr[data-name=%q]`, SelTableBody, name) }

// SelLogsLink is a pod row's link to its logs.
func SelLogsLink(pod string) string {
	return fmt.Sprintf(`%s a.logs-link[data-name=%q]`, SelTableBody, pod)
}

// SelAction is a row's action button: delete, restart, scale, reconcile, suspend, resume.
func SelAction(action, name string) string {
	return fmt.Sprintf(`%s button[data-action=%q][data-name=%q]`, SelTableBody, action, name)
}

// SelTab is a detail view's tab: yaml, events, logs.
func SelTab(view string) string { return "#kg-tab-" + view }

// LoginAs logs in with the password form of the login page (contract.LoginPath:
// fields username and password) and waits for the Dashboard to show the user.
func (p *Page) LoginAs(baseURL, user, password string) {
	p.t.Helper()
	p.Navigate(baseURL + contract.LoginPath)
	p.Type(`input[name="username"]`, user)
	p.Type(`input[name="password"]`, password+kb.Enter)
	p.WaitText(SelUser, user)
}

// OpenDashboard loads the Dashboard at baseURL afresh (with an optional hash such
// as "#ns=demo") and waits until it shows who is logged in.
func (p *Page) OpenDashboard(baseURL, hash string) {
	p.t.Helper()
	// A new document every time: from the Dashboard itself, a URL that differs only
	// in its hash would not reload the page.
	p.Navigate("about:blank")
	p.Navigate(baseURL + contract.DashboardPath + hash)
	p.WaitVisible(SelUser)
}

// OpenNamespace picks the namespace, with the list when the user may list
// namespaces and with the text field when not.
func (p *Page) OpenNamespace(ns string) {
	p.t.Helper()
	mode := p.WaitFor("a namespace picker", fmt.Sprintf(
		`!document.querySelector(%s).hidden ? 'list' : !document.querySelector(%s).hidden ? 'text' : ''`,
		jsString(SelNSListField), jsString(SelNSTextField)))
	if mode == "list" {
		p.Select(SelNSList, ns)
	} else {
		// chromedp's Clear and SetValue do not reach a field's live value; a person
		// would select and retype, which is what this does.
		Eval[bool](p, "clear "+SelNSText, fmt.Sprintf(`(() => { const e = document.querySelector(%s); e.focus(); e.select(); return true; })()`, jsString(SelNSText)))
		p.Type(SelNSText, ns+kb.Enter)
	}
	p.WaitFor("the hash to name "+ns, fmt.Sprintf(`new URLSearchParams(location.hash.slice(1)).get('ns') === %s ? 'yes' : ''`, jsString(ns)))
}

// ShowKind shows the table of a kind in the current namespace and waits until it is
// live (listed and watching).
func (p *Page) ShowKind(kind string) {
	p.t.Helper()
	p.Click(SelKind(kind))
	p.WaitLive(kind)
}

// WaitLive waits until the table shows kind and its watch is open.
func (p *Page) WaitLive(kind string) {
	p.t.Helper()
	p.WaitFor(kind+" table live", fmt.Sprintf(
		`(() => { const t = document.querySelector(%s); return t && !t.closest('[hidden]') && t.dataset.kind === %s && t.dataset.live === 'true' ? 'yes' : ''; })()`,
		jsString(SelTable), jsString(kind)))
}

// WaitRow waits for the row of name and returns its text.
func (p *Page) WaitRow(name string) string {
	p.t.Helper()
	p.WaitVisible(SelRow(name))
	return p.Text(SelRow(name))
}

// WaitRowText waits until the row of name contains want.
func (p *Page) WaitRowText(name, want string) string {
	p.t.Helper()
	return p.WaitText(SelRow(name), want)
}

// WaitNoRow waits until the row of name is gone.
func (p *Page) WaitNoRow(name string) {
	p.t.Helper()
	p.WaitGone(SelRow(name))
}

// OpenPodLogs opens the logs of pod (in the current namespace's pod table) and waits
// until they stream.
func (p *Page) OpenPodLogs(pod string) {
	p.t.Helper()
	p.Click(SelLogsLink(pod))
	p.WaitLogStreaming()
}

// WaitLogStreaming waits until the log view streams.
func (p *Page) WaitLogStreaming() {
	p.t.Helper()
	p.WaitFor("the log to stream", fmt.Sprintf(`document.querySelector(%s).dataset.streaming === 'true' ? 'yes' : ''`, jsString(SelLog)))
}

// WaitLog waits until the log view contains want.
func (p *Page) WaitLog(want string) string {
	p.t.Helper()
	return p.WaitText(SelLog, want)
}

// Act clicks a row's action button and confirms it; for scale, replicas is the new
// count (otherwise ignored).
func (p *Page) Act(action, name string, replicas int) {
	p.t.Helper()
	p.Click(SelAction(action, name))
	p.WaitVisible(SelConfirmOK)
	if action == "scale" {
		p.Step("set replicas", chromedp.SetValue(chromedp.CSS(SelConfirmInput), strconv.Itoa(replicas)))
	}
	p.Click(SelConfirmOK)
	p.WaitGone(SelConfirm + "[open]")
}

// WaitError waits until the error region contains want and returns its text.
func (p *Page) WaitError(want string) string {
	p.t.Helper()
	return p.WaitText(SelErrors, want)
}

// DismissError clears the error region.
func (p *Page) DismissError() {
	p.t.Helper()
	p.Click("#kg-errors-dismiss")
}

// OpenDashboardNoSession loads the Dashboard without a session and checks that it
// sends the browser to the login page with next= the Dashboard's address (hash
// included), so a login comes back to where the person was.
func (p *Page) OpenDashboardNoSession(baseURL, hash string) {
	p.t.Helper()
	p.Navigate(baseURL + contract.DashboardPath + hash)
	want := contract.DashboardPath + hash
	p.WaitFor("the login page with next="+want, fmt.Sprintf(
		`location.pathname === %s && new URLSearchParams(location.search).get('next') === %s ? location.href : ''`,
		jsString(contract.LoginPath), jsString(want)))
}
