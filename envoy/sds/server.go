package sds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// allNodes gives every Envoy the same snapshot: all replicas of the gateway inject
// the same agent token, and a new replica must get it without being known first.
type allNodes struct{}

const snapshotKey = "kubegate"

func (allNodes) ID(*corev3.Node) string { return snapshotKey }

// Secret is the SDS resource: a generic secret holding the bare token.
// credential_injector's generic credential prepends "Bearer " (header_value_prefix).
func Secret(name, token string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: token}},
		}},
	}
}

// Version names a token without revealing it: replicas of kubegate xds reading the
// same file agree on it, and a restart does not look like a rotation to Envoy.
func Version(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// Server holds the current secrets in go-control-plane's snapshot cache and
// serves them over SDS: one generic secret per agent, each published on its own
// (PublishSecret), so a bad token for one agent never touches another's.
type Server struct {
	name   string // the secret Publish sets
	cache  cachev3.SnapshotCache
	logger *slog.Logger

	mu      sync.Mutex
	tokens  map[string]string // secret name → token
	version string
}

// NewServer serves the generic secret called name (Publish), and any other
// PublishSecret names. Nothing is served until the first publish: Envoy's
// credential_injector then answers 401 rather than sending a request without the
// token (allow_request_without_credential false).
func NewServer(name string, logger *slog.Logger) *Server {
	return &Server{
		name:   name,
		cache:  cachev3.NewSnapshotCache(false, allNodes{}, cacheLogger(logger)),
		logger: logger,
		tokens: map[string]string{},
	}
}

// Publish makes token the secret NewServer named. It reports whether that is a
// new version.
func (s *Server) Publish(ctx context.Context, token string) (bool, error) {
	return s.PublishSecret(ctx, s.name, token)
}

// PublishSecret makes token the secret called name, leaving every other secret as
// it is. It reports whether the served snapshot changed.
func (s *Server) PublishSecret(ctx context.Context, name, token string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.tokens[name]; ok && old == token {
		return false, nil
	}
	next := make(map[string]string, len(s.tokens)+1)
	for k, v := range s.tokens {
		next[k] = v
	}
	next[name] = token
	v := snapshotVersion(next)
	names := make([]string, 0, len(next))
	for k := range next {
		names = append(names, k)
	}
	sort.Strings(names)
	var secrets []types.Resource
	for _, k := range names {
		secrets = append(secrets, Secret(k, next[k]))
	}
	snap, err := cachev3.NewSnapshot(v, map[resource.Type][]types.Resource{resource.SecretType: secrets})
	if err != nil {
		return false, fmt.Errorf("building the SDS snapshot: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return false, fmt.Errorf("the SDS snapshot is inconsistent: %w", err)
	}
	if err := s.cache.SetSnapshot(ctx, snapshotKey, snap); err != nil {
		return false, fmt.Errorf("serving the SDS snapshot: %w", err)
	}
	s.tokens, s.version = next, v
	s.logger.Info("serving agent token", "secret", name, "token_version", Version(token), "version", v)
	return true, nil
}

// snapshotVersion names a set of secrets: with one, the token's Version (what a
// one-agent gateway always served); with several, a digest of every secret's name
// and token version, so replicas agree and a change to any is a new version.
func snapshotVersion(tokens map[string]string) string {
	if len(tokens) == 1 {
		for _, t := range tokens {
			return Version(t)
		}
	}
	names := make([]string, 0, len(tokens))
	for k := range tokens {
		names = append(names, k)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, k := range names {
		fmt.Fprintf(h, "%s=%s\n", k, Version(tokens[k]))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:8])
}

// Version is the version being served, "" before the first Publish.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// RegisterSDS adds the SDS service alone to g (a server that serves
// grpc.health.v1 itself, like kubegate's service runner).
func (s *Server) RegisterSDS(ctx context.Context, g *grpc.Server) {
	secretv3.RegisterSecretDiscoveryServiceServer(g, serverv3.NewServer(ctx, s.cache, nil))
}

// Register adds the SDS service and grpc.health.v1 (Envoy health-checks its xDS
// cluster with it) to g.
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	s.RegisterSDS(ctx, g)
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	h.SetServingStatus(secretv3.SecretDiscoveryService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, h)
}

func cacheLogger(l *slog.Logger) log.Logger {
	return log.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}
