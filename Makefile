# Margay: make help lists the targets. Everything runs as root on Debian; `deps` installs what a
# fresh machine lacks, so `make lab` and `make test` work from a clean checkout.

SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(PATH):/usr/local/go/bin

GO ?= go
# clang is pinned: the generated BPF objects are committed and CI checks they regenerate equal.
CLANG ?= clang-19
STRIP ?= llvm-strip-19
BPF_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu
export BPF2GO_CC := $(CLANG)
export BPF2GO_STRIP := $(STRIP)
export BPF2GO_CFLAGS := $(BPF_CFLAGS)

# Debian packages the build, the tests and the lab need (prometheus: tests/observability runs it on a
# port of its own; the Debian service is not needed; iperf3, ethtool and linux-perf: the benchmarks;
# docker.io and busybox-static: a dockerd per lab host and the containers' image). No package's
# service is started: a policy-rc.d that refuses (Debian's mechanism, which container images ship)
# is put in place for the install when the machine has none, so that no system dockerd makes a
# docker0 bridge and firewall rules in the machine's own namespace.
APT_PACKAGES := clang-19 llvm-19 libbpf-dev linux-libc-dev bpftool iproute2 iptables iputils-ping bird2 prometheus \
	iperf3 ethtool linux-perf docker.io busybox-static
BINARIES := margay-agent margay-cni margay-cni-direct margay-docker margayctl
TEST_TIMEOUT ?= 20m
FUZZTIME ?=

.PHONY: help deps generate build test fuzz soak lint format bench bench-quick bench-docker lab clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install missing Debian packages (clang-19, llvm-19, libbpf-dev, bpftool, iproute2, …)
	@command -v $(GO) >/dev/null || { echo "deps: Go 1.26 is required (/usr/local/go/bin/go)"; exit 1; }
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		rcd=""; if [ ! -e /usr/sbin/policy-rc.d ]; then rcd=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >$$rcd; chmod 755 $$rcd; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		st=$$?; [ -z "$$rcd" ] || rm -f $$rcd; [ $$st -eq 0 ]; \
	fi
	@# Name Margay's route protocol, so that ip route prints "proto margay" as Calico's shows "proto bird".
	@if [ -d /etc/iproute2 ] && ! grep -qs '^77[[:space:]]' /etc/iproute2/rt_protos.d/*.conf; then \
		mkdir -p /etc/iproute2/rt_protos.d && echo "77	margay" > /etc/iproute2/rt_protos.d/margay.conf; \
	fi

generate: deps ## Compile the C programs with the pinned clang and regenerate the Go bindings
	$(GO) generate ./...

build: ## Build bin/margay-agent, bin/margay-cni, bin/margay-cni-direct, bin/margay-docker and bin/margayctl
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ $(addprefix ./cmd/,$(BINARIES))

test: deps ## Run every test (privileged: namespaces, BPF) and a short fuzz run of each target
	$(GO) vet ./...
	@tests/leftovers.sh snapshot /tmp/margay-before-test.txt
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	@tests/leftovers.sh check /tmp/margay-before-test.txt
	$(MAKE) --no-print-directory fuzz

# Fuzz budgets are execution counts (about 15 s each on two loaded cores), not durations: with a
# duration, Go 1.26's fuzz coordinator can fail a target with a bare "context deadline exceeded"
# when the deadline races a worker's last run (golang/go#75804, fixed in Go 1.27); a count has no
# deadline to race. FUZZTIME=30s (or 1000x) sets one budget for every target instead.
fuzzbudget = $(if $(FUZZTIME),$(FUZZTIME),$(1))
fuzz: ## Fuzz the BPF programs, the datastore decoders, selectors, policies and the CNI config (FUZZTIME overrides the budgets)
	$(GO) test -run '^$$' -fuzz '^FuzzPrograms$$' -fuzztime $(call fuzzbudget,12000x) ./tests/programs/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(call fuzzbudget,60000x) ./control/datastore/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(call fuzzbudget,600000x) ./control/policy/selector/
	$(GO) test -run '^$$' -fuzz '^FuzzPolicy$$' -fuzztime $(call fuzzbudget,140000x) ./control/policy/
	$(GO) test -run '^$$' -fuzz '^FuzzConfig$$' -fuzztime $(call fuzzbudget,30000x) ./control/cni/

SOAK_CYCLES ?= 1000
soak: deps ## Workload add/delete cycles over three hosts under traffic (SOAK_CYCLES, default 1000); checks leaks and agent memory
	@tests/leftovers.sh snapshot /tmp/margay-before-soak.txt
	MARGAY_SOAK_CYCLES=$(SOAK_CYCLES) $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 30m ./tests/cluster/ 2>&1 | \
		grep -v -e ' vm10[0-2]: ' -e 'level=DEBUG'; exit $${PIPESTATUS[0]}
	@tests/leftovers.sh check /tmp/margay-before-soak.txt

lint: ## go vet, gofmt and staticcheck
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...

format: ## gofmt the Go code
	gofmt -w $$(git ls-files '*.go')

bench: deps ## The benchmark suite (writes BENCHMARKS.md and docs/bench/; docker run against Docker's bridge included), then policy against iptables
	GO=$(GO) $(GO) test -run '^$$' -bench Suite -benchtime 1x -count 1 -timeout 60m ./tests/benchsuite/
	$(GO) test -run '^$$' -bench . -count 1 -timeout 30m ./tests/policybench/

bench-docker: deps ## Only `docker run` until reachable, Margay against Docker's bridge (docs/bench/docker-run.json), then BENCHMARKS.md rendered again
	GO=$(GO) $(GO) test -run '^$$' -bench DockerRun -benchtime 1x -count 1 -timeout 40m ./tests/benchsuite/
	BENCH_RENDER=1 $(GO) test -count 1 -run '^TestRenderBenchmarks$$' ./tests/benchsuite/

bench-quick: deps ## One short round of every topology, written to bin/bench-quick/ (a check, not figures)
	BENCH_ROUNDS=1 BENCH_STREAM_SECONDS=1 BENCH_RR_SECONDS=0.5 BENCH_CRR_SECONDS=0.5 BENCH_EXTRAS=0 BENCH_PERF=0 \
	BENCH_OUT=$(CURDIR)/bin/bench-quick/BENCHMARKS.md BENCH_PLOTS=$(CURDIR)/bin/bench-quick \
	GO=$(GO) $(GO) test -run '^$$' -bench Suite -benchtime 1x -count 1 -timeout 20m ./tests/benchsuite/

LAB_FLAGS ?=
lab: deps build ## Run the three-host lab (vm100–vm102, etcd, BGP mesh, workloads) until Ctrl-C
	bin/margayctl lab up $(LAB_FLAGS)

clean: ## Remove build output
	rm -rf bin
