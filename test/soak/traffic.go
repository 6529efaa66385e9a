package soak

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	//lint:ignore SA1019 client-go v0.37.2's portforward.NewOnAddresses and spdy.NewDialer still take and return this package's Dialer (k8s.io/streaming's is a distinct type)
	"k8s.io/apimachinery/pkg/util/httpstream"

	"kubegate.dev/kubegate/test/stack"
)

// requestTimeout bounds one short request; a slow answer is not a failure.
const requestTimeout = 30 * time.Second

// userConfig is a client-go configuration for the gateway with a personal access
// token, whose requests carry the marker of their context in the User-Agent.
func (r *run) userConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            r.st.GatewayURL,
		BearerToken:     fmt.Sprintf("pat:%d:%s", stack.AgentID, token),
		TLSClientConfig: rest.TLSClientConfig{CAFile: r.st.GatewayCA},
		QPS:             -1,
		UserAgent:       uaPrefix + "0",
		WrapTransport:   func(rt http.RoundTripper) http.RoundTripper { return markingTransport{rt} },
	}
}

// client is the (cached) clientset of a token.
func (r *run) client(token string) (*kubernetes.Clientset, error) {
	r.clientsMu.Lock()
	defer r.clientsMu.Unlock()
	if cs, ok := r.clients[token]; ok {
		return cs, nil
	}
	cs, err := kubernetes.NewForConfig(r.userConfig(token))
	if err != nil {
		return nil, err
	}
	r.clients[token] = cs
	return cs, nil
}

// do sends one short request and records it.
func (r *run) do(ctx context.Context, user, token, kind string, expect int, fn func(context.Context, *kubernetes.Clientset, int64) error) Record {
	rec := r.rec.begin(user, kind, expect)
	cs, err := r.client(token)
	if err == nil {
		cctx, cancel := context.WithTimeout(withMarker(ctx, rec.Seq), requestTimeout)
		err = fn(cctx, cs, rec.Seq)
		cancel()
	}
	rec.Cancelled = ctx.Err() != nil && err != nil // the run is ending: not an outcome of the gateway
	return r.rec.end(rec, err)
}

// An op is one kind of short request; weight is its share of the mix.
type op struct {
	kind   string
	weight int
	run    func(ctx context.Context, r *run, rng *rand.Rand)
}

// mix is the traffic of the short-request workers.
var mix = []op{
	{KindGet, 20, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		r.do(ctx, u, r.data.Tokens[u], KindGet, 0, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			_, err := cs.CoreV1().Pods(Namespace).Get(ctx, PodName, metav1.GetOptions{})
			return err
		})
	}},
	{KindList, 20, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		r.do(ctx, u, r.data.Tokens[u], KindList, 0, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			_, err := cs.CoreV1().ConfigMaps(Namespace).List(ctx, metav1.ListOptions{})
			return err
		})
	}},
	{KindLogs, 6, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		r.do(ctx, u, r.data.Tokens[u], KindLogs, 0, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			tail := int64(3)
			_, err := cs.CoreV1().Pods(Namespace).GetLogs(PodName, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
			return err
		})
	}},
	{KindExec, 5, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		tok := r.data.Tokens[u]
		r.do(ctx, u, tok, KindExec, 0, func(ctx context.Context, cs *kubernetes.Clientset, seq int64) error { return r.exec(ctx, cs, tok, seq) })
	}},
	{KindPortForward, 4, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		tok := r.data.Tokens[u]
		r.do(ctx, u, tok, KindPortForward, 0, func(ctx context.Context, cs *kubernetes.Clientset, seq int64) error {
			return r.portForward(ctx, cs, tok, seq)
		})
	}},
	{KindNonMember, 10, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.nonMember(rng)
		r.do(ctx, u, r.data.Tokens[u], KindNonMember, http.StatusForbidden, listPods)
	}},
	{KindBadToken, 8, func(ctx context.Context, r *run, rng *rand.Rand) {
		i := rng.IntN(len(r.data.BadTokens))
		r.do(ctx, fmt.Sprintf("bad-token-%d", i), r.data.BadTokens[i], KindBadToken, http.StatusUnauthorized, listPods)
	}},
	{KindUnknown, 4, func(ctx context.Context, r *run, rng *rand.Rand) {
		r.do(ctx, "unknown", fmt.Sprintf("glpat-soakunknown%04d", rng.IntN(10000)), KindUnknown, http.StatusUnauthorized, listPods)
	}},
	{KindImpersonate, 6, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		r.do(ctx, u, r.data.Tokens[u], KindImpersonate, http.StatusForbidden, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			return cs.CoreV1().RESTClient().Get().Namespace(Namespace).Resource("pods").
				SetHeader("Impersonate-User", "system:admin").SetHeader("Impersonate-Group", "system:masters").Do(ctx).Error()
		})
	}},
	{KindPolicy, 6, func(ctx context.Context, r *run, rng *rand.Rand) {
		u := r.member(rng)
		r.do(ctx, u, r.data.Tokens[u], KindPolicy, http.StatusForbidden, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			// RBAC lets gitlab:user read this secret: only the operator module stops it.
			_, err := cs.CoreV1().Secrets(Namespace).Get(ctx, SecretName, metav1.GetOptions{})
			return err
		})
	}},
}

