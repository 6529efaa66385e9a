// Package chartmesh tests the Helm chart's service-mesh modes
// (deploy/helm/kubegate/templates/mesh, mesh.md): the Envoy fragments the chart
// embeds are kubegate's builders' output and pass `kubegate envoy validate`'s
// rules as rendered by the real helm CLI, the refused modes fail `helm template`
// with their reason, and the rendered objects are accepted by the real CRDs
// (istio.io/api's, pinned in test/tools/crds) on the test API server, the pod
// fragment in a namespace that enforces the restricted Pod Security Standard.
package chartmesh
