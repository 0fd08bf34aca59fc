# Development tasks; `make help` lists them. Everything runs from a fresh
# clone with only Go installed (and git, for the version stamp).

GO      ?= go
BIN     := bin/affinity
# The version stamped into the binary: a tag when there is one, else the
# commit, with -dirty for uncommitted changes; "dev" outside a git checkout.
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Each fuzz target runs this long in `make fuzz`.
FUZZTIME ?= 10s

.PHONY: help build run test bench fuzz chaos experiment clean

help:
	@echo "make build   build $(BIN) ($(VERSION))"
	@echo "make run     start three demo backends and the proxy on http://127.0.0.1:8080/"
	@echo "make test    gofmt check, go vet, go test -race"
	@echo "make bench   benchmarks, 5 runs each, into bench.txt"
	@echo "make fuzz    every fuzz target for FUZZTIME ($(FUZZTIME)) each"
	@echo "make chaos   failover of real processes under load: kill -9 and hang a backend"
	@echo "make experiment [PRESET=failover|scale-out|steady] [QUICK=1]   report in reports/"
	@echo "make clean   remove build and benchmark outputs"

# Phony: go's build cache, not make, decides what is out of date.
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/affinity

# The backends run in the background of the recipe's shell; the EXIT trap
# stops them however the proxy ends (Ctrl-C, SIGTERM, or an error), and the
# INT/TERM traps turn a signal into an exit so that the EXIT trap runs.
run: build
	@set -e; pids=; \
	trap 'kill $$pids 2>/dev/null; wait $$pids 2>/dev/null' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	for i in 1 2 3; do \
		$(BIN) backend --listen 127.0.0.1:900$$i --name web-$$i & pids="$$pids $$!"; \
	done; \
	echo "open http://127.0.0.1:8080/  (Ctrl-C stops the proxy and the backends)"; \
	$(BIN) serve -c examples/quickstart.yaml

test:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./... > bench.txt
	@cat bench.txt

# Fuzz targets are found per package, since -fuzz takes one target of one
# package at a time.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		targets=$$($(GO) test -list '^Fuzz' $$pkg); \
		for target in $$(echo "$$targets" | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# The failover scenario against real processes: 3 backends, 50 clients with
# cookie jars at 300 req/s for 20 s, b2 killed (then hung) at 5 s and back at
# 12 s. Prints the table; fails when a target is missed. The tests run a
# short form of it.
chaos: build
	CHAOS=full CHAOS_BIN=$(CURDIR)/$(BIN) $(GO) test -run TestChaosFull -count=1 -v -timeout 10m ./internal/chaos/

# Sticky vs stateless: balancers x session stores under a scripted fault,
# on real processes; writes report.md, charts, results.json in reports/.
PRESET ?= failover
experiment: build
	$(BIN) experiment run --preset $(PRESET) $(if $(QUICK),--quick)

clean:
	rm -rf bin bench.txt
