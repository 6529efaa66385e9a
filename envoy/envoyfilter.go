package envoy

import (
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// RuleMeshPatches is checked only in an Istio EnvoyFilter (ValidateEnvoyFilter).
const RuleMeshPatches = "mesh-patches"

// IsEnvoyFilter reports whether data is a Kubernetes object of kind EnvoyFilter
// (what `kubectl get envoyfilter NAME -o yaml` prints) rather than a bootstrap.
func IsEnvoyFilter(data []byte) bool {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	return yaml.Unmarshal(data, &head) == nil && head.Kind == "EnvoyFilter" && strings.HasPrefix(head.APIVersion, "networking.istio.io/")
}

type envoyFilter struct {
	Kind string `json:"kind"`
	Spec struct {
		ConfigPatches []struct {
			ApplyTo string         `json:"applyTo"`
			Match   map[string]any `json:"match"`
			Patch   struct {
				Operation string          `json:"operation"`
				Value     json.RawMessage `json:"value"`
			} `json:"patch"`
		} `json:"configPatches"`
	} `json:"spec"`
}

// ValidateEnvoyFilter checks an Istio EnvoyFilter that hands kubegate's mesh
// resources to a gateway proxy (the chart's mesh.mode=istio). Its patches must
// only ADD one listener and clusters in the GATEWAY context: istiod appends those
// values unchanged (pilot/pkg/networking/core/envoyfilter/listener_patch.go,
// cluster_patch.go), so they can be checked like a bootstrap's static resources,
// while a MERGE, REMOVE or INSERT would change configuration that is not in the
// file. The listener and clusters then go through Validate; findings name the
// patch they are in ($.spec.configPatches[N].patch.value...).
func ValidateEnvoyFilter(data []byte) []Finding {
	var fs findings
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		fs.add("$", RuleSyntax, "not valid YAML or JSON: %v", err)
		return fs
	}
	var ef envoyFilter
	if err := json.Unmarshal(j, &ef); err != nil {
		fs.add("$", RuleSchema, "not an EnvoyFilter: %v", err)
		return fs
	}
	if ef.Kind != "EnvoyFilter" {
		fs.add("$.kind", RuleSchema, "%q: expected an Istio EnvoyFilter (networking.istio.io)", ef.Kind)
		return fs
	}
	var listeners, clusters []json.RawMessage
	var listenerAt, clusterAt []string
	for i, p := range ef.Spec.ConfigPatches {
		pp := fmt.Sprintf("$.spec.configPatches[%d]", i)
		if p.Patch.Operation != "ADD" || p.Match["context"] != "GATEWAY" || len(p.Match) != 1 {
			fs.add(pp, RuleMeshPatches, "%s of %s with match %v: only ADD with match {context: GATEWAY} hands Envoy exactly what this file holds; any other patch changes configuration kubegate cannot see", p.Patch.Operation, p.ApplyTo, p.Match)
			continue
		}
		switch p.ApplyTo {
		case "LISTENER":
			listeners, listenerAt = append(listeners, p.Patch.Value), append(listenerAt, pp+".patch.value")
		case "CLUSTER":
			clusters, clusterAt = append(clusters, p.Patch.Value), append(clusterAt, pp+".patch.value")
		default:
			fs.add(pp+".applyTo", RuleMeshPatches, "%s: only LISTENER and CLUSTER patches are kubegate's", p.ApplyTo)
		}
	}
	if len(listeners) != 1 {
		fs.add("$.spec.configPatches", RuleMeshPatches, "%d listeners added; want exactly kubegate's one", len(listeners))
	}
	if len(fs) > 0 {
		return sortFindings(fs)
	}
	b, err := json.Marshal(map[string]any{"static_resources": map[string]any{"listeners": listeners, "clusters": clusters}})
	if err != nil {
		fs.add("$", RuleSyntax, "re-encoding the patches: %v", err)
		return fs
	}
	out := Validate(b)
	for i := range out {
		out[i].Path = patchPath(out[i].Path, "$.static_resources.listeners", listenerAt)
		out[i].Path = patchPath(out[i].Path, "$.static_resources.clusters", clusterAt)
	}
	return out
}

// patchPath rewrites prefix[k]... to at[k]... .
func patchPath(p, prefix string, at []string) string {
	for k, a := range at {
		pre := fmt.Sprintf("%s[%d]", prefix, k)
		if p == pre || strings.HasPrefix(p, pre+".") || strings.HasPrefix(p, pre+"[") {
			return a + strings.TrimPrefix(p, pre)
		}
	}
	return p
}
