"""Pick the MicroK8s backend named by `microk8s.backend` ("auto" probes what this node offers).

Each backend is imported when it is chosen, so a node pays the resident cost of one backend only
(the snap backend brings snapd, cluster-agent and Kubernetes API clients; the CLI backend does not).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from agent.logs import get_logger
from agent.microk8s.backends.base import Backend, NoBackend
from agent.settings import MicroK8sSettings, default_node_name

if TYPE_CHECKING:
    from agent.microk8s.backends.cli import CliBackend
    from agent.microk8s.backends.snap import SnapBackend

log = get_logger(__name__)

PROBE_TIMEOUT_S = 3.0
"""snapd answers from memory; a socket that takes longer is not one to build on."""


def _cli(settings: MicroK8sSettings) -> CliBackend:
    from agent.microk8s.backends.cli import CliBackend  # only when chosen

    return CliBackend(
        settings.cli,
        settings.snap_cli,
        timeout_s=settings.command_timeout_s,
        status_timeout_s=settings.status_timeout_s,
    )


async def probe_snapd(settings: MicroK8sSettings) -> str | None:
    """None when snapd answers `GET /v2/snaps/microk8s` on the socket, else why not.

    Any snapd answer counts, "not installed" too: the snap backend then reports that, and sees
    MicroK8s as soon as it is installed.
    """
    from agent.microk8s.snapd import SnapdClient, SnapdError  # auto only

    timeout_s = min(PROBE_TIMEOUT_S, settings.status_timeout_s)
    try:
        await SnapdClient(settings.snapd_socket, timeout_s=timeout_s).snap()
    except SnapdError as exc:
        if exc.status_code is None:
            return str(exc)
    return None


async def _snap(settings: MicroK8sSettings, node: str) -> SnapBackend:
    from agent.microk8s.backends.snap import SnapBackend  # only when chosen

    backend = SnapBackend(settings, node=node or default_node_name())
    if settings.hold_refresh:
        await backend.hold_refresh()
    return backend


async def choose(settings: MicroK8sSettings, *, node: str = "") -> Backend:
    """The backend to use; never raises (a node without MicroK8s still reports health).

    `auto` prefers snapd (the only way for a strictly confined agent), then a `microk8s`
    executable, then none: the reason names everything that was probed.
    """
    if settings.backend == "cli":
        return _cli(settings)
    if settings.backend == "snap":
        return await _snap(settings, node)
    snapd_problem = await probe_snapd(settings)
    if snapd_problem is None:
        return await _snap(settings, node)
    if shutil.which(settings.cli):
        return _cli(settings)
    return NoBackend(f"{snapd_problem}; no {settings.cli!r} executable on PATH")
