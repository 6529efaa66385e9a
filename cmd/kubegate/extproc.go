package main

import (
	"os"
	"os/signal"
	"syscall"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"kubegate.dev/kubegate/extproc"
)

func newExtProcCommand() *cobra.Command {
	sf := &serviceFlags{}
	var cacheBytes int64
	cmd := &cobra.Command{
		Use:   "extproc",
		Short: "Serve Envoy's ext_proc API: add the impersonation headers ext_authz decided",
		Long: `Serve envoy.service.ext_proc.v3.ExternalProcessor. For each request Envoy sends its
headers and the decision kubegate authz left in the dynamic metadata (namespace
envoy.filters.http.ext_authz); in user mode the processor adds Impersonate-User,
one Impersonate-Group line per group and Impersonate-Extra-* headers, in agent mode
nothing; client Impersonate-* headers are always removed. A request without a valid
decision is denied (403), never passed through. Also serves grpc.health.v1 and,
with --metrics-listen, Prometheus metrics. SIGTERM stops it gracefully.`,
		Example: `  kubegate extproc --listen 127.0.0.1:9002 --metrics-listen 127.0.0.1:9102`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfigFile(cmd, sf.configFile); err != nil {
				return err
			}
			log, err := sf.logger(os.Stderr, "extproc")
			if err != nil {
				return err
			}
			defer sf.closeLog()
			reg := newRegistry()
			srv, err := extproc.NewServer(log, reg, extproc.WithResponseCacheBytes(cacheBytes))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return (&grpcService{
				name: "extproc", flags: sf, log: log, registry: reg,
				register:     func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) },
				options:      srv.ServerOptions(),
				serviceNames: []string{extprocv3.ExternalProcessor_ServiceDesc.ServiceName},
				private:      "kubegate extproc decides whom the API server sees the request as",
			}).run(ctx)
		},
	}
	sf.add(cmd.Flags(), "127.0.0.1:9002")
	cmd.Flags().Int64Var(&cacheBytes, "response-cache-bytes", extproc.DefaultResponseCacheBytes, "memory bound, in bytes, of the answers kept per identity (at least 1 MiB; a real-size identity with 243 groups takes about 26 KB); at the bound the least valuable are evicted and built again on their next request")
	return cmd
}
