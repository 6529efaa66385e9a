package batchlog

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// out records each write it receives.
type out struct {
	mu     sync.Mutex
	writes []string
}

func (o *out) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.writes = append(o.writes, string(p))
	return len(p), nil
}

func (o *out) snapshot() (n int, all string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.writes), strings.Join(o.writes, "")
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLinesAreBatchedAndAllArrive(t *testing.T) {
	o := &out{}
	w := New(o, 50*time.Millisecond)
	const lines = 500
	var wg sync.WaitGroup
	for g := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines / 5 {
				fmt.Fprintf(w, "line %d-%d\n", g, i)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the interval's flush", func() bool { _, all := o.snapshot(); return strings.Count(all, "\n") == lines })
	n, all := o.snapshot()
	if n >= lines/10 {
		t.Errorf("%d lines took %d writes: not batched", lines, n)
	}
	for g := range 5 {
		for i := range lines / 5 {
			if !strings.Contains(all, fmt.Sprintf("line %d-%d\n", g, i)) {
				t.Fatalf("line %d-%d lost", g, i)
			}
		}
	}
}

func TestFlushTriggers(t *testing.T) {
	t.Run("the buffer bound", func(t *testing.T) {
		o := &out{}
		w := New(o, time.Hour)
		line := strings.Repeat("x", 1023) + "\n"
		for range MaxBuffered / len(line) {
			w.Write([]byte(line))
		}
		if n, all := o.snapshot(); n != 1 || len(all) != MaxBuffered {
			t.Fatalf("%d writes of %d bytes, want one of %d", n, len(all), MaxBuffered)
		}
	})
	t.Run("close, then every write at once", func(t *testing.T) {
		o := &out{}
		w := New(o, time.Hour)
		w.Write([]byte("a\n"))
		if n, _ := o.snapshot(); n != 0 {
			t.Fatal("written before the interval")
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("b\n"))
		if _, all := o.snapshot(); all != "a\nb\n" {
			t.Fatalf("got %q", all)
		}
	})
	t.Run("no interval writes at once", func(t *testing.T) {
		o := &out{}
		w := New(o, 0)
		w.Write([]byte("a\n"))
		if _, all := o.snapshot(); all != "a\n" {
			t.Fatalf("got %q", all)
		}
	})
	t.Run("a caller reusing its buffer changes nothing", func(t *testing.T) {
		o := &out{}
		w := New(o, time.Hour)
		p := []byte("first\n")
		w.Write(p)
		copy(p, "XXXXX\n")
		w.Close()
		if _, all := o.snapshot(); all != "first\n" {
			t.Fatalf("got %q", all)
		}
	})
}

// A warning goes out at once, after the info lines logged before it.
func TestWarningsAreNotDelayed(t *testing.T) {
	o := &out{}
	w := New(o, time.Hour)
	log := slog.New(Handler(slog.NewJSONHandler(w, nil), w)).With("service", "authz")
	log.Info("decision", "n", 1)
	log.Info("decision", "n", 2)
	if n, _ := o.snapshot(); n != 0 {
		t.Fatal("info lines written before the interval")
	}
	log.Warn("reload failed")
	_, all := o.snapshot()
	lines := strings.Split(strings.TrimSpace(all), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `"n":1`) || !strings.Contains(lines[2], "reload failed") || !strings.Contains(lines[2], `"service":"authz"`) {
		t.Fatalf("got %q", all)
	}
}
