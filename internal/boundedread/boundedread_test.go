package boundedread

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte("x"), n), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		path     string
		max      int64
		tooLarge bool
	}{
		{"empty", write("empty", 0), 10, false},
		{"under the bound", write("under", 9), 10, false},
		{"at the bound", write("at", 10), 10, false},
		{"one byte over", write("over", 11), 10, true},
		{"far over", write("far", 1<<20), 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Open(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			data, tooLarge, err := File(f, tt.max)
			want, _ := os.ReadFile(tt.path)
			switch {
			case err != nil:
				t.Fatal(err)
			case tooLarge != tt.tooLarge:
				t.Fatalf("tooLarge = %v, want %v", tooLarge, tt.tooLarge)
			case tooLarge && data != nil:
				t.Fatalf("a file over the bound returned %d bytes", len(data))
			case !tooLarge && !bytes.Equal(data, want):
				t.Fatalf("read %d bytes, want the file's %d", len(data), len(want))
			}
			// String reads the same, as text.
			if _, err := f.Seek(0, 0); err != nil {
				t.Fatal(err)
			}
			text, tooLarge, err := String(f, tt.max)
			switch {
			case err != nil:
				t.Fatal(err)
			case tooLarge != tt.tooLarge:
				t.Fatalf("String: tooLarge = %v, want %v", tooLarge, tt.tooLarge)
			case tooLarge && text != "":
				t.Fatalf("String: a file over the bound returned %d bytes", len(text))
			case !tooLarge && text != string(want):
				t.Fatalf("String: read %d bytes, want the file's %d", len(text), len(want))
			}
		})
	}
}

// TestNotRegular: a pipe has no size to refuse it by; File and String both stop
// reading one byte past the bound.
func TestNotRegular(t *testing.T) {
	readers := map[string]func(*os.File) (n int, tooLarge bool, err error){
		"File": func(f *os.File) (int, bool, error) {
			data, tooLarge, err := File(f, 4096)
			return len(data), tooLarge, err
		},
		"String": func(f *os.File) (int, bool, error) {
			text, tooLarge, err := String(f, 4096)
			return len(text), tooLarge, err
		},
	}
	for name, read := range readers {
		t.Run(name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			go func() {
				defer w.Close()
				for range 100 { // 100 KiB, more than the bound; the writer blocks once nobody reads
					if _, err := w.Write(bytes.Repeat([]byte("y"), 1024)); err != nil {
						return
					}
				}
			}()
			if n, tooLarge, err := read(r); err != nil || !tooLarge || n != 0 {
				t.Fatalf("%s(pipe) = %d bytes, %v, %v; want too large", name, n, tooLarge, err)
			}
		})
	}
}