func listPods(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
	_, err := cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	return err
}

// member picks a member for a request. In the GitLab phase every new identity
// costs one GitLab call per listed entry (1,000), so the traffic narrows to the
// first two members (alice and the kubectl user).
func (r *run) member(rng *rand.Rand) string {
	if r.gitlabPhase.Load() {
		return r.members[rng.IntN(min(2, len(r.members)))]
	}
	return r.members[rng.IntN(len(r.members))]
}

// nonMember likewise narrows to the outsider in the GitLab phase.
func (r *run) nonMember(rng *rand.Rand) string {
	if r.gitlabPhase.Load() {
		return r.data.Outsider
	}
	return r.nonMembers[rng.IntN(len(r.nonMembers))]
}

// worker sends the mix until ctx ends, pausing between requests so the load stays
// modest on a shared machine.
func (r *run) worker(ctx context.Context, id int) {
	rng := rand.New(rand.NewPCG(uint64(id), 0x736f616b))
	total := 0
	for _, o := range mix {
		total += o.weight
	}
	for ctx.Err() == nil {
		n := rng.IntN(total)
		for _, o := range mix {
			if n < o.weight {
				o.run(ctx, r, rng)
				break
			}
			n -= o.weight
		}
		sleep(ctx, r.cfg.Pause)
	}
}

// opConfig is a per-operation configuration for the SPDY upgrades (exec,
// port-forward), whose dialers build their own requests: the marker goes in the
// configured User-Agent instead of the context.
func (r *run) opConfig(token string, seq int64) *rest.Config {
	return &rest.Config{
		Host:            r.st.GatewayURL,
		BearerToken:     fmt.Sprintf("pat:%d:%s", stack.AgentID, token),
		TLSClientConfig: rest.TLSClientConfig{CAFile: r.st.GatewayCA},
		UserAgent:       marker(seq),
	}
}

// exec runs `cat README` in the pod (KWOK runs it in the pod's directory) over SPDY.
func (r *run) exec(ctx context.Context, cs *kubernetes.Clientset, token string, seq int64) error {
	cfg := r.opConfig(token, seq)
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(Namespace).Name(PodName).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "app", Command: []string{"cat", "README"}, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return err
	}
	capture := &statusCapture{next: rt}
	ex, err := remotecommand.NewSPDYExecutorForTransports(capture, upgrader, "POST", req.URL())
	if err != nil {
		return err
	}
	var out, errOut bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut}); err != nil {
		return capture.wrap(err)
	}
	if !strings.Contains(out.String(), podReadme) {
		return fmt.Errorf("exec: stdout %q lacks the pod's README (stderr %q)", out.String(), errOut.String())
	}
	return nil
}

