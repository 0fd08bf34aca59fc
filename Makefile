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

.PHONY: help build run test bench bench-peers bench-instr bench-cpu bench-conns pgo fuzz conformance chaos soak deploy experiment clean

help:
	@echo "make build   build $(BIN) ($(VERSION))"
	@echo "make run     start three demo backends and the proxy on http://127.0.0.1:8080/"
	@echo "make test    gofmt check, go vet, go test -race"
	@echo "make bench   benchmarks, COUNT ($(COUNT)) runs each for benchstat, into bench.txt"
	@echo "make bench-peers   throughput beside nginx, HAProxy, Caddy (../shared/bench/peers.sh; root, Debian)"
	@echo "make bench-instr   instructions per request under valgrind, by balancer and with the access log"
	@echo "make bench-conns   memory held by CONNS ($(CONNS)) idle keep-alive client connections"
	@echo "make bench-cpu     CPU time per request, user and kernel, beside the bare Go proxy and HAProxy (after bench-peers)"
	@echo "make pgo     write cmd/affinity/default.pgo, a profile for go build to optimise with"
	@echo "make fuzz    every fuzz target for FUZZTIME ($(FUZZTIME)) each"
	@echo "make conformance   h2spec against the TLS listener: cases passed, and those failed"
	@echo "make chaos   failover of real processes under load: kill -9 and hang a backend"
	@echo "make soak    SOAK ($(SOAK)) of steady load with reloads and backend kills: memory, descriptors, goroutines, p99; fails on growth"
	@echo "make deploy  deploys of real processes under users that come and go: drain, restart, sessions lost"
	@echo "make experiment [PRESET=failover|scale-out|steady|drain|store-down|hang|hot-users|revoke|retry-safety|rolling-deploy|all] [QUICK=1]   report in reports/"
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
	echo "proxy:       http://127.0.0.1:8080/"; echo "status page: http://127.0.0.1:9090/   (Ctrl-C stops the proxy and the backends)"; \
	$(BIN) serve -c examples/quickstart.yaml

# -pgo=off: the tests do not need a profile-guided build (make pgo), which
# recompiles every package.
test:
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -pgo=off ./...

# A fixed count, so that two bench.txt files compare with benchstat.
COUNT ?= 5
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count $(COUNT) ./... > bench.txt
	@cat bench.txt

# The shared peer harness, with affinity in its two project slots: first
# round-robin (project) and cookie-sticky (project-sticky) beside the peers;
# then round-robin plain beside the same config with the admin listener and
# the access log on (project-observed). exec lets the harness's kill reach
# the proxy itself rather than the shell that started it.
PEERS  ?= ../shared/bench/peers.sh
ROUNDS ?= 3
DUR    ?= 5s
SERVE   = exec $(CURDIR)/$(BIN) serve --watch=false -c $(CURDIR)/examples/bench
bench-peers: build
	@echo "== throughput (ROUNDS=$(ROUNDS) DUR=$(DUR)), $$(date -u +%F), $$(nproc) cores, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
	ROUNDS=$(ROUNDS) DUR=$(DUR) ONLY="direct naive-tuned haproxy haproxy-sticky caddy caddy-sticky project project-sticky" \
	PROJECT_CMD="$(SERVE)/peers.yaml --log-level warn" \
	PROJECT_STICKY_CMD="$(SERVE)/peers-sticky.yaml --log-level warn" bash $(PEERS)
	@echo "== observed: admin listener and access log on (project-observed) beside the same proxy without (project)"
	ROUNDS=$(ROUNDS) DUR=$(DUR) ONLY="direct naive-tuned caddy project project-sticky" \
	PROJECT_CMD="$(SERVE)/peers.yaml --log-level warn" \
	PROJECT_STICKY_CMD="$(SERVE)/peers-observed.yaml" bash $(PEERS) | sed 's/^| project-sticky |/| project-observed |/'

# User-space instructions per request under valgrind (Debian's valgrind):
# round-robin, cookie-sticky, with the access log, and a POST with a body,
# beside each other.
# Counts stay within a percent from run to run where throughput on a shared
# machine moves by ten.
bench-instr: build
	$(GO) run ./internal/perf instr -bin $(BIN) -rounds $(ROUNDS)

