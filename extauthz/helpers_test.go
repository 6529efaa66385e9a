package extauthz

import (
	"context"
	"os"
	"testing"

	"kubegate.dev/kubegate/policy"
)

func writeFile(t testing.TB, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func snapshotOrError(configFile string, backend *counting) (*Snapshot, error) {
	cfg, err := policy.LoadAgentConfig(configFile)
	if err != nil {
		return nil, err
	}
	e, err := policy.NewEngine(context.Background(), agent, cfg, nil)
	if err != nil {
		return nil, err
	}
	return &Snapshot{Engine: e, Authenticator: backend, Memberships: backend}, nil
}
