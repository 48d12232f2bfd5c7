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
# docker.io and busybox-static: a dockerd per lab host and the containers' image; containerd and
# containernetworking-plugins (its loopback plugin): the Kubernetes lab's nodes; debootstrap, gcc
# and libc6-dev: the base images of its node image and the static pause). No package's service
# is started: a policy-rc.d that refuses (Debian's mechanism, which container images ship)
# is put in place for the install when the machine has none, so that no system dockerd makes a
# docker0 bridge and firewall rules in the machine's own namespace.
APT_PACKAGES := clang-19 llvm-19 libbpf-dev linux-libc-dev bpftool iproute2 iptables iputils-ping bird2 prometheus \
	iperf3 ethtool linux-perf docker.io busybox-static containerd containernetworking-plugins debootstrap gcc libc6-dev
BINARIES := margay-agent margay-cni margay-cni-direct margay-docker margayctl
TEST_TIMEOUT ?= 20m
FUZZTIME ?=

# Kubernetes for tests/k8s and lab up --k8s, built from the Go module proxy (tests/k8s/kubernetes, a
# module of its own) once, into a cache that outlives checkouts: rebuilt only when that module changes.
K8S_VERSION := v1.37.2
K8S_BIN_DIR ?= /var/cache/margay/kubernetes/$(K8S_VERSION)/bin
K8S_COMMANDS := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
K8S_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) -X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean
K8S_TEST_TIMEOUT ?= 45m

.PHONY: help deps generate build test test-k8s k8s-bins fuzz soak lint format bench bench-quick bench-docker lab clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

k8s-bins: ## Build Kubernetes v1.37.2 (apiserver, controller manager, scheduler, kubelet, kube-proxy, kubectl) into K8S_BIN_DIR, once
	@stamp=$$(cat tests/k8s/kubernetes/go.mod tests/k8s/kubernetes/go.sum | sha256sum | cut -c1-16); \
	if [ "$$(cat $(K8S_BIN_DIR)/.stamp 2>/dev/null)" = "$$stamp" ]; then echo "k8s-bins: $(K8S_BIN_DIR) is up to date"; exit 0; fi; \
	echo "k8s-bins: building Kubernetes $(K8S_VERSION) into $(K8S_BIN_DIR)"; \
	rm -rf $(K8S_BIN_DIR).new && mkdir -p $(K8S_BIN_DIR).new && \
	(cd tests/k8s/kubernetes && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(K8S_BIN_DIR).new/ \
		$(addprefix k8s.io/kubernetes/cmd/,$(K8S_COMMANDS))) && \
	echo $$stamp >$(K8S_BIN_DIR).new/.stamp && rm -rf $(K8S_BIN_DIR) && mv $(K8S_BIN_DIR).new $(K8S_BIN_DIR)

test-k8s: deps build k8s-bins ## Kubernetes for real (tests/k8s and the tests against a real apiserver): a cluster on the lab hosts, Margay's DaemonSet, CNI, NetworkPolicy, Services
	@tests/leftovers.sh snapshot /tmp/margay-before-k8s.txt
	MARGAY_K8S_BIN_DIR=$(K8S_BIN_DIR) $(GO) test -tags k8s -p 1 -count=1 -timeout $(K8S_TEST_TIMEOUT) \
		./control/k8s/... ./control/cni/ ./cmd/margay-agent/ ./control/lab/kube/ ./tests/k8s/
	@tests/leftovers.sh check /tmp/margay-before-k8s.txt

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

lint: ## go vet, gofmt and staticcheck (also of the files only make test-k8s builds: -tags k8s)
	$(GO) vet ./...
	$(GO) vet -tags k8s ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags k8s ./...

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
lab: deps build $(if $(findstring --k8s,$(LAB_FLAGS)),k8s-bins) ## Run the three-host lab (vm100–vm102, etcd, BGP mesh, workloads) until Ctrl-C; LAB_FLAGS=--k8s: on Kubernetes
	bin/margayctl lab up $(LAB_FLAGS)

clean: ## Remove build output
	rm -rf bin
