// Package agentconfig delivers each agent's configuration file
// (.gitlab/agents/<name>/config.yaml) to kubegate authz from where it lives: a
// local file (watched, including Kubernetes' symlink swaps) or the agent's config
// project in GitLab (re-read on a schedule with conditional requests, and on a
// webhook call). It only fetches bytes; package policy validates them, and a
// version that does not validate never replaces the last good one.
package agentconfig

import "context"

// Version is one version of an agent configuration file.
type Version struct {
	// Name is what errors about the content name: the file's path, or the GitLab
	// project and file path (and commit) it was read from.
	Name string
	// Data is the file's content.
	Data []byte
}

// Source watches one agent's configuration.
type Source interface {
	// Run reads the configuration now, then whenever it may have changed, and
	// calls onChange with every version that differs from the last one delivered
	// (the first one included), from one goroutine, until ctx ends. A failed read
	// is reported to onError (and counted by the source); the last version stays
	// the one in service. Run returns only when ctx ends or the source cannot work
	// at all.
	Run(ctx context.Context, onChange func(Version), onError func(error)) error
}
