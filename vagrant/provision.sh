#!/bin/bash
# provision.sh NAME ADDRESS MAC CLUSTER: make one VM of the Vagrant setup a Margay host. Vagrant
# runs it as root with the repository at /vagrant, e.g.
#
#   provision.sh vm100 192.168.26.100 08:00:27:26:01:00 vm100=192.168.26.100,vm101=...,vm102=...
#
# 1. rename the private-network interface (found by MAC) to ens32, now and on every boot;
# 2. install etcd from Debian and make it a member of the three-member cluster of CLUSTER;
# 3. install Margay with deploy/install.sh from /vagrant/bin (make build on the host), or build
#    it here when a Go 1.26 toolchain is at /usr/local/go;
# 4. start margay-agent (BGP mesh, uplink ens32) and the workload of this VM, w<number>, which
#    vagrant/workload.sh adds with margayctl once etcd has its quorum.
#
# Running it again (vagrant provision) is harmless.
set -euo pipefail

name=$1 addr=$2 mac=$3 cluster=$4
repo=/vagrant
uplink=ens32
pool=198.19.0.0/16
export DEBIAN_FRONTEND=noninteractive

log() { echo "provision $name: $*"; }

# --- 1. the uplink is ens32, as on the walkthrough's hosts -----------------------------------------
cur=""
for dev in /sys/class/net/*; do
	if [ "$(cat "$dev/address")" = "$mac" ]; then
		cur=$(basename "$dev")
	fi
done
if [ -z "$cur" ]; then
	echo "provision $name: no interface has MAC $mac" >&2
	exit 1
fi
# On every boot, udev names the interface by its MAC.
mkdir -p /etc/systemd/network
cat >/etc/systemd/network/10-margay-$uplink.link <<LINK
[Match]
MACAddress=$mac

[Link]
Name=$uplink
LINK
if [ "$cur" != "$uplink" ]; then
	log "renaming $cur to $uplink"
	ifdown "$cur" 2>/dev/null || true
	ip link set "$cur" down
	ip link set "$cur" name "$uplink"
	# Vagrant's ifupdown stanza for the private network follows the new name.
	sed -i "s/\b$cur\b/$uplink/g" /etc/network/interfaces
	ifup "$uplink"
fi
ip -4 addr show dev "$uplink" | grep -q "inet $addr/" || ip addr add "$addr/24" dev "$uplink"
ip link set "$uplink" up

# --- 2. etcd: one member of three ----------------------------------------------------------------
apt-get update -qq
apt-get install -y -qq --no-install-recommends etcd-server etcd-client iproute2 bpftool iputils-ping >/dev/null

initial=""
endpoints=""
for member in ${cluster//,/ }; do
	initial+="${initial:+,}${member%%=*}=http://${member#*=}:2380"
	endpoints+="${endpoints:+,}http://${member#*=}:2379"
done
cat >/etc/default/etcd <<ETCD
# Written by vagrant/provision.sh: member $name of the Margay Vagrant cluster.
ETCD_NAME=$name
ETCD_DATA_DIR=/var/lib/etcd/margay
ETCD_LISTEN_PEER_URLS=http://$addr:2380
ETCD_LISTEN_CLIENT_URLS=http://$addr:2379,http://127.0.0.1:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$addr:2380
ETCD_ADVERTISE_CLIENT_URLS=http://$addr:2379
ETCD_INITIAL_CLUSTER=$initial
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=margay-vagrant
ETCD
# The first members wait for the others to make a quorum: do not let systemd give up meanwhile,
# and do not let provisioning wait for it.
mkdir -p /etc/systemd/system/etcd.service.d
cat >/etc/systemd/system/etcd.service.d/margay.conf <<'DROPIN'
[Service]
TimeoutStartSec=0
Restart=always
RestartSec=5
DROPIN
systemctl daemon-reload
systemctl enable etcd
systemctl restart --no-block etcd

# --- 3. Margay ------------------------------------------------------------------------------------
bin=$repo/bin
if [ ! -x "$bin/margay-agent" ]; then
	if [ -x /usr/local/go/bin/go ]; then
		log "building Margay with /usr/local/go"
		bin=/tmp/margay-bin
		(cd "$repo" && CGO_ENABLED=0 /usr/local/go/bin/go build -trimpath -o "$bin/" ./cmd/margay-agent ./cmd/margay-cni ./cmd/margay-cni-direct ./cmd/margayctl)
	else
		echo "provision $name: no $repo/bin/margay-agent: run make build on the host (GOOS=linux GOARCH=amd64), then vagrant provision" >&2
		exit 1
	fi
fi
"$repo/deploy/install.sh" --bin "$bin" --no-start

# Name Margay's route protocol, so that ip route says "proto margay".
mkdir -p /etc/iproute2/rt_protos.d
echo "77	margay" >/etc/iproute2/rt_protos.d/margay.conf

cat >/etc/margay/datastore.yaml <<DS
# Written by vagrant/provision.sh: the three etcd members.
endpoints:
$(for ep in ${endpoints//,/ }; do echo "  - $ep"; done)
DS
cat >/etc/margay/margay.env <<ENV
# Written by vagrant/provision.sh.
MARGAY_AGENT_ARGS="--node-name $name --uplink $uplink --bgp --default-pool $pool"
ENV
# margayctl reads the same etcd from the environment, in every login shell.
echo "export MARGAY_ETCD_ENDPOINTS=$endpoints" >/etc/profile.d/margay.sh

# The agent restarts (Restart=always) until etcd answers.
systemctl restart margay-agent.service

# --- 4. the workload, once etcd and the agent are there -------------------------------------------
install -m 0755 "$repo/vagrant/workload.sh" /usr/local/sbin/margay-vagrant-workload
cat >/etc/systemd/system/margay-vagrant-workload.service <<UNIT
[Unit]
Description=Margay Vagrant setup: workload w${name#vm} of $name
After=margay-agent.service
Wants=margay-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=MARGAY_ETCD_ENDPOINTS=$endpoints
ExecStart=/usr/local/sbin/margay-vagrant-workload $name
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable margay-vagrant-workload.service
systemctl restart --no-block margay-vagrant-workload.service
log "done: etcd, margay-agent and the workload w${name#vm} start as soon as etcd has its quorum"
