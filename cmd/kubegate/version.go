package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"kubegate.dev/kubegate/envoy"
)

// version is set at link time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the kubegate version, its Go version, the Envoy API it was built against and the Envoy it needs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			envoyAPI := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, m := range bi.Deps {
					if m.Path == "github.com/envoyproxy/go-control-plane/envoy" {
						envoyAPI = m.Version
					}
				}
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "kubegate %s (%s, envoy api %s, needs envoy >= %s, tested as envoy %s)\n",
				version, runtime.Version(), envoyAPI, envoy.MinEnvoyVersion, envoy.ReferenceEnvoyVersion)
			return err
		},
	}
}
