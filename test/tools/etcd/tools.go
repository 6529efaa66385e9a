//go:build tools

// Package tools pins etcd, which test/tools/build.sh builds for the test bed.
package tools

import _ "go.etcd.io/etcd/server/v3"
