# Example operator module: nobody reads secrets in kube-system through the gateway.
package kubegate.operator.secrets

import rego.v1

deny contains "reading secrets in kube-system through the gateway is not allowed" if {
	input.request.resource == "secrets"
	input.request.namespace == "kube-system"
}
