#!/bin/sh
# Installs what the agent (and, with "test", its test suite) needs on a fresh Debian/Ubuntu
# machine: python3-venv and mosquitto from apt when missing (only as root with apt-get), a
# virtualenv in .venv, and the project in it. Safe to run again: it only adds what is missing.
set -eu
cd "$(dirname "$0")/.."
want_tests=${1:-}

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
    if as_root && have apt-get; then
        echo "bootstrap: apt-get install $*" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "bootstrap: please install: $* (apt-get needs root)" >&2
        return 1
    fi
}

PY=${PYTHON:-python3}
have "$PY" || apt_install python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$PY" -m venv .venv; }
fi
if ! have mosquitto && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto mosquitto-clients || echo "bootstrap: continuing without mosquitto" >&2
fi
if [ "$want_tests" = "test" ] && ! have mosquitto_passwd; then
    apt_install mosquitto-clients || true
fi
# Packaging checks (tests/test_packaging.py): `snap pack --check-skeleton` needs the snap client
# (Debian's snapd package; the daemon is not used) and squashfs-tools; systemd-analyze checks
# the unit; openssl makes the fleet certificates; unshare runs the confinement test.
if [ "$want_tests" = "test" ]; then
    have snap || [ -x /usr/bin/snap ] || apt_install snapd || true
    have unsquashfs && have mksquashfs || apt_install squashfs-tools || true
    have systemd-analyze || apt_install systemd || true
    have openssl || apt_install openssl || true
    have unshare || apt_install util-linux || true
    # Real dqlite for the HA tests (tests/dqlite_nodes.py): go-dqlite ships dqlite-demo and the
    # dqlite shell (Debian/Ubuntu package go-dqlite, with libdqlite0).
    have dqlite-demo && have dqlite || apt_install go-dqlite || true
    # Headless Chromium drives the dashboard's browser tests (tests/cdp.py talks CDP to it).
    have chromium || [ -x /usr/bin/chromium ] || apt_install chromium || true
    # libfaketime moves the agent's wall clock in tests/faults (clock jumps).
    dpkg -L libfaketime 2>/dev/null | grep -q 'libfaketime.so.1$' || apt_install faketime || true
    # tests/interop runs the agent against RabbitMQ (MQTT plugin, shipped in the package) and
    # NATS (MQTT listener) too; the tests start private instances on free loopback ports.
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server || true
    have nats-server || [ -x /usr/sbin/nats-server ] || apt_install nats-server || true
fi
extras=""
[ "$want_tests" = "test" ] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" 2>&1 \
    | grep -v -e "is ignored: it is neither a file nor a directory" >&2 || true
.venv/bin/python -c "import agent, aiomqtt, psutil, structlog" 
