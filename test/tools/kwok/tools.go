//go:build tools

// Package tools pins KWOK, whose `kwok` controller test/tools/build.sh builds for the
// test bed: it simulates a node and its pods and serves the kubelet API (exec, logs,
// attach, port-forward) so commands that go to a kubelet work against the real API
// server.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
