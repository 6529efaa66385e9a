# Example operator module deciding on the query: nobody watches configmaps
# through the gateway, and nobody selects pods by node. The gateway hands the
# policy the query exactly as the API server will parse it (README, "Operator
# policy modules").
package kubegate.operator.query

import rego.v1

deny contains "watching configmaps through the gateway is not allowed" if {
	input.request.verb == "watch"
	input.request.resource == "configmaps"
}

deny contains "selecting pods by node through the gateway is not allowed" if {
	input.request.resource == "pods"
	contains(input.request.fieldSelector, "spec.nodeName")
}
