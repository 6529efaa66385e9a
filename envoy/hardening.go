package envoy

import (
	"fmt"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Settings against slow and greedy clients, the per-client rate limit and the
// access-log format (issue 10 items 3 and 5, issue 18 item 5).
//
// The defaults follow Envoy's "Configuring Envoy as an edge proxy" best practices
// (docs/root/configuration/best_practices/edge.rst): request_headers_timeout 10s,
// HTTP/2 max_concurrent_streams 100, initial_stream_window_size 64 KiB,
// initial_connection_window_size 1 MiB, per_connection_buffer_limit_bytes 32 KiB.
// Envoy's own defaults are unbounded or huge: request_headers_timeout "not
// specified ... disabled", max_concurrent_streams 2147483647, window sizes
// 268435456 (protocol.proto), transport_socket_connect_timeout unset (no limit,
// listener_components.proto).
//
// Deliberately NOT set: max_connection_duration and max_requests_per_connection.
// Both drain a connection (GOAWAY or Connection: close) and, after drain_timeout,
// close it with its streams, which would end watches, `kubectl logs -f` and exec
// sessions on a schedule; stream-timeouts refuses max_connection_duration.
const (
	DefaultRequestHeadersTimeout       = 10 * time.Second
	DefaultTLSHandshakeTimeout         = 10 * time.Second
	DefaultMaxConcurrentStreams        = 100
	DefaultInitialStreamWindowSize     = 64 * 1024
	DefaultInitialConnectionWindowSize = 1024 * 1024
	DefaultConnectionBufferBytes       = 32 * 1024

	// MaxSlowClientTimeout is the longest request_headers_timeout and
	// transport_socket_connect_timeout Validate accepts: beyond a minute a client
	// that sends nothing holds a connection for nothing.
	MaxSlowClientTimeout = time.Minute
	// MaxConcurrentStreamsLimit is the most HTTP/2 streams per connection
	// Validate accepts.
	MaxConcurrentStreamsLimit = 1024
	// MaxWindowSize is the largest HTTP/2 window Validate accepts (16 MiB): what a
	// client may make Envoy buffer per stream and per connection.
	MaxWindowSize = 16 * 1024 * 1024
	// MaxConnectionBufferBytes is the largest per_connection_buffer_limit_bytes
	// Validate accepts (Envoy's default, 1 MiB).
	MaxConnectionBufferBytes = 1 << 20
	// MaxConnectTimeout is the longest cluster connect_timeout Validate accepts.
	MaxConnectTimeout = 10 * time.Second

	// DefaultClientRateLimit and DefaultClientRateBurst bound the requests one
	// client address may make: a token bucket of DefaultClientRateBurst tokens,
	// refilled with DefaultClientRateLimit tokens every second. kubectl's discovery
	// burst (client-go's disk-cached discovery, up to a few hundred requests at the
	// first call) fits in the bucket.
	DefaultClientRateLimit = 50
	DefaultClientRateBurst = 300
)

// FilterLocalRateLimit is the HTTP local rate limit filter's name.
const FilterLocalRateLimit = "envoy.filters.http.local_ratelimit"

// ClientAddressDescriptorKey is the descriptor key Envoy's remote_address rate
// limit action produces ("remote_address", route_components.proto
// RateLimit.Action.RemoteAddress): the downstream address, which with
// use_remote_address true is the connection's peer, not X-Forwarded-For.
const ClientAddressDescriptorKey = "remote_address"

// AccessLogFormat is Envoy's default access-log format (access_log docs, "Default
// format string") with one change: the path is %PATH(NQ:ORIG_OR_PATH)%, "the
// request path without the query parameters", taken from x-envoy-original-path if
// present (substitution_formatter.rst, %PATH(X:Y):Z%). The default
// %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% prints the query, and with it the
// gitlab-agent-id and gitlab-csrf-token values of every request, refused ones
// included (issue 18 item 5).
const AccessLogFormat = `[%START_TIME%] "%REQ(:METHOD)% %PATH(NQ:ORIG_OR_PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// StdoutAccessLogConfig is the stdout access logger with AccessLogFormat.
func StdoutAccessLogConfig() *streamv3.StdoutAccessLog {
	return &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{
		LogFormat: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
			TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: AccessLogFormat}},
		}},
	}}
}

// accessLogs is the HCM's access log list: stdout, AccessLogFormat.
func accessLogs() ([]*accesslogv3.AccessLog, error) {
	a, err := typed(StdoutAccessLogConfig())
	if err != nil {
		return nil, err
	}
	return []*accesslogv3.AccessLog{{Name: StdoutAccessLog, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: a}}}, nil
}

// HTTP2Options are the downstream HTTP/2 limits: a client gets at most
// MaxConcurrentStreams streams per connection (more are refused by the codec) and
// can make Envoy buffer at most the window sizes of request body data.
func HTTP2Options(o Options) *corev3.Http2ProtocolOptions {
	return &corev3.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(o.MaxConcurrentStreams),
		InitialStreamWindowSize:     wrapperspb.UInt32(o.InitialStreamWindowSize),
		InitialConnectionWindowSize: wrapperspb.UInt32(o.InitialConnectionWindowSize),
	}
}

var fullPercent = &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}

// ClientRateLimit is the local rate limit filter that runs before ext_authz: one
// token bucket per client address (a wildcard descriptor: an entry with a key and
// no value gets a bucket per distinct value, kept in an LRU of
// max_dynamic_descriptors, local_rate_limit.proto), so a client that floods
// kubegate with made-up tokens is answered 429 by Envoy before any of its requests
// costs a GitLab call.
//
// What it limits is requests, not 401s: Envoy's local rate limit counts every
// request of the client (it runs before the decision is known). That bounds the
// 401s one address can cause to the same rate, which is the point: each junk token
// is at most one GitLab lookup. Legitimate users behind one NAT share a bucket.
//
//   - filter_enabled and filter_enforced 100%: both default to 0% "for safety"
//     (local_rate_limit.proto), i.e. a filter that does nothing.
//   - local_rate_limit_per_downstream_connection false: per connection, a client
//     would get a fresh bucket with every new connection.
//   - always_consume_default_token_bucket false: the filter-wide token_bucket
//     (required as the fill-interval base of the descriptors) is only used for a
//     request that matches no descriptor, so it never becomes one budget that
//     every client shares.
//   - status unset: 429 (TooManyRequests).
func ClientRateLimit(o Options) *localratelimitv3.LocalRateLimit {
	bucket := func() *typev3.TokenBucket {
		return &typev3.TokenBucket{
			MaxTokens:     o.ClientRateBurst,
			TokensPerFill: wrapperspb.UInt32(o.ClientRateLimit),
			FillInterval:  durationpb.New(time.Second),
		}
	}
	return &localratelimitv3.LocalRateLimit{
		StatPrefix:                            "kubegate_client",
		TokenBucket:                           bucket(),
		FilterEnabled:                         fullPercent,
		FilterEnforced:                        fullPercent,
		LocalRateLimitPerDownstreamConnection: false,
		AlwaysConsumeDefaultTokenBucket:       wrapperspb.Bool(false),
		RateLimits: []*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{{
			ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{}},
		}}}},
		Descriptors: []*ratelimitv3.LocalRateLimitDescriptor{{
			Entries:     []*ratelimitv3.RateLimitDescriptor_Entry{{Key: ClientAddressDescriptorKey}},
			TokenBucket: bucket(),
		}},
		// Every connected client can have its own bucket (and never fewer than the
		// 1000 client-rate-limit requires).
		MaxDynamicDescriptors: wrapperspb.UInt32(max(o.MaxConnections, 1000)),
	}
}

// checkHardening reports the problems of the hardening options, with their flags.
func (o Options) checkHardening() []error {
	var errs []error
	bounded := func(d time.Duration, flag string) {
		if d <= 0 || d > MaxSlowClientTimeout {
			errs = append(errs, fmt.Errorf("%s must be from 1ms to %v, got %v: a client that sends nothing must not hold a connection", flag, MaxSlowClientTimeout, d))
		}
	}
	bounded(o.RequestHeadersTimeout, "--request-headers-timeout")
	bounded(o.TLSHandshakeTimeout, "--tls-handshake-timeout")
	if o.MaxConcurrentStreams == 0 || o.MaxConcurrentStreams > MaxConcurrentStreamsLimit {
		errs = append(errs, fmt.Errorf("--max-concurrent-streams must be from 1 to %d, got %d", MaxConcurrentStreamsLimit, o.MaxConcurrentStreams))
	}
	// protocol.proto: both windows are "gte: 65535, lte: 2147483647".
	window := func(v uint32, flag string) {
		if v < 65535 || v > MaxWindowSize {
			errs = append(errs, fmt.Errorf("%s must be from 65535 (HTTP/2's minimum) to %d bytes, got %d", flag, MaxWindowSize, v))
		}
	}
	window(o.InitialStreamWindowSize, "--http2-stream-window")
	window(o.InitialConnectionWindowSize, "--http2-connection-window")
	if o.ConnectionBufferBytes == 0 || o.ConnectionBufferBytes > MaxConnectionBufferBytes {
		errs = append(errs, fmt.Errorf("--connection-buffer-bytes must be from 1 to %d, got %d", MaxConnectionBufferBytes, o.ConnectionBufferBytes))
	}
	if o.ConnectTimeout > MaxConnectTimeout {
		errs = append(errs, fmt.Errorf("--connect-timeout %v is more than %v: each request would wait that long for an unreachable service", o.ConnectTimeout, MaxConnectTimeout))
	}
	if o.ClientRateLimit == 0 || o.ClientRateBurst == 0 {
		errs = append(errs, fmt.Errorf("--client-rate-limit and --client-rate-burst must be positive, got %d and %d: without them one client can make every request a GitLab call", o.ClientRateLimit, o.ClientRateBurst))
	} else if o.ClientRateBurst < o.ClientRateLimit {
		errs = append(errs, fmt.Errorf("--client-rate-burst %d is below --client-rate-limit %d: the bucket could never hold a second's refill", o.ClientRateBurst, o.ClientRateLimit))
	}
	errs = append(errs, o.checkPrivate()...)
	return errs
}

// checkPrivate refuses service addresses other clients could reach. kubegate xds
// serves the agent token (which may impersonate anyone), kubegate authz sees every
// user's credential and answers token probes without Envoy's rate limit, and
// kubegate extproc decides the impersonation headers: each must be reachable by
// Envoy alone, i.e. on loopback or a unix socket (whose file mode and volume decide
// who may connect). A DNS name other than localhost cannot be checked here, so it
// needs --allow-non-loopback too, which says the network is Envoy's alone (a pod's
// own network namespace, a network only Envoy shares).
func (o Options) checkPrivate() []error {
	if o.AllowNonLoopback {
		return nil
	}
	var errs []error
	for _, s := range []struct {
		addr      Addr
		flag, why string
	}{
		{o.Authz, "--authz", "kubegate authz sees users' credentials"},
		{o.ExtProc, "--extproc", "kubegate extproc decides whom the API server sees"},
		{o.XDS, "--xds", "kubegate xds serves the agent token, which can impersonate anyone"},
		{o.Browser, "--browser", "kubegate authz's browser listener receives passwords and session cookies"},
	} {
		if s.addr != (Addr{}) && !isLocal(s.addr) {
			errs = append(errs, fmt.Errorf("%s %s is not loopback or a unix socket, and %s: use 127.0.0.1:PORT or unix:///PATH, or pass --allow-non-loopback if only Envoy can reach that address", s.flag, s.addr, s.why))
		}
	}
	return errs
}

// IsLocal reports whether only this machine can reach the address: a unix socket,
// localhost, or a loopback IP.
func (a Addr) IsLocal() bool { return isLocal(a) }
