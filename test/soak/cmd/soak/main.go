// Command soak runs kubegate's soak and fault-injection harness (test/soak) on the
// real test bed and writes its report: `make soak DURATION=10m`. It exits 1 when a
// check failed, 2 when the run could not be carried out, and stops every process it
// started on Ctrl-C (SIGINT) or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"kubegate.dev/kubegate/test/soak"
	"kubegate.dev/kubegate/test/stack"
)

func main() {
	duration := flag.Duration("duration", 3*time.Minute, "traffic time, warm-up included (the run also waits out the last fault window)")
	dir := flag.String("dir", "soak-report", "directory for report.txt, report.svg, records.csv, samples.csv (and the logs with -keep-logs or after a failure)")
	users := flag.Int("users", 0, "member users in the traffic (0: the long run's default)")
	workers := flag.Int("workers", 0, "concurrent short-request workers (0: the long run's default)")
	faults := flag.String("faults", "", "comma-separated faults, in order (default all: "+strings.Join(soak.Faults, ",")+")")
	gitlab := flag.Bool("gitlab", true, "end with the GitLab phase: authz switched to the GitLab double, which then stalls, answers 502 and 429, and goes away")
	keepLogs := flag.Bool("keep-logs", false, "keep every process's log and the audit log in -dir/logs")
	binary := flag.String("kubegate", "", "the kubegate binary to run (default: built from this checkout)")
	short := flag.Bool("short", false, "the CI run's configuration (about a minute, few users); -duration still applies if given")
	flag.Parse()

	cfg := soak.Long(*duration)
	if *short {
		d := cfg.Duration
		cfg = soak.Short()
		if isSet("duration") {
			cfg.Duration = d
		}
	}
	if *users > 0 {
		cfg.Users = *users
	}
	if *workers > 0 {
		cfg.Workers = *workers
	}
	if *faults != "" {
		cfg.Faults = strings.Split(*faults, ",")
	}
	cfg.Dir, cfg.KeepLogs, cfg.Binary, cfg.GitLab = *dir, *keepLogs, *binary, *gitlab
	cfg.Logf = func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "[soak %s] "+f+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	cfg.Started = func(*stack.Stack) { fmt.Fprintln(os.Stderr, "[soak] traffic starting") }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := soak.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	fmt.Print(rep.Text())
	if !rep.Passed() {
		os.Exit(1)
	}
}

func isSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
