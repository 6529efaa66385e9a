// Command kubegate gives members of GitLab projects and groups kubectl access to a
// Kubernetes cluster through Envoy. One binary holds every part: the ext_authz and
// ext_proc services Envoy calls, the Envoy configuration renderer and validator, the
// SDS token server, and the user's kubeconfig/get-token commands.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		// cobra has already printed usage errors; RunE errors are printed here once.
		fmt.Fprintln(os.Stderr, "kubegate:", err)
		os.Exit(exitCode(err))
	}
}
