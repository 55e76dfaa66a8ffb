#!/bin/sh
# Makes the fleet's TLS material with openssl: a CA (once), the broker's server certificate, one
# client certificate per node (CN = node name) and one per operator (CN = operator.<name>).
#
#   make-certs.sh DIR BROKER_NAME [NODE...] [--operator NAME...]
#   make-certs.sh ./pki 127.0.0.1 pi-01 pi-02 pi-03 --operator admin
#
# BROKER_NAME goes into the server certificate (DNS name, or an IPv4 address); localhost and
# 127.0.0.1 are always added. Existing keys and certificates are kept, so the script can be run
# again to add nodes. Copy DIR/ca.crt and DIR/nodes/<node>.{crt,key} to that node only (in the
# snap: under /var/snap/microk8s-edge-agent/common/); keep DIR/ca.key offline. Mosquitto drops
# root before it reads server.key: make that readable by the mosquitto user (chown mosquitto).
# Certificates are valid for DAYS (default 825) days.
set -eu

usage() { echo "usage: $0 DIR BROKER_NAME [NODE...] [--operator NAME...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
dir=$1 broker=$2
shift 2
days=${DAYS:-825}
node_re='^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'

# openssl chatters on stderr even when it works: show its output only when it fails.
quiet() {
    out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; echo "$0: failed: $1 $2" >&2; exit 1; }
}

umask 077
mkdir -p "$dir/nodes" "$dir/operators"

ca() {
    [ -f "$dir/ca.key" ] && return 0
    quiet openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$days" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=microk8s-edge-agent fleet CA"
}

# sign CN EXTENSIONS OUT_PREFIX: a key and a CA-signed certificate, unless they exist already.
sign() {
    prefix=$3
    [ -f "$prefix.crt" ] && return 0
    printf '%s\n' "$2" > "$prefix.ext"
    quiet openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$prefix.key" -out "$prefix.csr" \
        -subj "/CN=$1"
    quiet openssl x509 -req -sha256 -days "$days" -in "$prefix.csr" -CA "$dir/ca.crt" \
        -CAkey "$dir/ca.key" -CAcreateserial -out "$prefix.crt" -extfile "$prefix.ext"
    rm -f "$prefix.csr" "$prefix.ext"
    echo "made $prefix.crt (CN=$1)"
}

ca
case $broker in
    localhost | 127.0.0.1) san="DNS:localhost,IP:127.0.0.1" ;;
    *[!0-9.]*) san="DNS:$broker,DNS:localhost,IP:127.0.0.1" ;;
    *) san="IP:$broker,DNS:localhost,IP:127.0.0.1" ;;
esac
sign "$broker" "subjectAltName=$san
extendedKeyUsage=serverAuth" "$dir/server"

role=node
for name in "$@"; do
    if [ "$name" = "--operator" ]; then role=operator; continue; fi
    if ! printf '%s' "$name" | grep -Eq "$node_re"; then
        echo "$0: $name: must be lowercase letters, digits and '-' (a node name)" >&2
        exit 2
    fi
    if [ "$role" = node ]; then
        sign "$name" "extendedKeyUsage=clientAuth" "$dir/nodes/$name"
    else
        sign "operator.$name" "extendedKeyUsage=clientAuth" "$dir/operators/$name"
    fi
done
chmod 0644 "$dir/ca.crt" "$dir/server.crt"
