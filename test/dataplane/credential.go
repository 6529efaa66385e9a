package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// credentialFilter is envoy.filters.http.credential_injector with the generic
// credential (source/extensions/filters/http/credential_injector/
// credential_injector_filter.cc, source/extensions/http/injected_credentials/
// generic/generic_impl.cc).
type credentialFilter struct {
	cfg     *credentialConfig
	secrets *secretWatcher
}

// decodeHeaders is CredentialInjectorFilter::decodeHeaders → FilterConfig::
// injectCredential → GenericCredentialInjector::inject:
//   - overwrite false and the header present: AlreadyExists, the request goes on
//     with the client's header;
//   - no secret (none received yet, or empty): NotFound; the request fails with
//     401 "Failed to inject credential." unless allow_request_without_credential;
//   - otherwise setCopy(header, prefix+secret): every line of the header is
//     replaced by one.
//
// It runs for requests without a route too: the filter does not look at the route.
func (f *credentialFilter) decodeHeaders(_ context.Context, s *stream) *localReply {
	if !f.cfg.overwrite && s.headers.has(f.cfg.header) {
		return nil
	}
	secret, _ := f.secrets.current()
	if secret == "" {
		if f.cfg.allowWithout {
			return nil
		}
		return &localReply{status: http.StatusUnauthorized, body: "Failed to inject credential.", details: "failed_to_inject_credential"}
	}
	s.headers.set(f.cfg.header, f.cfg.prefix+secret)
	return nil
}

const secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// secretWatcher is Envoy's SDS subscription for one generic secret: a gRPC
// state-of-the-world xDS stream (SecretDiscoveryService.StreamSecrets, or
// AggregatedDiscoveryService for `ads: {}`), ACKing each good response and NACKing
// a bad one while keeping the last good secret (xDS protocol docs, "ACK/NACK and
// resource type instance version"; SdsApi::onConfigUpdate).
type secretWatcher struct {
	cfg  *credentialConfig
	conn *grpc.ClientConn
	node *corev3.Node
	log  *slog.Logger

	mu      sync.RWMutex
	value   string
	version string
	// ready is the listener's init target: closed on the first secret or the first
	// rejected update, whichever comes first (SdsApi::onConfigUpdate and
	// SdsApi::onConfigUpdateFailed both call init_target_.ready(), source/common/
	// secret/sds_api.cc: "We need to allow server startup to continue, even if we
	// have a bad config"). A broken connection does not end the wait.
	ready chan struct{}
	once  sync.Once
}

func newSecretWatcher(cfg *credentialConfig, conn *grpc.ClientConn, node *corev3.Node, log *slog.Logger) *secretWatcher {
	return &secretWatcher{cfg: cfg, conn: conn, node: node, log: log, ready: make(chan struct{})}
}

func (w *secretWatcher) current() (value, version string) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.value, w.version
}

// run keeps a stream open until ctx ends, reconnecting after failures as Envoy's
// gRPC mux does (with a short fixed delay here).
func (w *secretWatcher) run(ctx context.Context) {
	if w.cfg.sdsPath != "" {
		w.watchFile(ctx)
		return
	}
	for ctx.Err() == nil {
		err := w.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("SDS stream ended; reconnecting", "secret", w.cfg.secretName, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type discoveryStream interface {
	Send(*discoveryv3.DiscoveryRequest) error
	Recv() (*discoveryv3.DiscoveryResponse, error)
}

func (w *secretWatcher) stream(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var st discoveryStream
	var err error
	if w.cfg.ads {
		st, err = discoveryv3.NewAggregatedDiscoveryServiceClient(w.conn).StreamAggregatedResources(sctx)
	} else {
		st, err = secretv3.NewSecretDiscoveryServiceClient(w.conn).StreamSecrets(sctx)
	}
	if err != nil {
		return err
	}
	// The first request of every stream carries the node; with
	// set_node_on_first_message_only (kubegate's setting, and what the stand-in
	// does for both values) later ones do not.
	_, accepted := w.current()
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo:   accepted,
		Node:          w.node,
		ResourceNames: []string{w.cfg.secretName},
		TypeUrl:       secretTypeURL,
	}
	if err := st.Send(req); err != nil {
		return err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		ack := &discoveryv3.DiscoveryRequest{
			ResourceNames: []string{w.cfg.secretName},
			TypeUrl:       secretTypeURL,
			ResponseNonce: resp.GetNonce(),
		}
		if err := w.accept(resp); err != nil {
			w.log.Warn("SDS update rejected (NACK); keeping the last good secret", "secret", w.cfg.secretName, "version", resp.GetVersionInfo(), "error", err)
			_, ack.VersionInfo = w.current()
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			// onConfigUpdateFailed: the listener stops waiting, with no secret if none
			// was accepted before; the injector then fails every request.
			w.once.Do(func() { close(w.ready) })
		} else {
			ack.VersionInfo = resp.GetVersionInfo()
		}
		if err := st.Send(ack); err != nil {
			return err
		}
	}
}

// accept checks a response like SdsApi::onConfigUpdate for a generic secret: the
// type, exactly our resource, a generic_secret with a readable data source.
func (w *secretWatcher) accept(resp *discoveryv3.DiscoveryResponse) error {
	if resp.GetTypeUrl() != secretTypeURL {
		return fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
	}
	var found *tlsv3.Secret
	for _, r := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := r.UnmarshalTo(s); err != nil {
			return fmt.Errorf("resource is not a Secret: %w", err)
		}
		if s.GetName() == w.cfg.secretName {
			found = s
		}
	}
	if found == nil {
		//lint:ignore ST1005 Envoy's own message (sds_api.cc, SdsApi::validateUpdateSize), kept verbatim
		return fmt.Errorf("Missing SDS resources for %s in onConfigUpdate()", w.cfg.secretName)
	}
	g := found.GetGenericSecret()
	if g == nil {
		return errors.New("the secret is not a generic_secret")
	}
	value, err := readDataSource(g.GetSecret())
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.value, w.version = string(value), resp.GetVersionInfo()
	w.mu.Unlock()
	w.log.Info("SDS secret updated", "secret", w.cfg.secretName, "version", resp.GetVersionInfo())
	w.once.Do(func() { close(w.ready) })
	return nil
}
