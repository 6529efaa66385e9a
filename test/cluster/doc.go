// Package cluster runs a real Kubernetes control plane (etcd, kube-apiserver and,
// optionally, kube-controller-manager) on loopback, for kubegate's end-to-end tests,
// benchmarks and the local sandbox.
//
// The API server authenticates two static identities from a token file: an
// administrator (group system:masters) and kubegate's agent identity (user
// "kubegate-agent", two valid tokens so token rotation can be tested). The agent has no
// rights of its own except those of the shipped ClusterRole
// deploy/kubernetes/impersonation-clusterrole.yaml, which the cluster applies at start,
// so the manifest operators install is the one the tests exercise.
//
// Binaries are built by test/tools/build.sh (`make tools`); this package never builds
// them. Every child runs in its own process group, dies with its parent (Linux
// Pdeathsig), and is stopped by PID on Stop, on a failed Start, and on SIGINT/SIGTERM.
// On such a signal the package stops every live cluster and then sends the signal to
// the program again: a program without a handler of its own ends as usual, one with
// a handler (signal.NotifyContext kept registered) receives it and shuts down its own
// way; Stop is safe to call concurrently from there.
//
// Use Start and Stop from programs, StartForTest from tests and benchmarks.
// The facts it relies on are in the project spec, testbed.md.
package cluster
