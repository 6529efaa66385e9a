package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kubegate.dev/kubegate/envoy"
)

// TestXDSDoesNotFeedOnItsOwnLog is issue 10 item 7 as reported: `kubegate xds` with
// its log file in the token's directory, and the token file gone. Reacting to every
// event in that directory, each failed re-read logged a warning, which was the next
// event: tens of thousands of lines a second. Within a second the log must stay a
// handful of lines.
func TestXDSDoesNotFeedOnItsOwnLog(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "xds.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	logger := slog.New(slog.NewJSONHandler(logFile, nil))
	addr, err := envoy.ParseAddr("unix://" + filepath.Join(dir, "xds.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runXDS(ctx, logger, addr, tokenFile, envoy.TokenSecretFor(1), 0) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(t, logPath), "serving SDS") {
		if time.Now().After(deadline) {
			t.Fatal("xds did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	log := readFile(t, logPath)
	warnings := strings.Count(log, "token file not usable")
	lines := strings.Count(log, "\n")
	t.Logf("in 1s after the token vanished: %d log lines, %d warnings", lines, warnings)
	if warnings == 0 {
		t.Fatal("the token's removal was not logged")
	}
	if lines >= 10 {
		t.Fatalf("%d log lines within a second of the token vanishing; xds feeds on its own log:\n%s", lines, log)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