// typedDialer keeps the dial error typed: portforward flattens it to text.
type typedDialer struct {
	httpstream.Dialer
	err error
}

func (d *typedDialer) Dial(protocols ...string) (httpstream.Connection, string, error) {
	c, p, err := d.Dialer.Dial(protocols...)
	d.err = err
	return c, p, err
}

// statusCapture remembers the status of the upgrade request's answer: client-go's
// SPDY dialer reports a refused upgrade as text without it.
type statusCapture struct {
	next http.RoundTripper
	mu   sync.Mutex
	code int
}

func (c *statusCapture) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err == nil {
		c.mu.Lock()
		c.code = resp.StatusCode
		c.mu.Unlock()
	}
	return resp, err
}

// wrap gives err the refused upgrade's status, if there was one.
func (c *statusCapture) wrap(err error) error {
	c.mu.Lock()
	code := c.code
	c.mu.Unlock()
	if code == 0 || code == http.StatusSwitchingProtocols || statusOf(err) != 0 {
		return err
	}
	return &httpError{code: code, body: err.Error()}
}

// portForward forwards a local port to the pod's 8080 and reads one HTTP answer.
func (r *run) portForward(ctx context.Context, cs *kubernetes.Clientset, token string, seq int64) error {
	cfg := r.opConfig(token, seq)
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return err
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(Namespace).Name(PodName).SubResource("portforward").URL()
	capture := &statusCapture{next: rt}
	dialer := &typedDialer{Dialer: spdy.NewDialer(upgrader, &http.Client{Transport: capture}, "POST", u)}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(PodPort)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		done <- err // for the deferred receive
		if dialer.err != nil {
			return capture.wrap(dialer.err)
		}
		return fmt.Errorf("port-forward: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		return fmt.Errorf("port-forward: no local port (%v)", err)
	}
	// KWOK keeps the forwarded stream open after the target answers: ask for one
	// answer with Connection: close and read exactly its body.
	hreq, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", ports[0].Local), nil)
	hreq.Close = true
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(hreq)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, resp.ContentLength))
	if err != nil {
		return fmt.Errorf("port-forward: reading the answer: %w", err)
	}
	if !strings.Contains(string(body), podGreeting) {
		return fmt.Errorf("port-forward: unexpected answer %q", body)
	}
	return nil
}

// StreamEnd is the end of one connection of a long stream.
type StreamEnd struct {
	Kind, User string
	At         time.Time
	Clean      bool   // the server closed it (EOF, no error event)
	Reason     string // for an unclean end
	// Reconnected is when the next connection of the same stream was established
	// (zero if the run ended first).
	Reconnected time.Time
}

// streams keeps every stream end and the watches' sequence checks.
type streams struct {
	mu      sync.Mutex
	ends    []StreamEnd
	events  int // ticker updates seen by watches
	gaps    int // ticker values skipped inside one resourceVersion chain
	relists int // 410 Gone: the watch started over from the current state
	lines   int // log lines seen by logs -f
	lineGap int // log lines skipped inside one logs -f connection
}

func (s *streams) ended(e StreamEnd) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ends = append(s.ends, e)
	return len(s.ends) - 1
}

func (s *streams) reconnected(i int, at time.Time) {
	if i < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ends[i].Reconnected = at
}

