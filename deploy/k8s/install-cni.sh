#!/bin/sh
# install-cni.sh: what the install-cni init container of the margay-node DaemonSet runs (the image
# has it at /opt/margay/install-cni.sh). It installs margay-cni and Margay's network config on the
# host, every file written beside its target and renamed over it, so that the container runtime
# never reads half a file:
#
#   $CNI_BIN_DIR/margay-cni                   the plugin (host /opt/cni/bin), which forwards
#                                             calls to the agent on this host
#   $CNI_BIN_DIR/margay-cni-direct            the plugin run in its own process, when no agent
#                                             answers
#   $CNI_NET_DIR/$CNI_CONF_NAME               the conflist: $CNI_NETWORK_CONFIG with __NODENAME__
#                                             replaced, else the image's 10-margay.conflist
#   $MARGAY_CONF_DIR/datastore.yaml           how the plugin reaches etcd, from the MARGAY_ETCD_*
#                                             variables the agent reads too (host /etc/margay)
#   $MARGAY_CONF_DIR/tls/etcd-{ca,cert,key}   copies of the TLS files those variables name
#   $CNI_NET_DIR/margay-kubeconfig            when a service account token is mounted at
#                                             $CNI_TOKEN_DIR: the plugin's access to the API server
#                                             (a network config that names it without one fails)
set -eu

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-margay.conflist}
CNI_NETWORK_CONFIG=${CNI_NETWORK_CONFIG:-}
CNI_TOKEN_DIR=${CNI_TOKEN_DIR:-/var/run/secrets/margay-cni}
MARGAY_CONF_DIR=${MARGAY_CONF_DIR:-/host/etc/margay}
MARGAY_BIN_DIR=${MARGAY_BIN_DIR:-/usr/local/bin}
MARGAY_SHARE_DIR=${MARGAY_SHARE_DIR:-/opt/margay}
NODENAME=${NODENAME:-$(hostname)}

log() { echo "install-cni: $*" >&2; }

# put SRC DST MODE: copy SRC to DST atomically (a temporary file in DST's directory, renamed).
put() {
	tmp="$(dirname "$2")/.$(basename "$2").tmp.$$"
	cp "$1" "$tmp"
	chmod "$3" "$tmp"
	mv -f "$tmp" "$2"
	log "installed $2"
}

# write DST MODE: write stdin to DST atomically.
write() {
	tmp="$(dirname "$1")/.$(basename "$1").tmp.$$"
	cat >"$tmp"
	chmod "$2" "$tmp"
	mv -f "$tmp" "$1"
	log "wrote $1"
}

mkdir -p "$CNI_BIN_DIR" "$CNI_NET_DIR" "$MARGAY_CONF_DIR"

# margay-cni runs margay-cni-direct, beside it, when no agent serves the host: that one first.
put "$MARGAY_BIN_DIR/margay-cni-direct" "$CNI_BIN_DIR/margay-cni-direct" 0755
put "$MARGAY_BIN_DIR/margay-cni" "$CNI_BIN_DIR/margay-cni" 0755

# TLS files: copied next to datastore.yaml, which names them relative to itself.
tls_line() { # FIELD VARIABLE-VALUE NAME
	if [ -n "$2" ]; then
		mkdir -p "$MARGAY_CONF_DIR/tls"
		put "$2" "$MARGAY_CONF_DIR/tls/$3" 0600
		echo "$1: tls/$3"
	fi
}
ds="$MARGAY_CONF_DIR/.datastore.yaml.new.$$"
{
	echo "# Written by margay's install-cni from the margay-config ConfigMap; rewritten at every start."
	echo "endpoints:"
	for ep in $(echo "${MARGAY_ETCD_ENDPOINTS:-http://127.0.0.1:2379}" | tr ',' ' '); do
		echo "  - $ep"
	done
	tls_line caFile "${MARGAY_ETCD_CA:-}" etcd-ca
	tls_line certFile "${MARGAY_ETCD_CERT:-}" etcd-cert
	tls_line keyFile "${MARGAY_ETCD_KEY:-}" etcd-key
	if [ -n "${MARGAY_ETCD_USERNAME:-}" ]; then echo "username: \"$MARGAY_ETCD_USERNAME\""; fi
	if [ -n "${MARGAY_ETCD_PASSWORD:-}" ]; then echo "password: \"$MARGAY_ETCD_PASSWORD\""; fi
	if [ -n "${MARGAY_DATASTORE_PREFIX:-}" ]; then echo "prefix: \"$MARGAY_DATASTORE_PREFIX\""; fi
	if [ -n "${MARGAY_ETCD_DIAL_TIMEOUT:-}" ]; then echo "dialTimeout: \"$MARGAY_ETCD_DIAL_TIMEOUT\""; fi
} >"$ds"
write "$MARGAY_CONF_DIR/datastore.yaml" 0600 <"$ds"
rm -f "$ds"

# A long-lived token (a kubernetes.io/service-account-token Secret), so that the file on the host
# does not expire like a projected token would.
if [ -s "$CNI_TOKEN_DIR/token" ] && [ -n "${KUBERNETES_SERVICE_HOST:-}" ]; then
	ca=$(base64 <"$CNI_TOKEN_DIR/ca.crt" | tr -d '\n')
	write "$CNI_NET_DIR/margay-kubeconfig" 0600 <<KUBECONFIG
# Written by margay's install-cni: margay-cni reads pods, namespaces and service accounts with it.
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster:
      server: https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT:-443}
      certificate-authority-data: ${ca}
users:
  - name: margay-cni
    user:
      token: $(cat "$CNI_TOKEN_DIR/token")
contexts:
  - name: margay-cni
    context:
      cluster: local
      user: margay-cni
current-context: margay-cni
KUBECONFIG
fi

if [ ! -s "$CNI_NET_DIR/margay-kubeconfig" ] && printf '%s' "$CNI_NETWORK_CONFIG" | grep -q margay-kubeconfig; then
	# Kubernetes fills the token Secret in shortly after it is created: fail, and be run again.
	log "the network config needs margay-kubeconfig, but no token is mounted at $CNI_TOKEN_DIR yet"
	exit 1
fi
if [ -n "$CNI_NETWORK_CONFIG" ]; then
	printf '%s\n' "$CNI_NETWORK_CONFIG" | sed "s/__NODENAME__/$NODENAME/g" | write "$CNI_NET_DIR/$CNI_CONF_NAME" 0644
else
	put "$MARGAY_SHARE_DIR/10-margay.conflist" "$CNI_NET_DIR/$CNI_CONF_NAME" 0644
fi
log "done"
