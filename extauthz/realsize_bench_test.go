package extauthz

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/contract/handoff"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	idsession "kubegate.dev/kubegate/identity/session"
	"kubegate.dev/kubegate/policy"
	"kubegate.dev/kubegate/test/realsize"
)

// BenchmarkCheckRealSizeInProcess calls Server.Check directly (no gRPC) on the
// real-size data of test/realsize with a JSON audit log to a discarding writer: the
// server's own per-request work, for profiling (go test -cpuprofile). The
// process-level figures with ratios to a floor are test/perf's.
func BenchmarkCheckRealSizeInProcess(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	dir, err := directory.Parse("directory.yaml", data.Directory)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := policy.ParseAgentConfig("agent-config.yaml", data.AgentConfig)
	if err != nil {
		b.Fatal(err)
	}
	e, err := policy.NewEngine(context.Background(), agent, cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	// Browser sessions on, as a gateway serving the Dashboard runs: the session
	// authenticator first in the chain (identity/backends does the same).
	keys := filepath.Join(b.TempDir(), "session.keys")
	if err := os.WriteFile(keys, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	sessions, err := idsession.New(idsession.Config{KeyFile: keys})
	if err != nil {
		b.Fatal(err)
	}
	lookup := idsession.UserLookupFunc(func(_ context.Context, name string) (identity.User, bool, error) {
		u, ok := dir.UserByName(name)
		return u, ok, nil
	})
	authn := identity.Union{sessions.Authenticator(lookup), dir}
	srv, err := NewServer(agent, &Snapshot{Engine: e, Authenticator: authn, Memberships: dir}, slog.New(slog.NewJSONHandler(discard{}, nil)), nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.SetAllowedOrigins([]string{"https://gateway.example:8443"}); err != nil {
		b.Fatal(err)
	}
	alice, _ := dir.UserByName(data.User)
	rec := httptest.NewRecorder()
	sess, err := sessions.Issue(rec, alice, idsession.MethodPassword)
	if err != nil {
		b.Fatal(err)
	}
	cookie := (&http.Response{Header: rec.Header()}).Cookies()[0]
	for _, tc := range []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"allowed", checkRequest("GET", podsPath, pat(data.Token))},
		{"allowed-session", checkRequest("GET", podsPath, hdr{"cookie", cookie.Name + "=" + cookie.Value}, hdr{"gitlab-agent-id", "1"},
			hdr{"x-csrf-token", sess.CSRFToken}, hdr{"sec-fetch-site", "same-origin"})},
		{"denied-403", checkRequest("GET", podsPath, pat(data.OutsiderToken))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if resp, err := srv.Check(context.Background(), tc.req); err != nil || (tc.name != "denied-403" && resp.GetOkResponse() == nil) {
				b.Fatal(resp.GetDeniedResponse(), err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := srv.Check(context.Background(), tc.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkIdentityMemoryRealSize reports the live heap each identity served adds
// once its decision is cached (after a GC): heap-B/identity over the users of
// test/realsize but alice, each checked once, and heap-B/alice for alice checked
// after them (243 groups, the largest identity; role strings of entries others
// share are already built by then); identity-B/alice is the length of alice's
// encoded hand-off identity (contract/handoff), as her Check response carries it.
// The process-level resident figure is test/perf's BenchmarkLifecycle.
func BenchmarkIdentityMemoryRealSize(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	dir, err := directory.Parse("directory.yaml", data.Directory)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := policy.ParseAgentConfig("agent-config.yaml", data.AgentConfig)
	if err != nil {
		b.Fatal(err)
	}
	var others []string
	for u, tok := range data.Tokens {
		if u != data.User && u != data.Outsider {
			others = append(others, tok)
		}
	}
	heap := func() int64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	check := func(srv *Server, token string) *authv3.CheckResponse {
		resp, err := srv.Check(context.Background(), checkRequest("GET", podsPath, pat(token)))
		if err != nil {
			b.Fatal(err)
		}
		return resp
	}
	var perIdentity, alice, encoded float64
	for range b.N {
		e, err := policy.NewEngine(context.Background(), agent, cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		srv, err := NewServer(agent, &Snapshot{Engine: e, Authenticator: dir, Memberships: dir}, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			b.Fatal(err)
		}
		check(srv, data.OutsiderToken) // one-time set-up of the first request (metrics, pools)
		h0 := heap()
		for _, tok := range others {
			check(srv, tok)
		}
		h1 := heap()
		resp := check(srv, data.Token)
		h2 := heap()
		ident := resp.GetDynamicMetadata().GetFields()[handoff.Key].GetStructValue().GetFields()["identity"].GetStringValue()
		if ident == "" {
			b.Fatalf("alice's Check carried no hand-off identity: %v", resp)
		}
		encoded += float64(len(ident))
		perIdentity += float64(h1-h0) / float64(len(others))
		alice += float64(h2 - h1)
		runtime.KeepAlive(srv)
	}
	b.ReportMetric(perIdentity/float64(b.N), "heap-B/identity")
	b.ReportMetric(alice/float64(b.N), "heap-B/alice")
	b.ReportMetric(encoded/float64(b.N), "identity-B/alice")
}