// watcher keeps a watch on the ticker ConfigMap for the whole run, resuming from the
// last resourceVersion after each end, and checks that no update is skipped.
func (r *run) watcher(ctx context.Context, user string) {
	cs, err := r.client(r.data.Tokens[user])
	if err != nil {
		return
	}
	rv, last, pending := "", -1, -1
	for ctx.Err() == nil {
		rec := r.rec.begin(user, KindWatch, 0)
		w, err := cs.CoreV1().ConfigMaps(Namespace).Watch(withMarker(ctx, rec.Seq), metav1.ListOptions{
			FieldSelector: "metadata.name=" + TickerName, ResourceVersion: rv,
		})
		if err != nil {
			if ctx.Err() == nil {
				r.rec.end(rec, err)
			}
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		r.rec.end(rec, nil)
		r.streams.reconnected(pending, time.Now())
		end := StreamEnd{Kind: KindWatch, User: user, Clean: true}
		for ev := range w.ResultChan() {
			if ev.Type == "ERROR" {
				end.Clean = false
				st, _ := ev.Object.(*metav1.Status)
				if st != nil {
					end.Reason = fmt.Sprintf("%d %s", st.Code, st.Message)
					if st.Code == http.StatusGone {
						rv, last = "", -1
						r.streams.mu.Lock()
						r.streams.relists++
						r.streams.mu.Unlock()
					}
				}
				continue
			}
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok {
				continue
			}
			rv = cm.ResourceVersion
			n, _ := strconv.Atoi(cm.Data["n"])
			r.streams.mu.Lock()
			r.streams.events++
			if last >= 0 && n > last+1 {
				r.streams.gaps += n - last - 1
			}
			r.streams.mu.Unlock()
			last = max(last, n)
		}
		w.Stop()
		if ctx.Err() != nil {
			return
		}
		end.At = time.Now()
		pending = r.streams.ended(end)
	}
}

// follower keeps a `logs -f` on the pod (client-go), checking its numbered lines.
func (r *run) follower(ctx context.Context, user string) {
	cs, err := r.client(r.data.Tokens[user])
	if err != nil {
		return
	}
	pending := -1
	for ctx.Err() == nil {
		rec := r.rec.begin(user, KindFollow, 0)
		tail := int64(1)
		rc, err := cs.CoreV1().Pods(Namespace).GetLogs(PodName, &corev1.PodLogOptions{Follow: true, TailLines: &tail}).Stream(withMarker(ctx, rec.Seq))
		if err != nil {
			if ctx.Err() == nil {
				r.rec.end(rec, err)
			}
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		r.rec.end(rec, nil)
		r.streams.reconnected(pending, time.Now())
		sc := bufio.NewScanner(rc)
		last := -1
		for sc.Scan() {
			n, ok := lineNumber(sc.Text())
			if !ok {
				continue
			}
			r.streams.mu.Lock()
			r.streams.lines++
			if last >= 0 && n > last+1 {
				r.streams.lineGap += n - last - 1
			}
			r.streams.mu.Unlock()
			last = n
		}
		rc.Close()
		if ctx.Err() != nil {
			return
		}
		end := StreamEnd{Kind: KindFollow, User: user, At: time.Now(), Clean: sc.Err() == nil}
		if sc.Err() != nil {
			end.Reason = sc.Err().Error()
		}
		pending = r.streams.ended(end)
	}
}

func lineNumber(s string) (int, bool) {
	_, rest, ok := strings.Cut(s, logLinePrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(rest))
	return n, err == nil
}

// kubectl runs real kubectl through the gateway: `get pods` every few seconds, and
// one `logs -f` kept running.
func (r *run) kubectl(ctx context.Context, user string) {
	var wg sync.WaitGroup
	wg.Go(func() {
		pending := -1
		for ctx.Err() == nil {
			rec := r.rec.begin(user, KindKubectlLogs, 0)
			start := time.Now()
			cmd := r.kubectlCmd(ctx, user, "logs", "-f", "--tail=1", PodName)
			var lines int
			out, _ := cmd.StdoutPipe()
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				r.rec.end(rec, err)
				return
			}
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if lines == 0 {
					r.streams.reconnected(pending, time.Now())
				}
				lines++
			}
			err := cmd.Wait()
			if ctx.Err() != nil {
				return
			}
			if lines == 0 {
				r.rec.end(rec, kubectlError(err, stderr.String()))
				sleep(ctx, time.Second)
				continue
			}
			rec.Start = start
			r.rec.end(rec, nil)
			end := StreamEnd{Kind: KindKubectlLogs, User: user, At: time.Now(), Clean: err == nil}
			if err != nil {
				end.Reason = strings.TrimSpace(stderr.String())
			}
			pending = r.streams.ended(end)
		}
	})
	for ctx.Err() == nil {
		rec := r.rec.begin(user, KindKubectl, 0)
		var stderr bytes.Buffer
		cmd := r.kubectlCmd(ctx, user, "get", "pods", "-o", "name", "--request-timeout=30s")
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if ctx.Err() != nil {
			break
		}
		if err == nil && !strings.Contains(string(out), "pod/"+PodName) {
			err = fmt.Errorf("kubectl get pods: %q lacks pod/%s", out, PodName)
		}
		r.rec.end(rec, kubectlError(err, stderr.String()))
		sleep(ctx, 3*time.Second)
	}
	wg.Wait()
}

