package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/envoy"
)

// Options tune what the bootstrap cannot say: where to report, and hooks for tests.
// Nothing here changes how a request is treated.
type Options struct {
	// OnUpstreamRequest, if set, is called with every request the router sends to
	// an upstream cluster, exactly as it goes on the wire (header order and case
	// included), before the body. It must not block.
	OnUpstreamRequest func(UpstreamRequest)
	// AccessLog receives Envoy's default-format access log line for every request
	// when the bootstrap configures the stdout access logger. Nil means os.Stdout,
	// which is where Envoy writes it.
	AccessLog io.Writer
	// Logger receives the stand-in's own diagnostics (SDS updates, upstream errors).
	// Nil discards them.
	Logger *slog.Logger
}

// UpstreamRequest is one request as the router wrote it to the upstream.
type UpstreamRequest struct {
	Cluster string
	Method  string
	// Target is the request target on the request line: path and query, after
	// prefix_rewrite and every filter's changes.
	Target string
	// Header holds the header lines in wire order with Envoy's lower-case names;
	// the first is "host".
	Header []HeaderField
}

// HeaderField is one header line.
type HeaderField struct{ Name, Value string }

// Values returns every value of the header called name (lower-case), in order.
func (u UpstreamRequest) Values(name string) []string {
	var out []string
	for _, h := range u.Header {
		if h.Name == name {
			out = append(out, h.Value)
		}
	}
	return out
}

// DataPlane is a running stand-in for Envoy.
type DataPlane struct {
	cfg      *config
	opts     Options
	log      *slog.Logger
	url      string
	ln       net.Listener
	srv      *http.Server
	admin    *http.Server
	filters  []httpFilter
	router   *router
	conns    []*grpc.ClientConn
	breakers map[string]*breaker
	secrets  *secretWatcher
	// upstreamSecrets are the clusters' upstream credential injectors' secrets.
	upstreamSecrets []*secretWatcher
	ctx             context.Context // ends at Close: upgraded connections watch it
	cancel          context.CancelFunc
	wg              sync.WaitGroup
	streams         sync.WaitGroup // requests being handled, upgraded ones included
	closing         bool           // guarded by closeMu; no stream starts once set
	closeMu         sync.Mutex

	closeOnce sync.Once
	closeErr  error
}

