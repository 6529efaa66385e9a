//go:build tools

// Package tools pins Helm, whose `helm` CLI test/tools/build.sh builds so the chart
// tests lint and render deploy/helm/kubegate with Helm itself, not an imitation.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
