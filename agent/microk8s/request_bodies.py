"""Pure: the bodies the snap backend sends to MicroK8s (launch configurations, `configure`).

Launch configurations (MICROK8S.md §3.5) reach MicroK8s as `snap set microk8s config=<yaml>`
(`PUT /v2/snaps/microk8s/conf`); its configure hook only rewrites the launcher file when the text
differs from the last one, so every document ends with a unique `# nonce:` comment. The cluster
agent's `configure` wants JSON booleans and the addon arguments inside the name (`name:a:b`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

LAUNCH_VERSION = "0.1.0"
"""Accepted by every cluster agent that reads launch configurations (1.27 accepts only this)."""

ACTIONS = ("enable", "disable")


def _render(doc: dict[str, Any], nonce: str) -> str:
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return f"{body}# nonce: {nonce}\n"


def join_config(url: str, *, worker: bool, nonce: str) -> str:
    """The document that makes the cluster agent run `microk8s join url [--worker]`."""
    return _render({"version": LAUNCH_VERSION, "join": {"url": url, "worker": worker}}, nonce)


def addon_config(name: str, action: str, args: Sequence[str], *, nonce: str) -> str:
    """The document that makes the cluster agent enable or disable one addon."""
    _check_action(action)
    entry = {"name": name, "args": list(args), "disable": action == "disable"}
    return _render({"version": LAUNCH_VERSION, "addons": [entry]}, nonce)


def noop_config(nonce: str) -> str:
    """A version-only document: replaces a stuck launch configuration, which is otherwise
    retried every 5 s forever (a failed join would keep burning tokens)."""
    return _render({"version": LAUNCH_VERSION}, nonce)


def configure_body(token: str, name: str, action: str, args: Sequence[str]) -> dict[str, Any]:
    """`POST /cluster/api/v1.0/configure` for one addon."""
    _check_action(action)
    return {"callback": token, "addon": [{"name": ":".join([name, *args]), action: True}]}


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"addon action must be enable or disable, not {action!r}")
