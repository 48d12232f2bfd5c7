#!/bin/sh
# install.sh: install Margay on a host without Kubernetes.
#
#   deploy/install.sh [--bin DIR] [--root DIR] [--no-start] [--no-systemctl]
#
# Installs margay-agent, margay-cni, margay-cni-direct, margay-docker and margayctl from DIR (default
# ./bin, what `make build` writes) into /usr/local/bin, margay-cni, margay-cni-direct and the
# conflist for the container runtime into /opt/cni/bin and /etc/cni/net.d, margay-agent.service and
# margay-docker.service into /etc/systemd/system, and /etc/margay/margay.env,
# /etc/margay/datastore.yaml and /etc/margay/margayctl.cfg from templates when they do not exist yet.
# Then `systemctl daemon-reload` and `systemctl enable --now margay-agent`, and margay-docker too
# when the host has dockerd (/usr/bin/dockerd or /usr/sbin/dockerd below the root).
#
#   --root DIR       install below DIR instead of / (and enable the unit with systemctl --root)
#   --no-start       enable the unit, do not start it
#   --no-systemctl   do not run systemctl at all
set -eu

usage() { # EXIT-CODE
	sed -n '3,16p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit "$1"
}

here=$(cd "$(dirname "$0")" && pwd)
bin=./bin
root=
start=1
systemctl=1
while [ $# -gt 0 ]; do
	case $1 in
	--bin) [ $# -ge 2 ] || usage 2; bin=$2; shift 2 ;;
	--bin=*) bin=${1#--bin=}; shift ;;
	--root) [ $# -ge 2 ] || usage 2; root=$2; shift 2 ;;
	--root=*) root=${1#--root=}; shift ;;
	--no-start) start=0; shift ;;
	--no-systemctl) systemctl=0; shift ;;
	-h | --help) usage 0 ;;
	*) echo "install.sh: unknown argument $1" >&2; usage 2 ;;
	esac
done
root=${root%/}

for b in margay-agent margay-cni margay-cni-direct margay-docker margayctl; do
	if [ ! -x "$bin/$b" ]; then
		echo "install.sh: $bin/$b is missing: run make build, or give --bin DIR" >&2
		exit 1
	fi
done

# put SRC DST MODE: copy SRC to DST atomically, so that a running runtime or agent never sees half
# a file.
put() {
	mkdir -p "$(dirname "$2")"
	tmp="$(dirname "$2")/.$(basename "$2").tmp.$$"
	cp "$1" "$tmp"
	chmod "$3" "$tmp"
	mv -f "$tmp" "$2"
	echo "installed $2"
}

# keep SRC DST MODE: put, unless DST exists (the administrator's settings).
keep() {
	if [ -e "$2" ]; then
		echo "kept $2"
	else
		put "$@"
	fi
}

for b in margay-agent margay-cni margay-cni-direct margay-docker margayctl; do
	put "$bin/$b" "$root/usr/local/bin/$b" 0755
done
# margay-cni runs margay-cni-direct, beside it, when no agent serves the host: that one first.
put "$bin/margay-cni-direct" "$root/opt/cni/bin/margay-cni-direct" 0755
put "$bin/margay-cni" "$root/opt/cni/bin/margay-cni" 0755
put "$here/cni/10-margay.conflist" "$root/etc/cni/net.d/10-margay.conflist" 0644
put "$here/systemd/margay-agent.service" "$root/etc/systemd/system/margay-agent.service" 0644
put "$here/systemd/margay-docker.service" "$root/etc/systemd/system/margay-docker.service" 0644
keep "$here/systemd/margay.env" "$root/etc/margay/margay.env" 0644
keep "$here/systemd/datastore.yaml" "$root/etc/margay/datastore.yaml" 0600
keep "$here/systemd/margayctl.cfg" "$root/etc/margay/margayctl.cfg" 0644

if [ "$systemctl" = 0 ]; then
	exit 0
fi
units=margay-agent.service
if [ -x "$root/usr/bin/dockerd" ] || [ -x "$root/usr/sbin/dockerd" ]; then
	units="$units margay-docker.service"
fi
if [ -n "$root" ]; then
	systemctl --root="$root" enable $units
	exit 0
fi
systemctl daemon-reload
if [ "$start" = 1 ]; then
	systemctl enable --now $units
else
	systemctl enable $units
fi
