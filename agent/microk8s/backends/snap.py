"""Backend for a strictly confined agent: snapd REST, the cluster agent, the Kubernetes API.

A strict snap cannot exec `microk8s` (MICROK8S.md §4.2), so every verb goes through an API:
upgrade = snapd refresh (+ cordon/drain/uncordon by the `agent.microk8s.drain` helper process),
addon = the cluster agent's `configure` (or a launch configuration on a never-clustered node), join
= a launch configuration through `snap set microk8s config=...`. Facts come from snapd (version,
channel, services) and the Kubernetes API (node conditions, `/readyz?verbose`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import BackendError
from agent.logs import get_logger
from agent.microk8s import drain_helper, kube_model, process, request_bodies, snapd_model
from agent.microk8s.backends.base import Outcome, Progress
from agent.microk8s.clusteragent import ClusterAgent, ClusterAgentError
from agent.microk8s.kubeapi import KubeApi, KubeApiError, KubeconfigWatch
from agent.microk8s.redact import join_url_secrets, mask_join_urls, mask_secrets
from agent.microk8s.snap_facts import SnapFacts
from agent.microk8s.snapd import ChangeTimedOut, SnapdClient, SnapdError
from agent.microk8s.snapd_model import SnapInfo
from agent.microk8s.status import MicroK8sFacts
from agent.settings import MicroK8sSettings

log = get_logger(__name__)

POLL_S = 0.5
"""Between polls of a snapd change or of the Kubernetes API while a verb waits."""
KUBECONFIG = "client.config"
OUTPUT_TAIL_BYTES = 4096
KUBE_TIMEOUT_S = 10.0
"""Per Kubernetes API request (the health loop must not wait on a stuck API server)."""
HOLD = {"action": "hold", "time": "forever", "hold-level": "general"}

Mask = Callable[[str], str]


def new_nonce() -> str:
    """Unique per launch configuration, so MicroK8s' configure hook rewrites the file."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return f"{now} {uuid.uuid4().hex[:12]}"


def _plain(text: str) -> str:
    return text


