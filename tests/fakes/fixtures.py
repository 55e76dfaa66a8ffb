"""pytest fixtures for the snap backend's fakes (registered by tests/conftest.py).

`snap_env` starts the snapd, cluster-agent and Kubernetes API fakes and writes a credentials
directory like MicroK8s' content interface exposes (client.config, callback-token.txt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.microk8s import kubeapi
from agent.microk8s.backends.snap import SnapBackend
from agent.settings import MicroK8sSettings
from tests.fakes.clusteragent import FakeClusterAgent
from tests.fakes.kubeapi import FakeKubeApi
from tests.fakes.snapd import FakeSnapd
from tests.fakes.tls import make_tls

NONCE = "2026-11-26T10:00:00+00:00 0123456789ab"


@dataclasses.dataclass
class SnapEnv:
    snapd: FakeSnapd
    cluster_agent: FakeClusterAgent
    kube: FakeKubeApi
    credentials: Path
    settings: MicroK8sSettings

    def section(self, **overrides: Any) -> dict[str, Any]:
        """The `[microk8s]` section of an agent config that points at these fakes."""
        section = {
            key: getattr(self.settings, key)
            for key in (
                "backend",
                "snapd_socket",
                "credentials_dir",
                "cluster_agent_url",
                "command_timeout_s",
                "status_timeout_s",
                "status_interval_s",
                "drain_timeout_s",
                "join_timeout_s",
                "hold_refresh",
            )
        }
        return {**section, **overrides}

    def backend(self, node: str = "pi-01", **settings: Any) -> SnapBackend:
        chosen = dataclasses.replace(self.settings, **settings)
        return SnapBackend(chosen, node=node, poll_s=0.02, nonce=lambda: NONCE)

    def forget_token(self) -> None:
        (self.credentials / "callback-token.txt").unlink()


@contextlib.asynccontextmanager
async def started_snap_env(tmp_path: Path) -> AsyncIterator[SnapEnv]:
    """The three fakes and a credentials directory, for tests and bench scripts."""
    # A unix socket path must stay under 108 bytes; pytest's tmp_path may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="snapd-", dir="/tmp"))
    tls = make_tls(tmp_path / "tls")
    snapd = await FakeSnapd(socket_dir / "snapd.socket").start()
    cluster_agent = await FakeClusterAgent(tls).start()
    kube = await FakeKubeApi(tls).start()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "client.config").write_text(kube.kubeconfig())
    (credentials / "callback-token.txt").write_text(cluster_agent.token + "\n")
    settings = MicroK8sSettings(
        backend="snap",
        snapd_socket=str(snapd.socket_path),
        credentials_dir=str(credentials),
        cluster_agent_url=cluster_agent.url,
        command_timeout_s=20.0,
        status_timeout_s=5.0,
        status_interval_s=0.5,
        drain_timeout_s=10.0,
        join_timeout_s=3.0,
    )
    try:
        yield SnapEnv(snapd, cluster_agent, kube, credentials, settings)
    finally:
        # Backends built on these fakes share the process-wide kept-alive Kubernetes sessions.
        await kubeapi.close_shared()
        for fake in (snapd, cluster_agent, kube):
            await fake.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture
async def snap_env(tmp_path: Path) -> AsyncIterator[SnapEnv]:
    async with started_snap_env(tmp_path) as env:
        yield env
