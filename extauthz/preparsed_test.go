package extauthz

import (
	"context"
	"log/slog"
	"testing"

	"kubegate.dev/kubegate/agentconfig"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

func TestPreparsedTake(t *testing.T) {
	p := &Preparsed{}
	p.Parse("alpha.yaml", []byte(alphaConfig))
	p.Parse("gamma.yaml", []byte(badConfig)) // refused: not kept, the load reports it
	tests := []struct {
		name, file, doc string
		want            bool
	}{
		{"other name", "beta.yaml", alphaConfig, false},
		{"a refused parse", "gamma.yaml", badConfig, false},
		{"the same name and bytes", "alpha.yaml", alphaConfig, true},
		{"only once", "alpha.yaml", alphaConfig, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.take(tt.file, []byte(tt.doc)) != nil; got != tt.want {
				t.Fatalf("take(%s) found a parse: %v, want %v", tt.file, got, tt.want)
			}
		})
	}
	// A load of other bytes finds nothing, and forgets the parse of the first.
	p.Parse("alpha.yaml", []byte(alphaConfig))
	if p.take("alpha.yaml", []byte(alphaConfig+"# edited\n")) != nil || p.take("alpha.yaml", []byte(alphaConfig)) != nil {
		t.Fatal("other bytes found a parse, or the stale parse outlived the load")
	}
	var none *Preparsed
	if none.take("alpha.yaml", []byte(alphaConfig)) != nil {
		t.Fatal("a nil Preparsed returned a parse")
	}
}

// TestLoadUsesOnlyTheSameBytes: the first load of the bytes parsed early takes
// that parse; a file that changed in between is parsed (and judged) as itself.
func TestLoadUsesOnlyTheSameBytes(t *testing.T) {
	dir, err := directory.Load(sandboxDirectory)
	if err != nil {
		t.Fatal(err)
	}
	p := &Preparsed{}
	p.Parse("alpha.yaml", []byte(alphaConfig))
	p.Parse("beta.yaml", []byte(betaConfig))
	early := map[string]*policy.AgentConfig{}
	for k, cfg := range p.m {
		early[k.name] = cfg
	}
	srv, err := NewGateway(gatewayAgents, &Shared{Authenticator: dir, Memberships: dir}, GatewayOptions{Log: slog.New(slog.DiscardHandler), Preparsed: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.LoadAgentConfig(context.Background(), 1, agentconfig.Version{Name: "alpha.yaml", Data: []byte(alphaConfig)}); err != nil {
		t.Fatal(err)
	}
	if srv.agents[1].config != early["alpha.yaml"] {
		t.Fatal("the load of the bytes parsed early parsed them again")
	}
	// beta's file became invalid after the early parse: the load refuses it.
	if err := srv.LoadAgentConfig(context.Background(), 2, agentconfig.Version{Name: "beta.yaml", Data: []byte(badConfig)}); err == nil {
		t.Fatal("a changed, invalid file loaded on the strength of its earlier valid version")
	}
	if srv.agents[2].engine.Load() != nil {
		t.Fatal("agent 2 is served from a configuration it no longer has")
	}
	if len(p.m) != 0 {
		t.Fatalf("%d early parses stay behind after every agent's first load", len(p.m))
	}
}
