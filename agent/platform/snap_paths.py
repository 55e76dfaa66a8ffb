"""Where things live when the agent runs inside its snap (snapd sets $SNAP_COMMON, $SNAP_DATA).

Some defaults move there: state to $SNAP_COMMON (kept across refreshes and reverts), MicroK8s'
credentials to the mount point of the `microk8s` content interface, and the configuration to
$SNAP_DATA/agent.toml, the file the configure hook writes from `snap set`. Outside a snap the
classic paths apply. Read at call time, so tests can set the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

CREDENTIALS_MOUNT = "microk8s-credentials"
"""The content plug's target below $SNAP_DATA (snap/snapcraft.yaml, plugs.microk8s.target)."""
CONFIG_FILE = "agent.toml"


def _snap_data() -> str | None:
    """$SNAP_DATA, but only inside a snap (both variables set)."""
    snap_data = os.environ.get("SNAP_DATA")
    return snap_data if os.environ.get("SNAP_COMMON") and snap_data else None


def default_state_dir() -> str:
    return os.environ.get("SNAP_COMMON") or "/var/lib/edge-agent"


def default_credentials_dir() -> str:
    snap_data = _snap_data()
    if snap_data:
        return f"{snap_data}/{CREDENTIALS_MOUNT}"
    return "/var/snap/microk8s/current/credentials"


def default_config_path() -> Path | None:
    """The snap's $SNAP_DATA/agent.toml when it exists (`run` without --config reads it)."""
    snap_data = _snap_data()
    if snap_data is None:
        return None
    path = Path(snap_data) / CONFIG_FILE
    return path if path.is_file() else None
