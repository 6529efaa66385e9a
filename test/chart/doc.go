// Package chart tests the Helm chart in deploy/helm/kubegate: helm lint, helm
// template for the value sets an administrator would use and for invalid ones (each
// refused with its message), every rendered object applied server-side to a real
// kube-apiserver (test/cluster) in a namespace that enforces the restricted Pod
// Security Standard, the agent identity's rights asked of the API server's RBAC,
// and the chart's pod run as local processes — the rendered containers' commands and
// arguments, their volumes materialised from the API server's objects at their mount
// paths, the test data plane standing in for the Envoy container — with kubectl
// going through it. helm itself is the pinned CLI test/tools/build.sh builds
// (Helm locates it).
package chart
