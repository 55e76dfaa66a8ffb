"""What the snap backend reads: MicroK8s facts from snapd and the Kubernetes API, never raising.

snapd tells the version, tracking channel, confinement, snap health and which MicroK8s services
are active; the Kubernetes API tells this node's conditions, kubelet version and worker label,
and `/readyz?verbose` of the local API server tells the datastore's health (its etcd checks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.microk8s import kube_model, snapd_model
from agent.microk8s.kubeapi import KubeApiError, KubeconfigWatch
from agent.microk8s.snapd import SnapdClient, SnapdError
from agent.microk8s.status import NOT_INSTALLED, MicroK8sFacts

NOT_INSTALLED_KINDS = frozenset({"snap-not-found", "snap-not-installed"})


class SnapFacts:
    def __init__(self, snapd: SnapdClient, kube: KubeconfigWatch, *, node: str) -> None:
        self.snapd = snapd
        self.kube = kube
        self.node = node

    async def this_node(self) -> tuple[kube_model.NodeFacts | None, str | None]:
        """(this node, None) or (None, why unknown)."""
        try:
            raw = await self.kube.get().node(self.node)
        except KubeApiError as exc:
            return None, str(exc)
        if raw is None:
            return None, f"the Kubernetes API has no node {self.node!r}"
        return kube_model.parse_node(raw), None

    async def facts(self) -> MicroK8sFacts:
        """snapd's view (version, channel, services, health) plus the worker label."""
        try:
            info = await self.snapd.snap()
        except SnapdError as exc:
            if exc.kind in NOT_INSTALLED_KINDS:
                return NOT_INSTALLED
            return await self._without_snapd(f"snapd: {exc}")
        facts = snapd_model.to_facts(info)
        node, _ = await self.this_node()
        if node is not None and node.worker:
            facts = dataclasses.replace(facts, role="worker")
        return facts

    async def _without_snapd(self, why: str) -> MicroK8sFacts:
        """Without snapd-control (Option B of MICROK8S.md §4.5) the API still knows this node:
        MicroK8s is installed and runs the kubelet version it reports."""
        node, _ = await self.this_node()
        if node is None:
            return dataclasses.replace(NOT_INSTALLED, running=None, error=why)
        return MicroK8sFacts(
            installed=True,
            running=node.ready,
            version=node.kubelet_version,
            role="worker" if node.worker else None,
            error=f"{why}; channel and services unknown",
        )

    async def kube_facts(self) -> dict[str, Any]:
        """The health message's `kube` section: this node and the local API server's readyz."""
        node, node_error = await self.this_node()
        readyz, readyz_error = None, None
        try:
            status, text = await self.kube.get().readyz()
            readyz = kube_model.parse_readyz(text, status)
        except KubeApiError as exc:
            readyz_error = str(exc)
        errors = list(dict.fromkeys(e for e in (node_error, readyz_error) if e))
        return kube_model.kube_section(node, readyz, errors)

    async def version(self) -> tuple[str | None, str | None]:
        """(version, revision) from snapd. Raises SnapdError (a BackendError)."""
        info = await self.snapd.snap()
        return info.version, info.revision

    async def node_ready(self, node: str) -> tuple[bool | None, str | None]:
        """(Ready, kubelet version); (None, None) while the API server does not answer.

        Raises:
            KubeApiError: there is no usable kubeconfig at all.
        """
        api = self.kube.get()
        try:
            raw = await api.node(node)
        except KubeApiError:
            return None, None
        facts = kube_model.parse_node(raw) if raw is not None else None
        return (facts.ready, facts.kubelet_version) if facts else (None, None)
