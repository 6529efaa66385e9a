// Package boundedread reads a configuration file whole, refusing one over a size
// bound without reading it: a file too large (a wrong path, a runaway generator)
// costs neither the memory nor the time of reading it, and one within the bound is
// read into one buffer of its size, without the repeated growing and copying of
// io.ReadAll (which, at 4 MB, cost more start-up time than parsing a line).
package boundedread

import (
	"bytes"
	"io"
	"os"
	"strings"
)

// File reads f whole. tooLarge reports a file over max bytes (then data is nil):
// known from its size for a regular file, else from reading at most max+1 bytes,
// so memory stays bounded by max whatever f is (a pipe, a file that grows).
func File(f *os.File, max int64) (data []byte, tooLarge bool, err error) {
	var size int64
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if size = fi.Size(); size > max {
			return nil, true, nil
		}
	}
	// bytes.Buffer.ReadFrom grows only when fewer than bytes.MinRead bytes are free:
	// with that much beyond the size, a file that does not change is read without
	// growing.
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, max+1)); err != nil {
		return nil, false, err
	}
	if int64(buf.Len()) > max {
		return nil, true, nil
	}
	return buf.Bytes(), false, nil
}

// String is File for a parser that works on text: the file is read into the
// string's own buffer (strings.Builder hands it over without a copy), so the
// parser's substrings need no per-value copy of their own. Keeping any of them
// keeps the whole file in memory: a caller that retains values clones them.
func String(f *os.File, max int64) (data string, tooLarge bool, err error) {
	var size int64
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if size = fi.Size(); size > max {
			return "", true, nil
		}
	}
	var b strings.Builder
	// One byte beyond the size: a file that does not change is read without growing.
	b.Grow(int(size) + 1)
	if _, err := io.Copy(&b, io.LimitReader(f, max+1)); err != nil {
		return "", false, err
	}
	if int64(b.Len()) > max {
		return "", true, nil
	}
	return b.String(), false, nil
}
