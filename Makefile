# kubegate — the two commands a new machine needs are `make sandbox` and `make test`.
SHELL := /usr/bin/env bash
GO    ?= go
BIN   := bin/kubegate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Traffic time of `make soak` (warm-up included); SOAK_DIR receives its report.
DURATION ?= 3m
SOAK_DIR ?= soak-report

# Fuzz time per target inside `make test` (kept short); `make fuzz FUZZTIME=5m` for longer.
FUZZTIME ?= 10s

.PHONY: all build test vet lint unit fuzz bench bench-realsize tools sandbox soak clean

all: build

build: ## Build bin/kubegate
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/kubegate

tools: ## Build (or reuse from .cache/tools) kube-apiserver, kube-controller-manager, etcd and kwok for the test bed
	./test/tools/build.sh

vet:
	$(GO) vet ./...

lint: ## gofmt, go mod tidy (kubegate and test/tools/*) and staticcheck (pinned in test/tools/staticcheck, cached in .cache/tools)
	./test/lint.sh

unit:
	$(GO) test -count=1 ./...

fuzz: ## Run every fuzz target for FUZZTIME each (go test -fuzz takes one target at a time)
	./test/fuzz.sh $(FUZZTIME)

test: tools vet lint unit fuzz ## Everything CI runs: build the test bed, vet, lint, all tests, a short fuzz run

bench-realsize: ## The real-size benchmarks: authz and extproc processes against no-op floor processes (test/perf), the cold decision, the heap per cached identity
	$(GO) test -run '^$$' -bench '(Check|ExtProc)' -benchtime=3000x ./test/perf/
	$(GO) test -run '^$$' -bench 'Lifecycle' -benchtime=1x ./test/perf/
	$(GO) test -run '^$$' -bench 'Decide/config=500\+500' ./policy/
	$(GO) test -run '^$$' -bench 'IdentityMemoryRealSize' -benchtime=2x ./extauthz/

bench: ## Benchmarks (figures reported as ratios against a floor measured in the same run)
	$(GO) test -run '^$$' -bench . -benchmem ./...

soak: tools build ## Soak and fault-injection run on the real test bed for DURATION (default 3m); report in SOAK_DIR (text, SVG plot, records.csv)
	$(GO) run ./test/soak/cmd/soak -kubegate $(BIN) -duration $(DURATION) -dir $(SOAK_DIR)

sandbox: tools build ## A real local stack: etcd, kube-apiserver, kubegate services and a data plane, with a demo directory
	$(GO) build -o bin/sandbox ./test/sandbox
	./bin/sandbox --kubegate $(BIN)

clean:
	rm -rf bin
