package envoy

import (
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	customheaderv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/original_ip_detection/custom_header/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// withRateLimit edits the local_ratelimit filter in front of the chain.
func withRateLimit(t *testing.T, b *bootstrapv3.Bootstrap, fn func(*localratelimitv3.LocalRateLimit)) {
	t.Helper()
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { edit(t, h.HttpFilters[1].GetTypedConfig(), fn) })
}

// stdoutLog is an access log to stdout with a text format ("" for none).
func stdoutLog(t *testing.T, format string) *accesslogv3.AccessLog {
	t.Helper()
	l := &streamv3.StdoutAccessLog{}
	if format != "" {
		l.AccessLogFormat = &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: format}}}}}
	}
	return &accesslogv3.AccessLog{Name: StdoutAccessLog, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, l)}}
}

func withAccessLog(t *testing.T, b *bootstrapv3.Bootstrap, l *accesslogv3.AccessLog) {
	t.Helper()
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.AccessLog = []*accesslogv3.AccessLog{l} })
}

// kubegateFormatWith is the rendered format with one command added.
func kubegateFormatWith(cmd string) string {
	return strings.TrimSuffix(AccessLogFormat, "\n") + " " + cmd + "\n"
}

// hardeningCases break one rule of rules_hardening.go each (or the stream-timeouts
// and per-route-override rules where they grew for it).
func hardeningCases(t *testing.T) []struct {
	name   string
	rule   string
	mutate func(*bootstrapv3.Bootstrap)
} {
	return []struct {
		name   string
		rule   string
		mutate func(*bootstrapv3.Bootstrap)
	}{
		{"no request headers timeout", RuleRequestHeadersTimeout, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.RequestHeadersTimeout = nil })
		}},
		{"ten-minute request headers timeout", RuleRequestHeadersTimeout, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.RequestHeadersTimeout = durationpb.New(10 * MaxSlowClientTimeout)
			})
		}},
		{"no TLS handshake timeout", RuleTLSHandshakeTimeout, func(b *bootstrapv3.Bootstrap) {
			chain(b).TransportSocketConnectTimeout = nil
		}},
		{"connect timeout left to Envoy", RuleConnectTimeout, func(b *bootstrapv3.Bootstrap) {
			cluster(t, b, XDSCluster).ConnectTimeout = nil
		}},
		{"minute-long connect timeout", RuleConnectTimeout, func(b *bootstrapv3.Bootstrap) {
			cluster(t, b, testAPICluster).ConnectTimeout = durationpb.New(MaxSlowClientTimeout)
		}},
		{"HTTP/2 options at Envoy's defaults", RuleHTTP2Limits, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.Http2ProtocolOptions = nil })
		}},
		{"a million streams per connection", RuleHTTP2Limits, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.Http2ProtocolOptions.MaxConcurrentStreams = wrapperspb.UInt32(1 << 20)
			})
		}},
		{"no per-connection buffer limit", RuleConnectionBuffer, func(b *bootstrapv3.Bootstrap) {
			b.StaticResources.Listeners[0].PerConnectionBufferLimitBytes = nil
		}},
		{"rate limit removed", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.HttpFilters = append(h.HttpFilters[:1:1], h.HttpFilters[2:]...)
			})
		}},
		{"rate limit counted, not enforced", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withRateLimit(t, b, func(l *localratelimitv3.LocalRateLimit) { l.FilterEnforced = nil })
		}},
		{"rate limit switchable at runtime", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withRateLimit(t, b, func(l *localratelimitv3.LocalRateLimit) {
				l.FilterEnabled = &corev3.RuntimeFractionalPercent{RuntimeKey: "local_rate_limit_enabled",
					DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
			})
		}},
		{"a bucket per connection", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withRateLimit(t, b, func(l *localratelimitv3.LocalRateLimit) { l.LocalRateLimitPerDownstreamConnection = true })
		}},
		{"buckets keyed on a header the client writes", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withRateLimit(t, b, func(l *localratelimitv3.LocalRateLimit) {
				l.RateLimits[0].Actions[0].ActionSpecifier = &routev3.RateLimit_Action_RequestHeaders_{RequestHeaders: &routev3.RateLimit_Action_RequestHeaders{
					HeaderName: "x-client", DescriptorKey: ClientAddressDescriptorKey}}
			})
		}},
		{"twenty client buckets", RuleClientRateLimit, func(b *bootstrapv3.Bootstrap) {
			withRateLimit(t, b, func(l *localratelimitv3.LocalRateLimit) { l.MaxDynamicDescriptors = nil })
		}},
		{"rate limit disabled on the route", RulePerRouteOverride, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.TypedPerFilterConfig = map[string]*anypb.Any{FilterLocalRateLimit: mustAny(t, &localratelimitv3.LocalRateLimit{StatPrefix: "off"})}
			})
		}},
		{"max_connection_duration", RuleStreamTimeouts, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.CommonHttpProtocolOptions.MaxConnectionDuration = durationpb.New(MinStreamIdleTimeout)
			})
		}},
		{"route mirrors to the API server", RuleRequestMirror, func(b *bootstrapv3.Bootstrap) {
			withRoute(t, b, func(r *routev3.Route) {
				r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: testAPICluster}}
			})
		}},
		{"virtual host mirrors", RuleRequestMirror, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().VirtualHosts[0].RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: XDSCluster}}
			})
		}},
		{"access log prints Authorization", RuleAccessLogCredentials, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, kubegateFormatWith("%REQ(AUTHORIZATION)%")))
		}},
		{"access log prints Cookie as a fallback", RuleAccessLogCredentials, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, kubegateFormatWith("%REQ(X-USER?Cookie):40%")))
		}},
		{"JSON file log prints Impersonate-Group", RuleAccessLogCredentials, func(b *bootstrapv3.Bootstrap) {
			s, err := structpb.NewStruct(map[string]any{"path": "%PATH(NQ)%", "who": map[string]any{"groups": "%REQ(impersonate-group)%"}})
			if err != nil {
				t.Fatal(err)
			}
			f := &filev3.FileAccessLog{Path: "/dev/stdout", AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: s}}}}
			withAccessLog(t, b, &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, f)}})
		}},
		{"router upstream log prints the agent token", RuleAccessLogCredentials, func(b *bootstrapv3.Bootstrap) {
			withFilter(t, b, 2, func(r *routerv3.Router) {
				r.UpstreamLog = []*accesslogv3.AccessLog{stdoutLog(t, "%REQ(:METHOD)% %REQ(Authorization)%\n")}
			})
		}},
		{"format from a file", RuleAccessLogCredentials, func(b *bootstrapv3.Bootstrap) {
			l := &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
					Specifier: &corev3.DataSource_Filename{Filename: "/etc/envoy/format.txt"}}}}}}
			withAccessLog(t, b, &accesslogv3.AccessLog{Name: StdoutAccessLog, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, l)}})
		}},
		{"default access log format", RuleAccessLogQuery, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, ""))
		}},
		{"access log prints :path", RuleAccessLogQuery, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, strings.Replace(AccessLogFormat, "%PATH(NQ:ORIG_OR_PATH)%", "%REQ(:PATH)%", 1)))
		}},
		{"access log prints Envoy's default path", RuleAccessLogQuery, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, strings.Replace(AccessLogFormat, "%PATH(NQ:ORIG_OR_PATH)%", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", 1)))
		}},
		{"access log prints PATH with its query", RuleAccessLogQuery, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, strings.Replace(AccessLogFormat, "%PATH(NQ:ORIG_OR_PATH)%", "%PATH%", 1)))
		}},
		{"access log prints the CSRF query parameter", RuleAccessLogQuery, func(b *bootstrapv3.Bootstrap) {
			withAccessLog(t, b, stdoutLog(t, kubegateFormatWith("%QUERY_PARAM(gitlab-csrf-token)%")))
		}},
		{"client address from X-Forwarded-For", RuleXFFTrust, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.UseRemoteAddress = wrapperspb.Bool(false) })
		}},
		{"one trusted X-Forwarded-For hop", RuleXFFTrust, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) { h.XffNumTrustedHops = 1 })
		}},
		{"client address from a custom header", RuleXFFTrust, func(b *bootstrapv3.Bootstrap) {
			withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
				h.OriginalIpDetectionExtensions = []*corev3.TypedExtensionConfig{{Name: "envoy.http.original_ip_detection.custom_header",
					TypedConfig: mustAny(t, &customheaderv3.CustomHeaderConfig{HeaderName: "x-real-ip"})}}
			})
		}},
	}
}

