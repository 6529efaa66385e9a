//go:build tools

// Package tools pins staticcheck, which test/tools/lint.sh builds for `make lint`.
package tools

import _ "honnef.co/go/tools/cmd/staticcheck"
