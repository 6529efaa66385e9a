//go:build tools

// Package tools pins the modules whose shipped CRDs test/chartmesh installs into the
// test API server: istio.io/api (kubernetes/customresourcedefinitions.gen.yaml, the
// EnvoyFilter the chart's mesh.mode=istio renders).
package tools

import _ "istio.io/api/networking/v1alpha3"