class SnapBackend:
    """Reaches MicroK8s through the APIs a strict snap may use (Option A of MICROK8S.md §4.5)."""

    name: str = "snap"

    def __init__(
        self,
        settings: MicroK8sSettings,
        *,
        node: str,
        poll_s: float = POLL_S,
        nonce: Callable[[], str] = new_nonce,
        python: str = sys.executable,
    ) -> None:
        """Args:
        settings: the microk8s section (socket, credentials, URLs, timeouts).
        node: this node's Kubernetes name (the agent's node name).
        poll_s: interval of change and API polls while a verb waits.
        nonce: makes each launch configuration unique (tests pin it).
        python: the interpreter that runs the drain helper.
        """
        self._settings = settings
        self._node = node
        self._poll_s = poll_s
        self._nonce = nonce
        self._python = python
        credentials = Path(settings.credentials_dir)
        self._kubeconfig = credentials / KUBECONFIG
        self.snapd = SnapdClient(settings.snapd_socket, timeout_s=settings.status_timeout_s)
        kube = KubeconfigWatch(
            self._kubeconfig, timeout_s=min(settings.status_timeout_s, KUBE_TIMEOUT_S)
        )
        self.reads = SnapFacts(self.snapd, kube, node=node)
        self.cluster_agent = ClusterAgent(settings.cluster_agent_url, credentials)

    # --- start ----------------------------------------------------------------------------

    async def hold_refresh(self) -> bool:
        """Hold MicroK8s' auto-refresh forever (explicit refreshes still proceed); never raises.

        Nodes that refresh on their own schedule can all restart at once and lose quorum
        (canonical/microk8s#1022); the agent refreshes one node at a time on command instead.
        """
        try:
            change = await self.snapd.act(dict(HOLD))
        except SnapdError as exc:
            log.warning("snap_refresh_hold_failed", snap="microk8s", error=str(exc), kind=exc.kind)
            return False
        log.info("snap_refresh_held", snap="microk8s", change=change)
        return True

    # --- queries (agent.microk8s.snap_facts) ----------------------------------------------------

    def kube(self) -> KubeApi:
        """Raises KubeApiError when there is no usable kubeconfig."""
        return self.reads.kube.get()

    async def facts(self) -> MicroK8sFacts:
        return await self.reads.facts()

    async def kube_facts(self) -> dict[str, Any]:
        return await self.reads.kube_facts()

    async def version(self) -> tuple[str | None, str | None]:
        return await self.reads.version()

    async def node_ready(self, node: str) -> tuple[bool | None, str | None]:
        return await self.reads.node_ready(node)

    # --- upgrade --------------------------------------------------------------------------

    async def refresh(self, channel: str, *, progress: Progress) -> Outcome:
        """`POST /v2/snaps/microk8s` refresh, then follow the change to its end."""
        before = await self._snap_or_none()
        try:
            change_id = await self.snapd.act({"action": "refresh", "channel": channel})
        except SnapdError as exc:
            return _refused("refresh", exc)
        await progress(f"refreshing microk8s to {channel} (snapd change {change_id})")
        outcome = await self._follow(change_id, progress, label="refreshing")
        if not outcome.ok:
            return outcome
        after = await self._snap_or_none()
        result = {
            "channel": channel,
            "version": after.version if after else None,
            "revision": after.revision if after else None,
            "previous_version": before.version if before else None,
            "previous_revision": before.revision if before else None,
        }
        output = f"microk8s {result['previous_version']} -> {result['version']} ({channel})"
        return dataclasses.replace(outcome, output=output, result=result)

    async def cordon(self, node: str, *, progress: Progress) -> Outcome:
        return await self._helper("cordon", node, progress, self._settings.command_timeout_s)

    async def drain(self, node: str, *, progress: Progress) -> Outcome:
        return await self._helper("drain", node, progress, self._settings.drain_timeout_s)

    async def uncordon(self, node: str, *, progress: Progress) -> Outcome:
        return await self._helper("uncordon", node, progress, self._settings.command_timeout_s)

    async def _helper(self, verb: str, node: str, progress: Progress, timeout_s: float) -> Outcome:
        return await drain_helper.run(
            verb,
            kubeconfig=self._kubeconfig,
            node=node,
            timeout_s=timeout_s,
            progress=progress,
            python=self._python,
        )

    async def _snap_or_none(self) -> SnapInfo | None:
        try:
            return await self.snapd.snap()
        except SnapdError as exc:
            log.warning("snap_info_unavailable", error=str(exc))
            return None

    async def _follow(
        self, change_id: str, progress: Progress, *, label: str, mask: Mask = _plain
    ) -> Outcome:
        """Poll a snapd change to its end; "<label> N%" progress whenever N changes."""
        shown: list[int] = []

        async def watch(change: snapd_model.Change) -> None:
            percent = change.percent
            if percent is not None and (not shown or shown[-1] != percent):
                shown.append(percent)
                await progress(f"{label} {percent}%")

        limit = self._settings.command_timeout_s
        try:
            change = await self.snapd.wait(
                change_id, poll_s=self._poll_s, timeout_s=limit, watch=watch
            )
        except ChangeTimedOut as exc:
            return Outcome(False, None, "", mask(str(exc)), timed_out=True)
        summary = mask(f"snapd change {change.id or change_id} {change.status}: {change.summary}")
        if change.ok:
            return Outcome(ok=True, exit_code=None, output=summary, error=None)
        err = mask(change.err or "no reason given")
        return Outcome(False, None, process.tail(err, OUTPUT_TAIL_BYTES), f"{summary}: {err}")

    # --- join -----------------------------------------------------------------------------

    async def join(self, url: str, *, worker: bool, progress: Progress) -> Outcome:
        """Launch configuration `join: {url, worker}`, then wait until the API shows the join."""
        hidden = join_url_secrets(url)

        def mask(text: str) -> str:
            return mask_join_urls(mask_secrets(text, hidden))

        peer = url.split(":", 1)[0]
        config = request_bodies.join_config(url, worker=worker, nonce=self._nonce())
        role = " as a worker" if worker else ""
        await progress(f"joining {mask(url)}{role} through a launch configuration")
        try:
            change_id = await self.snapd.set_conf({"config": config})
        except SnapdError as exc:
            return _refused("join", exc, mask)
        outcome = await self._follow(change_id, progress, label="configuring", mask=mask)
        if not outcome.ok:
            return outcome
        await progress(f"waiting for {self._node} to appear in the Kubernetes API next to {peer}")
        return await self._confirm_join(peer, mask)

    async def _confirm_join(self, peer: str, mask: Mask) -> Outcome:
        limit = self._settings.join_timeout_s
        deadline = time.monotonic() + limit
        seen = "the Kubernetes API was not reached"
        while True:
            try:
                nodes = kube_model.parse_node_list(await self.kube().nodes())
            except KubeApiError as exc:
                seen = str(exc)
            else:
                joined, seen = kube_model.join_verdict(nodes, self._node, peer)
                if joined:
                    names = sorted(n.name for n in nodes)
                    result = {"node": self._node, "nodes": names}
                    return Outcome(True, None, mask(seen), None, result=result)
            if time.monotonic() + self._poll_s > deadline:
                break
            await asyncio.sleep(self._poll_s)
        error = f"join not confirmed within {limit:g} s: {seen}"
        if await self._clear_launch_config():
            error += "; the pending join was withdrawn (replaced by an empty launch configuration)"
        return Outcome(False, None, mask(seen), mask(error), timed_out=True)

    async def _clear_launch_config(self) -> bool:
        """Replace a launch configuration that may be failing (it would be retried forever)."""
        try:
            await self.snapd.set_conf({"config": request_bodies.noop_config(self._nonce())})
        except SnapdError as exc:
            log.warning("launch_config_not_cleared", error=str(exc))
            return False
        return True

    async def remove_node(self, name: str) -> Outcome:
        """Not possible through APIs: removing a dqlite member needs MicroK8s' own dqlite client
        and cluster certificate (MICROK8S.md §4.5, LEAVE/REMOVE).

        Raises:
            BackendError: always, saying what an operator must run instead.
        """
        raise BackendError(
            f"the snap backend cannot remove node {name!r} from dqlite: run "
            f"`sudo microk8s remove-node {name} --force` on a control-plane node",
            kind="unsupported",
        )

    # --- addons ---------------------------------------------------------------------------

    async def addon(
        self, name: str, action: str, args: Sequence[str], *, progress: Progress
    ) -> Outcome:
        """Through the cluster agent when this node has a callback token, else a launch config.

        Raises:
            BackendError: this node is a worker (addons are cluster-wide and MicroK8s refuses
                them there), or the callback token cannot be read.
        """
        if action not in request_bodies.ACTIONS:
            raise ValueError(f"addon action must be enable or disable, not {action!r}")
        await self._refuse_on_worker(name)
        try:
            token = self.cluster_agent.token()
        except ClusterAgentError as exc:
            raise BackendError(str(exc), kind="token") from exc
        if token is None:
            return await self._addon_by_launch_config(name, action, args, progress)
        return await self._addon_by_cluster_agent(token, name, action, args, progress)

    async def _refuse_on_worker(self, name: str) -> None:
        node, _ = await self.reads.this_node()
        if node is not None and node.worker:
            raise BackendError(
                f"cannot change addon {name!r} on {self._node}: it is a worker node (addons are "
                "cluster-wide; send the command to a control-plane node)",
                kind="refused",
            )

    async def _addon_by_cluster_agent(
        self, token: str, name: str, action: str, args: Sequence[str], progress: Progress
    ) -> Outcome:
        body = request_bodies.configure_body(token, name, action, args)
        await progress(f"{action} {name} through the cluster agent")

        def mask(text: str) -> str:
            return mask_secrets(text, (token,))

        try:
            await self.cluster_agent.configure(body)
        except ClusterAgentError as exc:
            error = mask(str(exc))
            return Outcome(False, None, error, error, timed_out=exc.kind == "timeout")
        output = f"cluster agent: {action} {name} ok (addon output is in its journal)"
        return Outcome(True, None, output, None, result={"via": "cluster-agent"})

    async def _addon_by_launch_config(
        self, name: str, action: str, args: Sequence[str], progress: Progress
    ) -> Outcome:
        config = request_bodies.addon_config(name, action, args, nonce=self._nonce())
        await progress(f"{action} {name} through a launch configuration (no callback token)")
        try:
            change_id = await self.snapd.set_conf({"config": config})
        except SnapdError as exc:
            return _refused("addon", exc)
        outcome = await self._follow(change_id, progress, label="configuring")
        if not outcome.ok:
            return outcome
        output = f"{outcome.output}; the cluster agent applies it within seconds"
        return dataclasses.replace(outcome, output=output, result={"via": "launch-configuration"})


def _refused(what: str, exc: SnapdError, mask: Mask = _plain) -> Outcome:
    """A snapd refusal (or an unreachable snapd) as a failed Outcome with snapd's kind."""
    if exc.kind == "unreachable":
        error = mask(f"{what} not started: {exc} (it needs the snapd-control interface)")
    elif exc.kind == "no-answer":
        error = mask(f"{what} may have started: {exc}; check `snap changes microk8s`")
    else:
        kind = f" ({exc.kind})" if exc.kind else ""
        error = mask(f"snapd refused the {what}: {exc}{kind}")
    return Outcome(False, None, error, error, result={"kind": exc.kind} if exc.kind else None)
