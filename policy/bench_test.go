package policy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
)

// benchSetup builds a user-mode config with nProjects+nGroups entries and a user with
// 50 qualifying memberships (25 projects, 25 groups, mixed roles: ~200 groups).
func benchSetup(b *testing.B, nProjects, nGroups int, mods []Module) (*Engine, Input) {
	var doc strings.Builder
	doc.WriteString("user_access:\n  access_as: {user: {}}\n  projects:\n")
	for i := range nProjects {
		fmt.Fprintf(&doc, "  - id: g%d/p%d\n", i, i)
	}
	doc.WriteString("  groups:\n")
	for i := range nGroups {
		fmt.Fprintf(&doc, "  - id: g%d\n", i)
	}
	cfg, err := ParseAgentConfig("bench.yaml", []byte(doc.String()))
	if err != nil {
		b.Fatal(err)
	}
	e, err := NewEngine(context.Background(), sandboxAgent, cfg, mods)
	if err != nil {
		b.Fatal(err)
	}
	levels := []identity.AccessLevel{identity.Developer, identity.Maintainer, identity.Owner}
	var ms []identity.Membership
	for i := range 25 {
		ms = append(ms, identity.Membership{Kind: identity.KindProject, ID: int64(1000 + i), Path: fmt.Sprintf("g%d/p%d", i%nProjects, i%nProjects), AccessLevel: levels[i%3]})
		ms = append(ms, identity.Membership{Kind: identity.KindGroup, ID: int64(2000 + i), Path: fmt.Sprintf("g%d", i%nGroups), AccessLevel: levels[i%3]})
	}
	req, _ := ParseRequest("GET", "/api/v1/namespaces/demo/pods")
	return e, Input{Identity: who("alice", 1), Memberships: ms, Request: req}
}

// loop runs fn b.N times on one locked OS thread and also reports that thread's CPU
// time per call (thread-cpu-µs/op), which a loaded machine inflates much less than
// the wall time of ns/op.
func loop(b *testing.B, fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	c0, n := threadCPU(), 0
	for b.Loop() {
		fn()
		n++
	}
	if c := threadCPU() - c0; c > 0 && n > 0 {
		b.ReportMetric(float64(c.Nanoseconds())/1e3/float64(n), "thread-cpu-µs/op")
	}
}

// BenchmarkDecide measures one decision for a user with 50 qualifying memberships.
// warm: the built-in decision for this identity is cached (every request after the
// first); cold: the built-in Rego policy runs (first request of an identity, or after
// a configuration change).
func BenchmarkDecide(b *testing.B) {
	mods, err := LoadModules("testdata/operator")
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []struct{ p, g int }{{3, 2}, {500, 500}} {
		for _, withMods := range []bool{false, true} {
			var ms []Module
			name := fmt.Sprintf("config=%d+%d", size.p, size.g)
			if withMods {
				ms, name = mods, name+"/operator-modules"
			}
			b.Run(name+"/warm", func(b *testing.B) {
				e, in := benchSetup(b, size.p, size.g, ms)
				if d, err := e.Decide(context.Background(), in); err != nil || !d.Allowed {
					b.Fatal(d, err)
				}
				loop(b, func() {
					if _, err := e.Decide(context.Background(), in); err != nil {
						b.Fatal(err)
					}
				})
			})
			b.Run(name+"/cold", func(b *testing.B) {
				e, in := benchSetup(b, size.p, size.g, ms)
				loop(b, func() {
					e.cache.InvalidateAll()
					if _, err := e.Decide(context.Background(), in); err != nil {
						b.Fatal(err)
					}
				})
			})
		}
	}
}