// Start validates the bootstrap with envoy.Validate (the same check as
// `kubegate envoy validate`), refuses anything the stand-in does not emulate, then
// serves the bootstrap's listener. Like Envoy, it does not accept connections
// until the listener has warmed: the SDS secret of the credential injector has
// arrived or its initial_fetch_timeout has passed (the listener's init manager waits
// for the secret provider, generic/config.cc → findOrCreateGenericSecretProvider with
// context.initManager()). ctx bounds that wait and the life of the background
// work; Close stops everything.
func Start(ctx context.Context, bootstrapYAML []byte, opts Options) (*DataPlane, error) {
	if fs := envoy.Validate(bootstrapYAML); len(fs) > 0 {
		return nil, fmt.Errorf("the bootstrap fails `kubegate envoy validate`, so Envoy would not run it as kubegate needs:\n%s", envoy.FormatFindings(fs))
	}
	b, fs := envoy.Decode(bootstrapYAML)
	if len(fs) > 0 { // Validate decodes the same way; kept for safety
		return nil, fmt.Errorf("decoding the bootstrap:\n%s", envoy.FormatFindings(fs))
	}
	cfg, err := parseBootstrap(b)
	if err != nil {
		return nil, err
	}
	if opts.AccessLog == nil {
		opts.AccessLog = os.Stdout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	dp := &DataPlane{cfg: cfg, opts: opts, log: log, ctx: runCtx, cancel: cancel}
	if err := dp.build(runCtx); err != nil {
		dp.Close()
		return nil, err
	}
	if err := dp.warm(ctx); err != nil {
		dp.Close()
		return nil, err
	}
	if err := dp.serve(); err != nil {
		dp.Close()
		return nil, err
	}
	return dp, nil
}

// URL is https://host:port of the listener, with 127.0.0.1 for a wildcard address.
func (dp *DataPlane) URL() string { return dp.url }

// SecretVersion is the version of the SDS secret the credential injector uses now,
// "" before the first one arrived: the listener's injector, or the one cluster
// injector of a one-agent configuration ("" when there are several:
// SecretVersionOf).
func (dp *DataPlane) SecretVersion() string {
	switch {
	case dp.secrets != nil:
		_, v := dp.secrets.current()
		return v
	case len(dp.upstreamSecrets) == 1:
		_, v := dp.upstreamSecrets[0].current()
		return v
	}
	return ""
}

// SecretVersionOf is the version of the SDS secret named secret that a cluster's
// upstream credential injector uses now ("" before the first one arrived, or
// when no cluster reads it).
func (dp *DataPlane) SecretVersionOf(secret string) string {
	for _, w := range dp.upstreamSecrets {
		if w.cfg.secretName == secret {
			_, v := w.current()
			return v
		}
	}
	return ""
}

// Close stops the listener, the admin interface, the SDS stream and every gRPC
// connection, and waits for them.
func (dp *DataPlane) Close() error {
	dp.closeOnce.Do(func() {
		var errs []error
		if dp.srv != nil {
			// Hijacked (upgraded) connections are not tracked by http.Server: the
			// stream contexts below end them.
			if err := dp.srv.Close(); err != nil {
				errs = append(errs, err)
			}
		} else if dp.ln != nil {
			dp.ln.Close()
		}
		if dp.admin != nil {
			if err := dp.admin.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		// Closing the connections ends every request's context, and cancel ends
		// the upgraded streams, so in-flight handlers return promptly; waiting for
		// them means nothing writes to the access log after Close.
		dp.closeMu.Lock()
		dp.closing = true
		dp.closeMu.Unlock()
		dp.cancel()
		dp.streams.Wait()
		if dp.router != nil {
			dp.router.close()
		}
		for _, c := range dp.conns {
			c.Close()
		}
		dp.wg.Wait()
		dp.closeErr = errors.Join(errs...)
	})
	return dp.closeErr
}

// streamStarts counts a new request in, unless Close has begun.
func (dp *DataPlane) streamStarts() bool {
	dp.closeMu.Lock()
	defer dp.closeMu.Unlock()
	if dp.closing {
		return false
	}
	dp.streams.Add(1)
	return true
}

// build creates the gRPC connections, the filters and the router.
func (dp *DataPlane) build(ctx context.Context) error {
	dp.breakers = newBreakers(dp.cfg.clusters)
	grpcConns := map[string]*grpc.ClientConn{}
	grpcConn := func(cluster string) (*grpc.ClientConn, *breaker, error) {
		if c, ok := grpcConns[cluster]; ok {
			return c, dp.breakers[cluster], nil
		}
		c, err := dialGRPC(dp.cfg.clusterFor(cluster))
		if err != nil {
			return nil, nil, err
		}
		grpcConns[cluster] = c
		dp.conns = append(dp.conns, c)
		return c, dp.breakers[cluster], nil
	}
	for _, f := range dp.cfg.hcm.filters {
		switch {
		case f.extAuthz != nil:
			conn, br, err := grpcConn(f.extAuthz.cluster)
			if err != nil {
				return err
			}
			dp.filters = append(dp.filters, newExtAuthzFilter(f.name, f.extAuthz, conn, br, &dp.cfg.hcm, dp.cfg.listener.leaf()))
		case f.extProc != nil:
			conn, br, err := grpcConn(f.extProc.cluster)
			if err != nil {
				return err
			}
			dp.filters = append(dp.filters, newExtProcFilter(f.name, f.extProc, conn, br, &dp.cfg.hcm, dp.log))
		case f.credential != nil:
			cluster := f.credential.sdsCluster
			if f.credential.ads {
				if dp.cfg.adsCluster == "" {
					return errors.New("the credential injector's secret comes from ADS, but the bootstrap has no dynamic_resources.ads_config")
				}
				cluster = dp.cfg.adsCluster
			}
			var conn *grpc.ClientConn
			if f.credential.sdsPath == "" {
				c, _, err := grpcConn(cluster)
				if err != nil {
					return err
				}
				conn = c
			}
			if dp.secrets != nil {
				return errors.New("more than one credential injector is not emulated")
			}
			dp.secrets = newSecretWatcher(f.credential, conn, dp.cfg.node, dp.log)
			dp.wg.Add(1)
			go func() {
				defer dp.wg.Done()
				dp.secrets.run(ctx)
			}()
			dp.filters = append(dp.filters, &credentialFilter{cfg: f.credential, secrets: dp.secrets})
		case f.rateLimit != nil:
			dp.filters = append(dp.filters, newRateLimitFilter(f.rateLimit))
		case f.headerMutation != nil:
			dp.filters = append(dp.filters, &headerMutationFilter{cfg: f.headerMutation})
		case f.router:
			// The router is not a filter here: it is what runs after the chain.
		}
	}
	// Each cluster's upstream credential_injector has its own SDS subscription
	// (its own secret), like a listener's.
	creds := map[string]*credentialFilter{}
	names := make([]string, 0, len(dp.cfg.clusters))
	for name := range dp.cfg.clusters {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		cc := dp.cfg.clusters[name].upstreamCredential
		if cc == nil {
			continue
		}
		sdsCluster := cc.sdsCluster
		if cc.ads {
			if dp.cfg.adsCluster == "" {
				return fmt.Errorf("cluster %q: the credential injector's secret comes from ADS, but the bootstrap has no dynamic_resources.ads_config", name)
			}
			sdsCluster = dp.cfg.adsCluster
		}
		var conn *grpc.ClientConn
		if cc.sdsPath == "" {
			c, _, err := grpcConn(sdsCluster)
			if err != nil {
				return err
			}
			conn = c
		}
		w := newSecretWatcher(cc, conn, dp.cfg.node, dp.log)
		dp.upstreamSecrets = append(dp.upstreamSecrets, w)
		dp.wg.Add(1)
		go func() {
			defer dp.wg.Done()
			w.run(ctx)
		}()
		creds[name] = &credentialFilter{cfg: cc, secrets: w}
	}
	r, err := newRouter(dp.cfg, dp.breakers, creds, dp.opts.OnUpstreamRequest, dp.log)
	if err != nil {
		return err
	}
	dp.router = r
	return nil
}

// warm waits for the listener's init targets (the SDS secret) like Envoy's init
// manager: until the secret arrives, an update is rejected, initial_fetch_timeout
// passes (0: no limit, config_source.proto), or ctx ends.
func (dp *DataPlane) warm(ctx context.Context) error {
	watchers := dp.upstreamSecrets
	if dp.secrets != nil {
		watchers = append([]*secretWatcher{dp.secrets}, watchers...)
	}
	// Every secret is an init target of its own; the listener waits for all of
	// them (Init::ManagerImpl), each bounded by its own initial_fetch_timeout.
	for _, w := range watchers {
		if err := w.warm(ctx, dp.log); err != nil {
			return err
		}
	}
	return nil
}

// warm waits for one secret's init target.
func (w *secretWatcher) warm(ctx context.Context, log *slog.Logger) error {
	var timeout <-chan time.Time
	if d := w.cfg.initialFetchTimeout; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-w.ready:
		if v, _ := w.current(); v == "" {
			log.Warn("SDS update rejected before any secret arrived; serving, and the credential injector answers 401 until a good one arrives", "secret", w.cfg.secretName)
		}
	case <-timeout:
		log.Warn("initial_fetch_timeout passed without the SDS secret; serving, and the credential injector answers 401 until it arrives", "secret", w.cfg.secretName)
	case <-ctx.Done():
		return fmt.Errorf("waiting for SDS secret %q from the xds cluster: %w", w.cfg.secretName, ctx.Err())
	}
	return nil
}

// serve binds the listener and the admin interface.
func (dp *DataPlane) serve() error {
	lc := dp.cfg.listener
	ln, err := net.Listen(lc.addr.network, lc.addr.address)
	if err != nil {
		return fmt.Errorf("listening on %s (listener %q): %w", lc.addr, lc.name, err)
	}
	dp.ln = ln
	if dp.cfg.maxDownstreamConns > 0 {
		ln = &limitListener{Listener: ln, sem: make(chan struct{}, dp.cfg.maxDownstreamConns)}
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	dp.url = "https://" + net.JoinHostPort(host, port)

	tlsConf := &tls.Config{
		Certificates: lc.certs,
		MinVersion:   lc.minV,
		MaxVersion:   lc.maxV,
		NextProtos:   slices.Clone(lc.alpn),
	}
	// codec_type and ALPN decide the protocols, as in Envoy: AUTO picks HTTP/2 when
	// ALPN negotiated h2 and HTTP/1.1 otherwise (ConnectionManagerUtility::autoCreateCodec).
	var protos http.Protocols
	codec := dp.cfg.hcm.codec
	protos.SetHTTP1(codec != hcmv3.HttpConnectionManager_HTTP2)
	protos.SetHTTP2(codec != hcmv3.HttpConnectionManager_HTTP1 && lc.alpnHas("h2"))
	// Go's TLS server fails a handshake whose ALPN offer has no protocol in common
	// with NextProtos; offering http/1.1 as ServeTLS does keeps such clients on
	// HTTP/1.1, which is where Envoy (BoringSSL negotiating nothing, codec AUTO)
	// puts them too.
	if protos.HTTP1() && !slices.Contains(tlsConf.NextProtos, "http/1.1") {
		tlsConf.NextProtos = append(tlsConf.NextProtos, "http/1.1")
	}
	hcm := &connectionManager{dp: dp}
	h2 := dp.cfg.hcm.h2
	dp.srv = &http.Server{
		Handler:   hcm,
		TLSConfig: tlsConf,
		Protocols: &protos,
		// request_headers_timeout. Go arms it when it starts reading a request
		// (for the first request of a connection: once the TLS handshake is done),
		// Envoy when the first byte of the headers arrives; on expiry Envoy answers
		// 408 ("request_header_timeout") and closes, Go closes without an answer.
		// Either way the slow client's connection ends and nothing goes upstream.
		// (HTTP/2 streams: Envoy's per-stream timer has no Go counterpart; HTTP/2
		// headers arrive in frames, and max_concurrent_streams bounds them.)
		ReadHeaderTimeout: dp.cfg.hcm.requestHeadersTimeout,
		// http2_protocol_options: Go advertises SETTINGS_MAX_CONCURRENT_STREAMS and
		// SETTINGS_INITIAL_WINDOW_SIZE and the connection window as Envoy's codec
		// does, and refuses streams beyond the limit with RST_STREAM.
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          h2.maxStreams,
			MaxReceiveBufferPerStream:     h2.streamWindow,
			MaxReceiveBufferPerConnection: h2.connWindow,
		},
		// Go's own limit sits above Envoy's so that the connection manager, not the
		// Go server, applies max_request_headers_kb (with Envoy's status codes).
		MaxHeaderBytes: dp.cfg.hcm.maxHeadersKB*1024 + 64*1024,
		ErrorLog:       slog.NewLogLogger(dp.log.Handler(), slog.LevelDebug),
	}
	dp.wg.Add(1)
	go func() {
		defer dp.wg.Done()
		// The handshake happens in handshakeListener (transport_socket_connect_timeout).
		if err := dp.srv.Serve(newHandshakeListener(ln, tlsConf, lc.handshakeTimeout)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			dp.log.Error("listener stopped", "error", err)
		}
	}()
	if dp.cfg.admin != nil {
		if err := dp.serveAdmin(*dp.cfg.admin); err != nil {
			return err
		}
	}
	return nil
}

// serveAdmin emulates the one admin endpoint a supervisor needs: /ready, which
// Envoy answers "LIVE" with 200 once the server is initialized (admin docs,
// GET /ready). Every other admin path is 404 here.
func (dp *DataPlane) serveAdmin(a netAddr) error {
	ln, err := net.Listen(a.network, a.address)
	if err != nil {
		return fmt.Errorf("admin interface on %s: %w", a, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "text/plain; charset=UTF-8")
		io.WriteString(w, "LIVE\n")
	})
	dp.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	dp.wg.Add(1)
	go func() {
		defer dp.wg.Done()
		if err := dp.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			dp.log.Error("admin interface stopped", "error", err)
		}
	}()
	return nil
}

// limitListener closes connections beyond the overload manager's
// global_downstream_max_connections, as Envoy does at accept time
// (downstream_connections resource monitor, "proactive" resource).
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &releaseConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			c.Close()
		}
	}
}

type releaseConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *releaseConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
