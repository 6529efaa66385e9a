package browser_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp/kb"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/dashboard"
	"kubegate.dev/kubegate/test/browser"
	"kubegate.dev/kubegate/test/cluster"
	"kubegate.dev/kubegate/test/stack"
)

// TestDashboard drives the Dashboard in a real chromium against a real API server
// with KWOK pods, through the test-only stand-in for the gateway (standIn).
func TestDashboard(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{ControllerManager: true, Kubelet: true})
	ctx := t.Context()
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.SeedDemo(ctx, cs); err != nil {
		t.Fatal(err)
	}
	podsDir := t.TempDir()
	demo, err := stack.StartDemoPods(ctx, c, podsDir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = demo.Close() })
	gw := newStandIn(t, c)
	base := gw.srv.URL
	p := browser.Start(t, browser.Options{TrustCertificates: []*x509.Certificate{gw.srv.Certificate()}, Timeout: 5 * time.Minute})
	ns := stack.DemoNamespace

	t.Run("security headers", func(t *testing.T) {
		resp, err := gw.srv.Client().Get(base + contract.DashboardPath)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Content-Security-Policy"); got != dashboard.ContentSecurityPolicy {
			t.Errorf("Content-Security-Policy = %q", got)
		}
	})

	t.Run("cannot list namespaces, types one", func(t *testing.T) {
		p := p.For(t)
		p.OpenDashboard(base, "")
		if got := p.Text(browser.SelUser); got != testUser {
			t.Errorf("user shown %q, want %q", got, testUser)
		}
		p.WaitVisible(browser.SelAgentField) // two agents: the picker shows
		// alice may not list namespaces (the demo RBAC is namespaced): the cluster's
		// 403 turns the picker into a text field, without an error.
		p.WaitVisible(browser.SelNSTextField)
		p.OpenNamespace(ns)
		p.WaitLive("pods")
	})

	t.Run("pods table shows the demo pods", func(t *testing.T) {
		p := p.For(t)
		for _, pod := range []string{"web", "worker"} {
			row := p.WaitRowText(pod, "Running")
			if !strings.Contains(row, "1/1") {
				t.Errorf("row of %s = %q, want READY 1/1", pod, row)
			}
		}
	})

	t.Run("page loads with zero CSP violations", func(t *testing.T) {
		p := p.For(t)
		if v := p.CSPViolations(); len(v) != 0 {
			t.Errorf("CSP violations: %q", v)
		}
	})

	t.Run("a new pod appears live", func(t *testing.T) {
		p := p.For(t)
		createPod(t, cs, ns, "live-1")
		p.WaitRow("live-1")
	})

	t.Run("a pod's log streams and a new line arrives", func(t *testing.T) {
		p := p.For(t)
		p.OpenPodLogs("web")
		p.WaitLog("web: handled request #")
		if got := p.Text(browser.SelLogContainer); got != "web" {
			t.Errorf("container picker shows %q, want web", got)
		}
		line := fmt.Sprintf("kubegate browser test line %d", time.Now().UnixNano())
		if err := cluster.AppendContainerLog(filepath.Join(podsDir, "web", "container.log"), line); err != nil {
			t.Fatal(err)
		}
		p.WaitLog(line)
	})

	t.Run("the container picker switches the stream, leaving stops it", func(t *testing.T) {
		p := p.For(t)
		logFile := filepath.Join(podsDir, "multi.log")
		if err := cluster.AppendContainerLog(logFile, "multi: started"); err != nil {
			t.Fatal(err)
		}
		if err := c.SimulatePod(ctx, ns, "multi", cluster.PodSimulation{LogsFile: logFile}); err != nil {
			t.Fatal(err)
		}
		_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "multi"},
			Spec: corev1.PodSpec{NodeName: cluster.KubeletNode, Containers: []corev1.Container{
				{Name: "app", Image: "busybox:1.37"}, {Name: "sidecar", Image: "busybox:1.37"},
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitPodRunning(ctx, ns, "multi"); err != nil {
			t.Fatal(err)
		}
		p.Click(browser.SelBack)
		p.WaitRowText("multi", "2/2")
		p.OpenPodLogs("multi")
		p.WaitLog("multi: started")
		if got := browser.Eval[[]string](p, "the containers offered", `[...document.querySelectorAll('#kg-log-container option')].map(o => o.value)`); strings.Join(got, ",") != "app,sidecar" {
			t.Errorf("container picker offers %q, want app and sidecar", got)
		}
		p.Select(browser.SelLogContainer, "sidecar")
		p.WaitText(browser.SelLogState, "Streaming sidecar")
		p.WaitLog("multi: started")
		var sawSidecar bool
		for _, call := range gw.callsSeen() {
			sawSidecar = sawSidecar || strings.Contains(call, "/pods/multi/log?") && strings.Contains(call, "container=sidecar") && strings.Contains(call, "follow=true")
		}
		if !sawSidecar {
			t.Errorf("no log request for container sidecar with follow=true among %q", gw.callsSeen())
		}
		gw.mu.Lock()
		open := gw.logsOpen
		gw.mu.Unlock()
		if open < 1 {
			t.Fatalf("%d log streams open while the logs stream", open)
		}
		p.Click(browser.SelBack)
		p.WaitLive("pods")
		waitFor(t, "no log stream open after leaving the logs", func() bool {
			gw.mu.Lock()
			defer gw.mu.Unlock()
			return gw.logsOpen == 0
		})
		p.Click(browser.SelLogsLink("web")) // back to web's logs for the next steps
		p.WaitLogStreaming()
	})

	t.Run("YAML view", func(t *testing.T) {
		p := p.For(t)
		p.Click(browser.SelTab("yaml"))
		yaml := p.WaitText(browser.SelYAML, "kind: Pod")
		for _, want := range []string{"name: web", "namespace: " + ns, "nodeName: " + cluster.KubeletNode} {
			if !strings.Contains(yaml, want) {
				t.Errorf("YAML lacks %q:\n%s", want, yaml)
			}
		}
	})

	t.Run("events arrive live", func(t *testing.T) {
		p := p.For(t)
		p.Click(browser.SelTab("events"))
		p.WaitFor("events live", `document.querySelector('#kg-events').dataset.live === 'true' ? 'yes' : ''`)
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("a test event %d", time.Now().UnixNano())
		now := metav1.Now()
		_, err = cs.CoreV1().Events(ns).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: "web-"},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "web", UID: pod.UID, APIVersion: "v1"},
			Reason:         "KubegateTest", Message: msg, Type: corev1.EventTypeNormal,
			Source: corev1.EventSource{Component: "dashboard-test"}, FirstTimestamp: now, LastTimestamp: now, Count: 1,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		row := p.WaitText(browser.SelEventsBody, msg)
		if !strings.Contains(row, "KubegateTest") {
			t.Errorf("events table %q lacks the reason", row)
		}
	})

	t.Run("delete a pod and watch it go", func(t *testing.T) {
		p := p.For(t)
		p.Click(browser.SelBack)
		p.WaitLive("pods")
		p.Act("delete", "live-1", 0)
		p.WaitNoRow("live-1")
		p.WaitText(browser.SelStatus, "Deleted Pod demo/live-1")
		waitFor(t, "pod live-1 gone from the API server", func() bool {
			_, err := cs.CoreV1().Pods(ns).Get(ctx, "live-1", metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
	})

	t.Run("restart and scale a deployment", func(t *testing.T) {
		p := p.For(t)
		createDeployment(t, cs, ns, "api")
		p.ShowKind("deployments")
		p.WaitRow("api")
		before := time.Now().Add(-time.Second).Truncate(time.Second)
		p.Act("restart", "api", 0)
		p.WaitText(browser.SelStatus, "Restarted Deployment demo/api")
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		at, err := time.Parse(time.RFC3339, d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"])
		if err != nil || at.Before(before) || at.After(time.Now().Add(time.Second)) {
			t.Errorf("restartedAt = %q (%v), want an RFC 3339 time of the restart", d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"], err)
		}
		p.Act("scale", "api", 3)
		p.WaitText(browser.SelStatus, "Scaled Deployment demo/api to 3")
		d, err = cs.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			t.Errorf("spec.replicas = %v after scaling to 3", d.Spec.Replicas)
		}
		p.WaitRowText("api", "/3") // the watch shows the new spec
	})

	t.Run("a watch that is 410 Gone is re-listed", func(t *testing.T) {
		p := p.For(t)
		path := contract.PathPrefix + "api/v1/namespaces/" + ns + "/services"
		gw.mu.Lock()
		gw.expire = path
		gw.mu.Unlock()
		lists := func() int {
			n := 0
			for _, call := range gw.callsSeen() {
				if strings.HasSuffix(call, " GET "+path) {
					n++
				}
			}
			return n
		}
		before := lists()
		p.ShowKind("services")
		waitFor(t, "a second list after the 410", func() bool { return lists()-before >= 2 })
		p.WaitLive("services")
		_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "api"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		row := p.WaitRowText("api", "80/TCP") // the watch after the re-list works
		if !strings.Contains(row, "ClusterIP") {
			t.Errorf("service row %q", row)
		}
		p.ShowKind("deployments")
	})

	t.Run("the cluster's refusal", func(t *testing.T) {
		p := p.For(t)
		p.OpenNamespace("kube-system") // alice has no rights there
		text := p.WaitError("The cluster refused this")
		for _, want := range []string{"forbidden", `User "alice" cannot list resource "deployments"`, "HTTP 403"} {
			if !strings.Contains(text, want) {
				t.Errorf("error %q lacks %q", text, want)
			}
		}
		if strings.Contains(text, "kubegate") {
			t.Errorf("the cluster's refusal is shown as the gateway's: %q", text)
		}
		p.DismissError()
	})

	t.Run("the gateway's refusal", func(t *testing.T) {
		p := p.For(t)
		p.Select(browser.SelAgent, fmt.Sprint(agentDeny))
		p.OpenNamespace(ns)
		text := p.WaitError("kubegate (the gateway) refused this")
		for _, want := range []string{"may not use agent 2", "agent_forbidden", "HTTP 403"} {
			if !strings.Contains(text, want) {
				t.Errorf("error %q lacks %q", text, want)
			}
		}
		p.DismissError()
	})

	t.Run("may list namespaces, picks one", func(t *testing.T) {
		p := p.For(t)
		_, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "namespace-lister"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"list"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "namespace-lister"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "namespace-lister"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: testGroups[0]}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "alice may list namespaces", func() bool {
			_, err := kubernetes.NewForConfigOrDie(impersonating(c)).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
			return err == nil
		})
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d", agentOK))
		p.WaitVisible(browser.SelNSListField)
		options := p.Text(browser.SelNSList)
		for _, want := range []string{ns, "default", "kube-system"} {
			if !strings.Contains(options, want) {
				t.Errorf("namespace list %q lacks %s", options, want)
			}
		}
		p.OpenNamespace(ns)
		p.WaitLive("pods")
		p.WaitRow("web")
	})

	t.Run("Flux Kustomizations: status, reconcile, suspend, resume", func(t *testing.T) {
		p := p.For(t)
		dyn := installFluxKustomization(t, c)
		// alice's edit role does not cover Flux's kinds (the CRDs ship no
		// aggregated roles): grant them in demo as an operator would.
		grantFlux(t, cs, ns)
		ks := dyn.Resource(kustomizationGVR).Namespace(ns)
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
			"metadata": map[string]any{"name": "apps"},
			"spec": map[string]any{
				"interval": "10m", "path": "./apps", "prune": true,
				"sourceRef": map[string]any{"kind": "GitRepository", "name": "flux-system"},
			},
		}}
		if _, err := ks.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No kustomize-controller runs here: set the Ready condition it would.
		status := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
			"metadata": map[string]any{"name": "apps", "namespace": ns},
			"status": map[string]any{"conditions": []any{map[string]any{
				"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
				"message": "Applied revision: main@sha1:0123abc", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
				"observedGeneration": int64(1),
			}}},
		}}
		if _, err := ks.ApplyStatus(ctx, "apps", status, metav1.ApplyOptions{FieldManager: "kustomize-controller", Force: true}); err != nil {
			t.Fatal(err)
		}
		// Discovery runs when the Dashboard starts: reload.
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d&ns=%s&kind=kustomizations", agentOK, ns))
		p.WaitLive("kustomizations")
		row := p.WaitRowText("apps", "Applied revision: main@sha1:0123abc")
		if !strings.Contains(row, "True") {
			t.Errorf("row %q lacks Ready True", row)
		}
		get := func() *unstructured.Unstructured {
			t.Helper()
			o, err := ks.Get(ctx, "apps", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return o
		}
		p.Act("reconcile", "apps", 0)
		p.WaitText(browser.SelStatus, "Requested a reconcile of Kustomization demo/apps")
		first := get().GetAnnotations()[fluxRequestedAt]
		if _, err := time.Parse(time.RFC3339, first); err != nil {
			t.Errorf("%s = %q after reconcile: %v", fluxRequestedAt, first, err)
		}
		p.Act("suspend", "apps", 0)
		p.WaitRowText("apps", "Suspended")
		if s, _, _ := unstructured.NestedBool(get().Object, "spec", "suspend"); !s {
			t.Errorf("spec.suspend is not true after suspend")
		}
		p.Act("resume", "apps", 0)
		p.WaitVisible(browser.SelAction("suspend", "apps"))
		o := get()
		if s, found, _ := unstructured.NestedBool(o.Object, "spec", "suspend"); s || !found {
			t.Errorf("spec.suspend = %v (set: %v) after resume, want false", s, found)
		}
		if again := o.GetAnnotations()[fluxRequestedAt]; again == first {
			t.Errorf("resume did not request a reconcile (%s still %q)", fluxRequestedAt, again)
		}
	})

	t.Run("Flux HelmReleases: status and suspend", func(t *testing.T) {
		p := p.For(t)
		dyn := installHelmReleaseStandIn(t, c)
		hr := dyn.Resource(helmReleaseGVR).Namespace(ns)
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
			"metadata": map[string]any{"name": "podinfo"},
			"spec":     map[string]any{"interval": "5m", "chart": map[string]any{"spec": map[string]any{"chart": "podinfo"}}},
			"status": map[string]any{"conditions": []any{map[string]any{
				"type": "Ready", "status": "False", "reason": "InstallFailed", "message": "install retries exhausted",
			}}},
		}}
		if _, err := hr.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d&ns=%s&kind=helmreleases", agentOK, ns))
		p.WaitLive("helmreleases")
		row := p.WaitRowText("podinfo", "install retries exhausted")
		if !strings.Contains(row, "False") {
			t.Errorf("row %q lacks Ready False", row)
		}
		p.Act("suspend", "podinfo", 0)
		p.WaitRowText("podinfo", "Suspended")
		o, err := hr.Get(ctx, "podinfo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s, _, _ := unstructured.NestedBool(o.Object, "spec", "suspend"); !s {
			t.Errorf("spec.suspend is not true after suspend")
		}
	})

	t.Run("keyboard only to a pod's logs", func(t *testing.T) {
		p := p.For(t)
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d&ns=%s&kind=pods", agentOK, ns))
		p.WaitLive("pods")
		p.WaitRow("worker")
		target := browser.SelLogsLink("worker")
		found := false
		for i := 0; i < 60 && !found; i++ {
			p.Press(kb.Tab)
			found = browser.Eval[bool](p, "focus on worker's logs link", fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, target))
		}
		if !found {
			t.Fatalf("60 Tabs never reached %s", target)
		}
		p.Press(kb.Enter)
		p.WaitLogStreaming()
		p.WaitLog("worker: handled request #")
	})

	t.Run("every API call carried the agent and the CSRF token", func(t *testing.T) {
		calls := gw.callsSeen()
		if len(calls) == 0 {
			t.Fatal("no API call reached the stand-in")
		}
		for _, call := range calls {
			agent, rest, _ := strings.Cut(call, " ")
			csrf, _, _ := strings.Cut(rest, " ")
			if (agent != fmt.Sprint(agentOK) && agent != fmt.Sprint(agentDeny)) || csrf != testCSRF {
				t.Errorf("call %q: agent or CSRF token missing", call)
			}
		}
	})

	t.Run("the idle timer is refreshed at most once a minute, on activity only", func(t *testing.T) {
		p := p.For(t)
		// The test moves the page's clock (Date.now) forward instead of waiting.
		p.AddInitScript(`(() => { const real = Date.now; window.__kgSkew = 0; Date.now = () => real() + window.__kgSkew; })()`)
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d&ns=%s&kind=pods", agentOK, ns))
		p.WaitLive("pods")
		count := func() int {
			gw.mu.Lock()
			defer gw.mu.Unlock()
			return gw.sessions
		}
		skew := func(d time.Duration) {
			browser.Eval[bool](p, "move the clock", fmt.Sprintf(`(window.__kgSkew += %d, true)`, d.Milliseconds()))
		}
		settle := func() { // one round trip: a refresh the key caused has been sent
			browser.Eval[bool](p, "a round trip", `fetch('/ui/assets/app.css', {cache: 'no-store'}).then(() => true)`)
		}
		start := count()
		p.Press("x")
		settle()
		if n := count() - start; n != 0 {
			t.Errorf("a key within the first minute called the session endpoint %d times, want 0", n)
		}
		skew(61 * time.Second) // a minute passes, idle
		settle()
		if n := count() - start; n != 0 {
			t.Errorf("an idle minute called the session endpoint %d times, want 0", n)
		}
		p.Press("x") // then the person acts
		settle()
		waitFor(t, "the refresh to reach the stand-in", func() bool { return count()-start == 1 })
		p.Press("x")
		p.Click(browser.SelKind("pods"))
		settle()
		if n := count() - start; n != 1 {
			t.Errorf("%d session calls after a key, a minute, a key and a click; want 1", n)
		}
	})

	t.Run("agents: none, one", func(t *testing.T) {
		p := p.For(t)
		setAgents := func(a []contract.AgentInfo) {
			gw.mu.Lock()
			gw.agents = a
			gw.mu.Unlock()
		}
		defer setAgents(twoAgents)
		setAgents([]contract.AgentInfo{})
		p.OpenDashboard(base, "")
		p.WaitText(browser.SelMessage, "cannot reach any agent")
		if shown := browser.Eval[bool](p, "pickers hidden", `!document.querySelector('#kg-pickers').hidden`); shown {
			t.Errorf("the pickers show without an agent")
		}
		setAgents(twoAgents[:1])
		p.OpenDashboard(base, "#ns="+ns)
		p.WaitLive("pods")
		if shown := browser.Eval[bool](p, "agent picker hidden", `!document.querySelector('#kg-agent-field').hidden`); shown {
			t.Errorf("the agent picker shows with one agent")
		}
	})

	t.Run("a session ended elsewhere sends the page to the login", func(t *testing.T) {
		p := p.For(t)
		p.OpenDashboard(base, fmt.Sprintf("#agent=%d&ns=%s&kind=pods", agentOK, ns))
		p.WaitLive("pods")
		gw.mu.Lock()
		gw.loggedOut = true // as after a logout in another tab, or the session's expiry
		gw.mu.Unlock()
		defer func() {
			gw.mu.Lock()
			gw.loggedOut = false
			gw.mu.Unlock()
		}()
		p.Click(browser.SelKind("services"))
		// kubegate's 401 (x-kubegate-error) on the API call: back to the login page,
		// to come back to the services table afterwards.
		want := fmt.Sprintf("%s#agent=%d&ns=%s&kind=services", contract.DashboardPath, agentOK, ns)
		p.WaitFor("the login page with next="+want, fmt.Sprintf(
			`location.pathname === %q && new URLSearchParams(location.search).get('next') === %q ? 'yes' : ''`, contract.LoginPath, want))
	})

	t.Run("logout", func(t *testing.T) {
		p := p.For(t)
		p.OpenDashboard(base, "")
		p.Click(browser.SelLogout)
		p.WaitVisible("#login")
		gw.mu.Lock()
		logouts := append([]string(nil), gw.logouts...)
		gw.mu.Unlock()
		if len(logouts) != 1 || logouts[0] != testCSRF {
			t.Errorf("logouts seen %q, want one with the session's CSRF token", logouts)
		}
		// Without a session the Dashboard goes to the login page, saying where to
		// come back to.
		p.OpenDashboardNoSession(base, "#ns=demo")
	})
}

// impersonating is the admin's config acting as the stand-in's user.
func impersonating(c *cluster.Cluster) *rest.Config {
	cfg := c.AdminConfig()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: testUser, Groups: testGroups}
	return cfg
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func createPod(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: cluster.KubeletNode, Containers: []corev1.Container{{
			Name: name, Image: "busybox:1.37",
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func createDeployment(t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	one := int32(1)
	labels := map[string]string{"app": name}
	_, err := cs.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "busybox:1.37"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}
