package extauthz

import (
	"context"
	"encoding/json"
	"testing"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/identity"
)

// AgentsFor answers, for each user, exactly what the agent list endpoint answers
// that user's token: the same rule, for a browser session.
func TestAgentsForMatchesAgentList(t *testing.T) {
	f := threeAgents(t)
	for _, name := range []string{"alice", "grace", "bob", "dave", "carol", "ivan"} {
		t.Run(name, func(t *testing.T) {
			u, ok := f.backend.dir.UserByName(name)
			if !ok {
				t.Fatalf("%s is not in the sandbox directory", name)
			}
			got, err := f.server.AgentsFor(context.Background(), u)
			if err != nil {
				t.Fatal(err)
			}
			resp := f.check(t, checkRequest("GET", contract.AgentsPath, patFor("1", token(name))))
			var list contract.AgentList
			if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &list); err != nil {
				t.Fatal(err)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(list.Agents)
			if name == "alice" && len(got) == 0 {
				t.Fatal("alice reaches no agent")
			}
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("AgentsFor %s, the agent list %s", gotJSON, wantJSON)
			}
		})
	}
	if got, err := f.server.AgentsFor(context.Background(), identity.User{ID: 999, Username: "nobody"}); err != nil || len(got) != 0 || got == nil {
		t.Fatalf("an unknown user: %v %v", got, err)
	}
}
