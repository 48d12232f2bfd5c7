#!/bin/bash
# workload.sh NODE: add this VM's workload, w<number> (w100 on vm100), as `docker run --net` does
# in the Calico walkthrough: a network namespace that margayctl wires to the host (veth cali…,
# a /32 from the pool, routes, endpoint). margay-vagrant-workload.service runs it until it
# succeeds (etcd needs two of its three members up); running it again changes nothing.
set -euo pipefail

node=$1
w=w${node#vm}
[ -e "/var/run/netns/$w" ] || ip netns add "$w"
if margayctl workload list --node "$node" | awk -v w="$w" '$2 == w { found = 1 } END { exit !found }'; then
	echo "workload $w exists"
	exit 0
fi
margayctl workload add "$w" --netns "/var/run/netns/$w" --node "$node"
