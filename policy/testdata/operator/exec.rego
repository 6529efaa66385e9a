# Example operator module: members of group-2 may not exec into pods.
package kubegate.operator.exec

import rego.v1

deny contains "exec is not allowed for members of group-2" if {
	input.request.subresource == "exec"
	some m in input.memberships
	m.kind == "group"
	m.path == "group-2"
}

deny contains "no exec into kube-system" if {
	input.request.subresource == "exec"
	input.request.namespace == "kube-system"
}