// TestRenderedHardening pins what the rendered bootstrap says against slow and
// greedy clients, so a change of default is a visible decision.
func TestRenderedHardening(t *testing.T) {
	b, err := Bootstrap(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	l := b.StaticResources.Listeners[0]
	if got := l.GetPerConnectionBufferLimitBytes().GetValue(); got != DefaultConnectionBufferBytes {
		t.Errorf("per_connection_buffer_limit_bytes = %d", got)
	}
	if got := chain(b).GetTransportSocketConnectTimeout().AsDuration(); got != DefaultTLSHandshakeTimeout {
		t.Errorf("transport_socket_connect_timeout = %v", got)
	}
	withHCM(t, b, func(h *hcmv3.HttpConnectionManager) {
		if got := h.GetRequestHeadersTimeout().AsDuration(); got != DefaultRequestHeadersTimeout {
			t.Errorf("request_headers_timeout = %v", got)
		}
		h2 := h.GetHttp2ProtocolOptions()
		if h2.GetMaxConcurrentStreams().GetValue() != DefaultMaxConcurrentStreams || h2.GetInitialStreamWindowSize().GetValue() != DefaultInitialStreamWindowSize ||
			h2.GetInitialConnectionWindowSize().GetValue() != DefaultInitialConnectionWindowSize {
			t.Errorf("http2_protocol_options = %v", h2)
		}
		if h.GetCommonHttpProtocolOptions().GetMaxConnectionDuration() != nil || h.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection() != nil {
			t.Error("a connection lifetime limit would cut watches")
		}
		var rl localratelimitv3.LocalRateLimit
		if err := h.HttpFilters[1].GetTypedConfig().UnmarshalTo(&rl); err != nil {
			t.Fatalf("second filter (after header_mutation): %v", err)
		}
		want := ClientRateLimit(testOptions(t))
		if !proto.Equal(&rl, want) {
			t.Errorf("rate limit = %v", &rl)
		}
		if d := rl.Descriptors[0].TokenBucket; d.MaxTokens != DefaultClientRateBurst || d.TokensPerFill.GetValue() != DefaultClientRateLimit {
			t.Errorf("client bucket = %v", d)
		}
	})
	for _, c := range b.StaticResources.Clusters {
		if c.GetConnectTimeout().AsDuration() != DefaultConnectTimeout {
			t.Errorf("cluster %s connect_timeout = %v", c.Name, c.GetConnectTimeout())
		}
	}
}

// TestPrivateServiceAddresses: the services that see credentials or serve the
// agent token are refused on an address others could reach, unless the operator
// says the network is Envoy's alone.
func TestPrivateServiceAddresses(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr []string
	}{
		{"loopback and sockets", func(o *Options) {
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "127.0.0.1:9001"), mustAddr(t, "[::1]:9002"), mustAddr(t, "unix:///run/kubegate/xds.sock")
		}, nil},
		{"localhost", func(o *Options) {
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "localhost:1"), mustAddr(t, "localhost:2"), mustAddr(t, "localhost:3")
		}, nil},
		{"xds on every interface", func(o *Options) { o.XDS = mustAddr(t, "0.0.0.0:9003") }, []string{"--xds 0.0.0.0:9003", "agent token", "--allow-non-loopback"}},
		{"authz by service name", func(o *Options) { o.Authz = mustAddr(t, "authz:9001") }, []string{"--authz authz:9001", "credentials"}},
		{"extproc on a pod IP", func(o *Options) { o.ExtProc = mustAddr(t, "10.1.2.3:9002") }, []string{"--extproc 10.1.2.3:9002"}},
		{"allowed explicitly", func(o *Options) { o.XDS = mustAddr(t, "xds:9003"); o.AllowNonLoopback = true }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			o.AllowNonLoopback = false
			o.Authz, o.ExtProc, o.XDS = mustAddr(t, "127.0.0.1:9001"), mustAddr(t, "127.0.0.1:9002"), mustAddr(t, "127.0.0.1:9003")
			tt.edit(&o)
			_, err := Render(o)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("rendered; want a refusal")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

// TestHardeningFlagBounds: every value the options accept renders (Render fails
// on its own validation otherwise), and the first value past each bound is a
// flag error naming the flag.
func TestHardeningFlagBounds(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string // "" renders
	}{
		{"longest timeouts", func(o *Options) {
			o.RequestHeadersTimeout, o.TLSHandshakeTimeout, o.ConnectTimeout = MaxSlowClientTimeout, MaxSlowClientTimeout, MaxConnectTimeout
		}, ""},
		{"largest HTTP/2 and buffer limits", func(o *Options) {
			o.MaxConcurrentStreams, o.InitialStreamWindowSize, o.InitialConnectionWindowSize = MaxConcurrentStreamsLimit, MaxWindowSize, MaxWindowSize
			o.ConnectionBufferBytes = MaxConnectionBufferBytes
		}, ""},
		{"smallest limits", func(o *Options) {
			o.MaxConcurrentStreams, o.InitialStreamWindowSize, o.InitialConnectionWindowSize, o.ConnectionBufferBytes = 1, 65535, 65535, 1
			o.ClientRateLimit, o.ClientRateBurst, o.MaxConnections = 1, 1, 1
		}, ""},
		{"headers timeout off", func(o *Options) { o.RequestHeadersTimeout = 0 }, "--request-headers-timeout"},
		{"handshake timeout too long", func(o *Options) { o.TLSHandshakeTimeout = MaxSlowClientTimeout + 1 }, "--tls-handshake-timeout"},
		{"connect timeout too long", func(o *Options) { o.ConnectTimeout = MaxConnectTimeout + 1 }, "--connect-timeout"},
		{"too many streams", func(o *Options) { o.MaxConcurrentStreams = MaxConcurrentStreamsLimit + 1 }, "--max-concurrent-streams"},
		{"window below HTTP/2's minimum", func(o *Options) { o.InitialStreamWindowSize = 65534 }, "--http2-stream-window"},
		{"connection window too large", func(o *Options) { o.InitialConnectionWindowSize = MaxWindowSize + 1 }, "--http2-connection-window"},
		{"buffer too large", func(o *Options) { o.ConnectionBufferBytes = MaxConnectionBufferBytes + 1 }, "--connection-buffer-bytes"},
		{"no rate limit", func(o *Options) { o.ClientRateLimit = 0 }, "--client-rate-limit"},
		{"burst below the rate", func(o *Options) { o.ClientRateLimit, o.ClientRateBurst = 10, 5 }, "--client-rate-burst"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			tt.edit(&o)
			_, err := Render(o)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatal(err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}