// kubectlCmd is kubectl as user in the harness's own process group, killed (the
// whole group) when ctx ends or the harness dies.
func (r *run) kubectlCmd(ctx context.Context, user string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", r.kubeconfig, "--context", user, "-n", Namespace}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+r.dir+"/kubectl-cache")
	return cmd
}

// kubectlError maps kubectl's failure to the status it printed.
func kubectlError(err error, stderr string) error {
	if err == nil {
		return nil
	}
	for _, c := range []struct {
		text string
		code int
	}{{"(Forbidden)", 403}, {"(Unauthorized)", 401}, {"(ServiceUnavailable)", 503}, {"(TooManyRequests)", 429}, {"(InternalError)", 500}} {
		if strings.Contains(stderr, c.text) {
			return &httpError{code: c.code, body: strings.TrimSpace(stderr)}
		}
	}
	return fmt.Errorf("kubectl: %v: %s", err, strings.TrimSpace(stderr))
}

// probe sends a member's get every 200 ms: the recovery clock of the faults.
func (r *run) probe(ctx context.Context, user string) {
	for ctx.Err() == nil {
		r.do(ctx, user, r.data.Tokens[user], KindProbe, 0, func(ctx context.Context, cs *kubernetes.Clientset, _ int64) error {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := cs.CoreV1().Pods(Namespace).Get(ctx, PodName, metav1.GetOptions{})
			return err
		})
		sleep(ctx, 200*time.Millisecond)
	}
}

// floorProbe measures the floor: the probe's get straight to the API server (as
// the admin, no gateway), every 200 ms, outside fault windows only.
func (r *run) floorProbe(ctx context.Context) {
	for ctx.Err() == nil {
		t := time.Now()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := r.admin.CoreV1().Pods(Namespace).Get(cctx, PodName, metav1.GetOptions{})
		cancel()
		if err == nil {
			r.floorMu.Lock()
			r.floor = append(r.floor, time.Since(t))
			r.floorMu.Unlock()
		}
		sleep(ctx, 200*time.Millisecond)
	}
}

// ticker updates the ticker ConfigMap (as the admin, directly) every interval: the
// events the watches must all see.
func (r *run) ticker(ctx context.Context, every time.Duration) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cm, err := r.admin.CoreV1().ConfigMaps(Namespace).Get(cctx, TickerName, metav1.GetOptions{})
		if err == nil {
			n, _ := strconv.Atoi(cm.Data["n"])
			cm.Data["n"] = strconv.Itoa(n + 1)
			_, err = r.admin.CoreV1().ConfigMaps(Namespace).Update(cctx, cm, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				err = nil
			}
		}
		cancel()
		_ = err // the API server may be restarting: the next tick tries again
		sleep(ctx, every)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

var errInterrupted = errors.New("interrupted: every process the run started was stopped")
