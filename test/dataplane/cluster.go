package dataplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// dial opens a TCP or unix connection to the cluster's endpoint within its
// connect_timeout (cluster.proto: "The timeout for new network connections to
// hosts in the cluster").
func (c *clusterConfig) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: c.connectTimeout}
	return d.DialContext(ctx, c.endpoint.network, c.endpoint.address)
}

// dialGRPC makes the gRPC channel Envoy's own gRPC client would use for a
// cluster: HTTP/2 in clear text to the one endpoint, a connect_timeout per
// attempt, and a new attempt for the next call rather than a long backoff (Envoy's
// connection pool tries a fresh connection per stream once the previous failed).
func dialGRPC(c *clusterConfig) (*grpc.ClientConn, error) {
	if !c.http2 {
		return nil, fmt.Errorf("cluster %q carries gRPC but is not HTTP/2 (explicit_http_config.http2_protocol_options); Envoy's gRPC client needs HTTP/2", c.name)
	}
	if c.tls != nil {
		return nil, fmt.Errorf("cluster %q: TLS to a gRPC service is not emulated", c.name)
	}
	return grpc.NewClient("passthrough:///"+c.name,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return c.dial(ctx) }),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1, MaxDelay: 10 * time.Millisecond},
			MinConnectTimeout: c.connectTimeout,
		}),
		// The cluster's name is the :authority Envoy's gRPC client sends
		// (GrpcService.EnvoyGrpc.authority: "If not set, the cluster_name is used").
		grpc.WithAuthority(c.name),
	)
}

// breaker is a cluster's circuit breaker on concurrent requests (max_requests; for
// an HTTP/1.1 cluster each request holds a connection, so max_connections bounds
// them too). Envoy fails a request over the limit at once rather than queueing
// (circuit_breaking docs).
type breaker struct{ sem chan struct{} }

// newBreakers makes one breaker per cluster.
func newBreakers(clusters map[string]*clusterConfig) map[string]*breaker {
	out := make(map[string]*breaker, len(clusters))
	for name, c := range clusters {
		n := c.maxRequests
		if !c.http2 && c.maxConnections < n {
			n = c.maxConnections
		}
		out[name] = &breaker{sem: make(chan struct{}, max(n, 1))}
	}
	return out
}

// acquire takes a slot, or reports overflow.
func (b *breaker) acquire() (release func(), ok bool) {
	select {
	case b.sem <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-b.sem }) }, true
	default:
		return nil, false
	}
}

// tlsConfig is the client side of an UpstreamTlsContext. Envoy checks the chain
// against trusted_ca and then the SANs against match_typed_subject_alt_names; it
// never compares the certificate with the SNI (sni only goes in the ClientHello),
// so Go's hostname check is replaced by those two steps.
func (t *upstreamTLS) tlsConfig() *tls.Config {
	return &tls.Config{
		ServerName:         t.sni,
		NextProtos:         t.alpn,
		MinVersion:         t.minV,
		MaxVersion:         t.maxV,
		InsecureSkipVerify: true, // verified in VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if t.roots == nil {
				return nil // no validation_context: Envoy accepts any certificate
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the upstream sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: t.roots, Intermediates: inter}); err != nil {
				return fmt.Errorf("CERTIFICATE_VERIFY_FAILED: %w", err)
			}
			if len(t.sans) == 0 || sanMatches(leaf, t.sans) {
				return nil
			}
			return fmt.Errorf("CERTIFICATE_VERIFY_FAILED: no subject alternative name of the upstream certificate matches %v", t.sans)
		},
	}
}

// sanMatches follows DefaultCertValidator::matchSubjectAltName: any matcher matching
// any SAN of its type. A DNS SAN with a leading wildcard label covers one label
// (Utility::dnsNameMatch).
func sanMatches(c *x509.Certificate, ms []sanMatcher) bool {
	for _, m := range ms {
		if m.ip {
			for _, ip := range c.IPAddresses {
				if ip.Equal(net.ParseIP(m.exact)) {
					return true
				}
			}
			continue
		}
		for _, dns := range c.DNSNames {
			if dnsNameMatch(m.exact, strings.ToLower(dns)) {
				return true
			}
		}
	}
	return false
}

func dnsNameMatch(name, san string) bool {
	if name == san {
		return true
	}
	if rest, ok := strings.CutPrefix(san, "*."); ok {
		if i := strings.IndexByte(name, '.'); i > 0 && name[i+1:] == rest {
			return true
		}
	}
	return false
}

func (m sanMatcher) String() string {
	if m.ip {
		return "IP:" + m.exact
	}
	return "DNS:" + m.exact
}
