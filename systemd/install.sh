#!/bin/sh
# Installs the agent as a hardened systemd service on Ubuntu or Raspberry Pi OS (no snapd):
#   - a virtualenv in /opt/edge-agent with the project pip-installed from this checkout,
#   - a system user `edge-agent` (added to group `microk8s` when MicroK8s is installed, so it can
#     read MicroK8s' credentials and `microk8s status`),
#   - /etc/edge-agent/agent.toml from configs/agent.example.toml (an existing file is kept),
#   - /etc/systemd/system/edge-agent.service, then `systemctl enable --now`.
# Run from the checkout as root:  sudo systemd/install.sh     Safe to run again (upgrade).
set -eu
cd "$(dirname "$0")/.."

PREFIX=/opt/edge-agent
CONF_DIR=/etc/edge-agent
UNIT_DIR=/etc/systemd/system
SERVICE_USER=edge-agent

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo $0)" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd is required" >&2; exit 1; }

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: python3 >= 3.11 is required (Raspberry Pi OS bookworm, Ubuntu 24.04)" >&2
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
    apt-get install -y python3-venv
fi
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
# The pins of the snap, so both packagings run the same, tested versions. Their hashes are those
# of the snap's wheels (CPython 3.12 on aarch64/x86_64, docs/packaging.md): pip checks them where
# this venv matches; elsewhere (Raspberry Pi OS bookworm has 3.11) only the versions are kept.
pins=snap/requirements.txt
if ! "$PREFIX/bin/python" -c 'import platform, sys
sys.exit(sys.version_info[:2] != (3, 12) or platform.machine() not in ("aarch64", "x86_64"))'; then
    pins=$(mktemp)
    trap 'rm -f "$pins"' EXIT
    sed -n 's/^\([A-Za-z0-9._-]*==[^ \\]*\).*/\1/p' snap/requirements.txt > "$pins"
fi
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check -r "$pins"
# Apart: a hashed requirements file makes pip refuse an unhashed directory in the same command.
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check .

if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi
if getent group microk8s >/dev/null; then
    usermod --append --groups microk8s "$SERVICE_USER"
fi

install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ ! -e "$CONF_DIR/agent.toml" ]; then
    install -m 0640 -o root -g "$SERVICE_USER" configs/agent.example.toml "$CONF_DIR/agent.toml"
    echo "install.sh: wrote $CONF_DIR/agent.toml: set [mqtt] host (and TLS files) there"
fi
"$PREFIX/bin/edge-agent" check-config --config "$CONF_DIR/agent.toml" >/dev/null

sed "s#^ExecStart=/opt/edge-agent/#ExecStart=$PREFIX/#" systemd/edge-agent.service \
    > "$UNIT_DIR/edge-agent.service"
chmod 0644 "$UNIT_DIR/edge-agent.service"
systemctl daemon-reload
systemctl enable --now edge-agent.service
systemctl restart edge-agent.service
echo "install.sh: edge-agent is running; see: systemctl status edge-agent; journalctl -u edge-agent -f"
