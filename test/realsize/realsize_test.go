package realsize

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

// TestDefaultShape loads the generated data with the real directory and policy code
// and checks that alice's decision has the promised size, that her token and the
// bad ones authenticate as the directory says, and that the counts match the shape.
func TestDefaultShape(t *testing.T) {
	d, err := Generate(Default())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := directory.Parse("realsize-directory.yaml", d.Directory)
	if err != nil {
		t.Fatalf("the directory does not load: %v", err)
	}
	cfg, err := policy.ParseAgentConfig("realsize-agent.yaml", d.AgentConfig)
	if err != nil {
		t.Fatalf("the agent config does not load: %v", err)
	}
	if got := len(cfg.UserAccess.Projects) + len(cfg.UserAccess.Groups); got != 1000 {
		t.Errorf("listed entries = %d, want 500 + 500", got)
	}
	if d.Groups != 1515 || d.Projects != 4000 {
		t.Errorf("groups, projects = %d, %d; want 1515, 4000", d.Groups, d.Projects)
	}
	if per := float64(d.Memberships) / 999; per < 45 || per > 55 {
		t.Errorf("memberships per user = %.1f, want about 50", per)
	}
	if len(d.Tokens)+len(d.BadTokens) != 2000 {
		t.Errorf("tokens = %d, want 2000", len(d.Tokens)+len(d.BadTokens))
	}

	engine, err := policy.NewEngine(context.Background(), policy.Agent{ID: 1, ConfigProjectID: 1}, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, ok, err := dir.Authenticate(ctx, identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: d.Token})
	if err != nil || !ok || id.User.Username != "alice" {
		t.Fatalf("alice's token: %v, %v, %v", id, ok, err)
	}
	ms, err := dir.Memberships(ctx, id.User, engine.Listed())
	if err != nil {
		t.Fatal(err)
	}
	qualifying := 0
	for _, m := range ms {
		if m.AccessLevel >= identity.Developer {
			qualifying++
		}
	}
	if qualifying != d.Qualifying || qualifying != 50 {
		t.Errorf("alice qualifies for %d entries, Data says %d, want 50", qualifying, d.Qualifying)
	}
	if d.Inherited != 29 {
		t.Errorf("inherited = %d, want 29", d.Inherited)
	}
	req, err := policy.ParseRequest("GET", "/api/v1/namespaces/demo/pods")
	if err != nil {
		t.Fatal(err)
	}
	dec, err := engine.Decide(ctx, policy.Input{Identity: *id, Memberships: ms, Request: req})
	if err != nil || !dec.Allowed || dec.Impersonate == nil {
		t.Fatalf("alice's decision: %+v, %v", dec, err)
	}
	if got := len(dec.Impersonate.Groups()); got != d.ImpersonatedGroups || got != 243 {
		t.Errorf("impersonated groups = %d, Data says %d, want 243", got, d.ImpersonatedGroups)
	}

	out, ok := dir.UserByName(d.Outsider)
	if !ok {
		t.Fatal("no outsider")
	}
	if ms, err := dir.Memberships(ctx, out, engine.Listed()); err != nil || len(ms) != 0 {
		t.Errorf("outsider memberships = %v, %v; want none", ms, err)
	}

	// Every bad token is refused; a sample of other users' good tokens is accepted.
	for i, tok := range d.BadTokens[:30] {
		_, _, err := dir.Authenticate(ctx, identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: tok})
		if err == nil {
			t.Errorf("bad token %d accepted", i)
		}
	}
	for _, u := range []string{"user-0002", "user-0500", "user-0999", "outsider"} {
		id, ok, err := dir.Authenticate(ctx, identity.Credential{Type: identity.AccessPersonalAccessToken, AgentID: 1, Secret: d.Tokens[u]})
		if err != nil || !ok || id.User.Username != u {
			t.Errorf("%s's token: %v, %v, %v", u, id, ok, err)
		}
	}
}

func TestDeterministic(t *testing.T) {
	a, err := Generate(Default())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Generate(Default())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Directory, b.Directory) || !bytes.Equal(a.AgentConfig, b.AgentConfig) {
		t.Error("two runs with the same seed differ")
	}
	s := Default()
	s.Seed = 2
	c, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Directory, c.Directory) {
		t.Error("another seed gives the same directory")
	}
}

func TestShapeOutOfRange(t *testing.T) {
	for name, s := range map[string]Shape{
		"no users":          {Users: 0, Projects: 4000, ListedProjects: 500, ListedGroups: 500},
		"too many listed":   {Users: 10, Projects: 4000, ListedProjects: 501, ListedGroups: 500},
		"too few projects":  {Users: 10, Projects: 100, ListedProjects: 500, ListedGroups: 500},
		"too few for alice": {Users: 10, Projects: 4000, ListedProjects: 10, ListedGroups: 500},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Generate(s); err == nil || !strings.Contains(err.Error(), "out of range") {
				t.Errorf("Generate(%+v) error = %v, want out of range", s, err)
			}
		})
	}
}
