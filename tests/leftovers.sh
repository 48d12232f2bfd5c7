#!/usr/bin/env bash
# leftovers.sh snapshot FILE | check FILE — what the test suite creates it must remove, also when
# a test fails: namespaces, links in the root namespace, BPF pins, processes (dockerd and its
# containerd too; the Kubernetes lab's control plane, kubelets and kube-proxies), the cgroups of
# the lab's containers and pods. `snapshot` records what exists before the
# suite (other tools' namespaces are not ours to judge); `check` fails on anything new.
set -euo pipefail
state() {
	ip netns list 2>/dev/null | awk '{print "netns " $1}'
	ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}' | sed 's/@.*//'
	find /sys/fs/bpf -maxdepth 2 -name '*margay*' 2>/dev/null | sed 's/^/pin /'
	pgrep -a -f 'margay-agent|margay-docker|margayctl lab|bird -f|dockerd|containerd|kube-apiserver|kube-controller|kube-scheduler|kubelet|kube-proxy' 2>/dev/null | grep -v -e leftovers.sh -e pgrep | awk '{print "process " $2}' || true
	# The containers' cgroups of the lab's dockerds and kubelets (<prefix>margay-lab-<host>) and DockerHost tests' (mgyd…).
	# The binaries test processes build (tests/cluster.Binaries; cluster.Main removes them).
	find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'margay-bin-*' 2>/dev/null | sed 's/^/file /'
	find /sys/fs/cgroup -maxdepth 2 \( -name '*margay-lab-*' -o -name 'mgyd*' \) 2>/dev/null | sed 's/^/cgroup /'
}
case "${1:-}" in
snapshot) state | sort >"$2" ;;
check)
	new=$(comm -13 "$2" <(state | sort))
	if [ -n "$new" ]; then
		echo "leftovers: the test suite left these behind:" >&2
		echo "$new" >&2
		exit 1
	fi
	echo "leftovers: none"
	;;
*) echo "usage: $0 snapshot FILE | check FILE" >&2; exit 2 ;;
esac
