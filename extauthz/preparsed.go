package extauthz

import (
	"crypto/sha256"
	"sync"

	"kubegate.dev/kubegate/policy"
)

// Preparsed are agent configurations parsed ahead of their first load. kubegate
// authz reads and parses each agent's file on one goroutine while the directory
// loads on the others, so that at start-up the two no longer run one after the
// other; the first load of exactly those bytes then takes the result instead of
// parsing them again. policy.ParseAgentConfig depends on the name and the bytes
// only, so the result is the same; bytes that changed in between (the key is
// their SHA-256) are parsed as usual, and so is a configuration the early parse
// refused, whose errors are reported by the load.
//
// A Preparsed is safe for concurrent use; the zero value is ready, and a nil one
// holds nothing.
type Preparsed struct {
	mu sync.Mutex
	m  map[preparsedKey]*policy.AgentConfig
}

type preparsedKey struct {
	name string
	sum  [sha256.Size]byte
}

// Parse parses data as the agent configuration name and keeps it if it is valid.
func (p *Preparsed) Parse(name string, data []byte) {
	cfg, err := policy.ParseAgentConfig(name, data)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[preparsedKey]*policy.AgentConfig{}
	}
	p.m[preparsedKey{name, sha256.Sum256(data)}] = cfg
}

// take returns the parse of exactly these bytes under this name, or nil. Either
// way it forgets every parse under this name: only the first load can use one,
// and nothing stays behind for the process's life.
func (p *Preparsed) take(name string, data []byte) *policy.AgentConfig {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return nil
	}
	cfg := p.m[preparsedKey{name, sha256.Sum256(data)}]
	for k := range p.m {
		if k.name == name {
			delete(p.m, k)
		}
	}
	return cfg
}
