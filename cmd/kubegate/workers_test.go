package main

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestStreamWorkers(t *testing.T) {
	tests := []struct {
		flag    int
		want    int
		wantErr string
	}{
		{0, workersPerCPU * runtime.GOMAXPROCS(0), ""},
		{1, 1, ""},
		{500, 500, ""},
		{-1, 0, "--stream-workers -1: give 0"},
	}
	for _, tt := range tests {
		got, err := (&serviceFlags{streamWorkers: tt.flag}).workers()
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("--stream-workers %d: error %v, want %q", tt.flag, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("--stream-workers %d: %d workers (%v), want %d", tt.flag, got, err, tt.want)
		}
	}
}

// TestStreamWorkersRefusedFirst: a bad --stream-workers stops each service before
// it reads anything (authz names it even though its directory does not exist).
func TestStreamWorkersRefusedFirst(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, args := range [][]string{
		{"extproc", "--stream-workers", "-3"},
		{"authz", "--stream-workers", "-3", "--agent-id", "1", "--config-project-id", "1", "--agent-config", sandboxConfig, "--directory", missing},
	} {
		t.Run(args[0], func(t *testing.T) {
			out, errOut, code := run(t, "", args...)
			if code != 1 || out != "" || !strings.Contains(errOut, "--stream-workers -3") || strings.Contains(errOut, "missing.yaml") {
				t.Fatalf("code %d, stdout %q, stderr:\n%s\nwant 1, nothing, and only the --stream-workers refusal", code, out, errOut)
			}
		})
	}
}
