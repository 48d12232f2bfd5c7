#!/bin/bash
# check.sh: on a VM of the Vagrant setup (Vagrant runs it on vm102 at the end of `vagrant up`; run
# it on any: vagrant ssh vm100 -c 'sudo /vagrant/vagrant/check.sh'), wait for the three
# workloads, print this host's BGP sessions, routes and BPF routes map, then ping every other
# VM's workload from this VM's. Exits non-zero when a ping fails.
set -euo pipefail

[ -r /etc/profile.d/margay.sh ] && . /etc/profile.d/margay.sh
me=$(hostname -s)
mine=w${me#vm}
nodes="vm100 vm101 vm102"

# workload_ip NODE: the address of NODE's workload, empty while there is none.
workload_ip() {
	margayctl workload list --node "$1" 2>/dev/null | awk -v w="w${1#vm}" '$2 == w { sub("/.*", "", $4); print $4 }'
}

declare -A ips
for node in $nodes; do
	for _ in $(seq 120); do
		ips[$node]=$(workload_ip "$node")
		[ -n "${ips[$node]}" ] && break
		sleep 5
	done
	if [ -z "${ips[$node]}" ]; then
		echo "check: no workload on $node after 10 minutes (systemctl status etcd margay-agent margay-vagrant-workload there)" >&2
		exit 1
	fi
	echo "check: $node has w${node#vm} at ${ips[$node]}"
done

echo "━━ $me: margayctl node status"
margayctl node status || true
echo "━━ $me: ip route"
ip route
echo "━━ $me: margayctl routes (the BPF routes map)"
margayctl routes

failed=0
for node in $nodes; do
	[ "$node" = "$me" ] && continue
	# The BGP sessions come up within seconds of the agents; give the routes a minute.
	ok=0
	for _ in $(seq 30); do
		if ip netns exec "$mine" ping -c 1 -W 2 "${ips[$node]}" >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 2
	done
	if [ "$ok" = 1 ]; then
		ip netns exec "$mine" ping -c 3 -i 0.2 "${ips[$node]}"
		echo "check: $mine on $me reaches w${node#vm} on $node at ${ips[$node]}"
	else
		echo "check: $mine on $me does NOT reach w${node#vm} on $node at ${ips[$node]}" >&2
		failed=1
	fi
done
exit "$failed"
