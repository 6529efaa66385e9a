//go:build tools

// Package tools pins the commands the test bed builds; `go build` of the listed
// packages happens in test/tools/build.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
