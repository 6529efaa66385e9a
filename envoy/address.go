package envoy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Addr is a service address as kubegate's flags spell it: host:port (an IP or a
// DNS name) or unix:///absolute/path for a Unix domain socket.
type Addr struct {
	Host string // IP or DNS name; empty for a socket
	Port uint32
	Path string // Unix socket path; empty for TCP
}

// ParseAddr parses "host:port" or "unix:///path".
func ParseAddr(s string) (Addr, error) {
	if s == "" {
		return Addr{}, fmt.Errorf("address is empty: give host:port or unix:///path")
	}
	if rest, ok := strings.CutPrefix(s, "unix://"); ok {
		if !strings.HasPrefix(rest, "/") {
			return Addr{}, fmt.Errorf("address %q: a unix socket needs an absolute path, as in unix:///run/kubegate/authz.sock", s)
		}
		return Addr{Path: rest}, nil
	}
	if strings.Contains(s, "://") {
		return Addr{}, fmt.Errorf("address %q: only host:port or unix:///path are supported", s)
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q is not host:port: %v", s, err)
	}
	if host == "" {
		return Addr{}, fmt.Errorf("address %q has no host: write 0.0.0.0:%s to listen everywhere or 127.0.0.1:%s for loopback", s, portStr, portStr)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return Addr{}, fmt.Errorf("address %q: port %q is not a number from 1 to 65535", s, portStr)
	}
	return Addr{Host: host, Port: uint32(port)}, nil
}

// String is the flag form of the address.
func (a Addr) String() string {
	if a.Path != "" {
		return "unix://" + a.Path
	}
	return net.JoinHostPort(a.Host, strconv.FormatUint(uint64(a.Port), 10))
}

// IsIP reports whether the host is an IP literal (so no DNS is needed and no SNI
// can be sent: RFC 6066 §3 forbids IP literals in server_name).
func (a Addr) IsIP() bool {
	_, err := netip.ParseAddr(a.Host)
	return a.Path == "" && err == nil
}

// Envoy returns the address as Envoy's core.Address: a socket address or a pipe.
func (a Addr) Envoy() *corev3.Address {
	if a.Path != "" {
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: a.Path}}}
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       a.Host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: a.Port},
	}}}
}

// discoveryType is STATIC for IPs and sockets and STRICT_DNS for names, so that a
// docker-compose service name or a Kubernetes Service name resolves (and re-resolves).
func (a Addr) discoveryType() clusterv3.Cluster_DiscoveryType {
	if a.Path != "" || a.IsIP() {
		return clusterv3.Cluster_STATIC
	}
	return clusterv3.Cluster_STRICT_DNS
}
