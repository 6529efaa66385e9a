package main

import (
	"fmt"

	"kubegate.dev/kubegate/envoy"
)

// allowNonLoopbackUsage is the help of every service's --allow-non-loopback.
const allowNonLoopbackUsage = "allow a --listen address other clients could reach (not loopback or a unix socket); only when nothing but Envoy can reach it, e.g. a network only Envoy shares"

// checkPrivateListen refuses a listen address anyone but Envoy could reach, unless
// the operator allowed it: kubegate xds hands out the agent token, kubegate authz
// sees every user's credential and answers token probes without Envoy's rate
// limit, kubegate extproc decides the impersonation (issue 10 item 8).
func checkPrivateListen(a envoy.Addr, allow bool, why string) error {
	if allow || a.IsLocal() {
		return nil
	}
	return fmt.Errorf("--listen %s: %s, and this address is not loopback or a unix socket; listen on 127.0.0.1:PORT or unix:///PATH (a volume shared with Envoy only), or pass --allow-non-loopback if nothing but Envoy can reach it", a, why)
}
