"""Pick the MicroK8s backend named by `microk8s.backend` ("auto" probes what this node offers)."""

from __future__ import annotations

import shutil

from agent.backends.base import Backend, NoBackend
from agent.backends.cli import CliBackend
from agent.config import MicroK8sSettings
from agent.logs import get_logger

log = get_logger(__name__)


def _cli(settings: MicroK8sSettings) -> CliBackend:
    return CliBackend(
        settings.cli,
        settings.snap_cli,
        timeout_s=settings.command_timeout_s,
        status_timeout_s=settings.status_timeout_s,
    )


async def choose(settings: MicroK8sSettings) -> Backend:
    """The backend to use; never raises (a node without MicroK8s still reports health)."""
    if settings.backend == "cli":
        return _cli(settings)
    if shutil.which(settings.cli):
        return _cli(settings)
    return NoBackend(f"no {settings.cli!r} executable on PATH")