# CPU time per request, user and kernel, read from /proc: the proxy (round-
# robin, cookie, and with the admin listener and the access log on) beside
# the bare Go proxy and HAProxy, with the peer harness's backends, pinning
# and load, ROUNDS interleaved rounds. CPU_ENV=GOGC=100 adds the round-robin
# proxy with that in its environment.
CPU_ENV ?=
bench-cpu: build
	$(GO) run ./internal/perf cpu -bin $(BIN) -peers $(dir $(PEERS)) -rounds $(ROUNDS) -dur $(DUR) -env '$(CPU_ENV)'

# Resident memory of the proxy holding CONNS idle keep-alive connections:
# right after they are opened, and once they have parked (server.park_after)
# and the runtime has returned what they freed.
CONNS ?= 10000
bench-conns: build
	$(GO) run ./internal/perf idle-conns -bin $(BIN) -conns $(CONNS)

# The CPU profile of the proxy under a representative load (round-robin and
# cookie-sticky, new and returning clients) for PGOTIME, which go build
# then uses for profile-guided optimisation of cmd/affinity. None is
# committed: measured, it saved no instructions per request and made idle
# connections' stacks larger (docs/performance.md).
PGOTIME ?= 20s
pgo: build
	$(GO) run ./internal/perf profile -bin $(BIN) -out cmd/affinity/default.pgo -duration $(PGOTIME)

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

# h2spec, the HTTP/2 conformance suite, at the version tools/h2spec/go.mod
# pins (built once, with the module proxy), against the proxy on loopback
# with TLS over three backends. Prints the cases passed and every failure;
# fails on one that docs/security.md does not explain. The tests run it too
# (internal/perf).
H2SPEC := bin/h2spec
$(H2SPEC): tools/h2spec/go.mod tools/h2spec/go.sum
	$(GO) -C tools/h2spec build -o $(CURDIR)/$(H2SPEC) github.com/summerwind/h2spec/cmd/h2spec

conformance: build $(H2SPEC)
	$(GO) run ./internal/perf h2spec -bin $(BIN) -h2spec $(H2SPEC)

# The failover scenario against real processes: 3 backends, 50 clients with
# cookie jars at 300 req/s for 20 s, b2 killed (then hung) at 5 s and back at
# 12 s. Prints the table; fails when a target is missed. The tests run a
# short form of it.
chaos: build
	CHAOS=full CHAOS_BIN=$(CURDIR)/$(BIN) $(GO) test -run TestChaosFull -count=1 -v -timeout 10m ./internal/chaos/

# The proxy under a steady load for SOAK (10m), on a plain HTTP listener,
# then as long on a TLS one spoken to over HTTP/1.1 and HTTP/2: 200 req/s over
# keep-alive clients with cookies and new connections, a reload every 10 s, a
# backend killed every minute and restarted 10 s later. Prints resident
# memory, descriptors, goroutines and p99 every 10 s; fails on a failed
# request or a figure that grows past its bound after the first fifth. The
# tests run 15 s of each.
SOAK ?= 10m
soak: build
	SOAK=$(SOAK) SOAK_BIN=$(CURDIR)/$(BIN) $(GO) test -run TestSoak -count=1 -v -timeout 3h ./internal/soak/

# Deploys of real processes under 60 users at a time who come and go: a
# backend drained (affinity ctl drain --wait) then killed, beside the same
# backend removed from the config; every backend in turn drained, killed,
# restarted and put back, with the learn and the cookie balancer. Prints the
# table; fails when a drain loses a session or a request. The tests run a
# short form of each.
deploy: build
	DEPLOY=full DEPLOY_BIN=$(CURDIR)/$(BIN) $(GO) test -run TestDeployFull -count=1 -v -timeout 30m ./internal/deploy/

# Sticky vs stateless: balancers x session stores under a scripted fault,
# on real processes; writes report.md, charts, results.json in reports/.
PRESET ?= failover
experiment: build
	$(BIN) experiment run --preset $(PRESET) $(if $(QUICK),--quick)

clean:
	rm -rf bin bench.txt
