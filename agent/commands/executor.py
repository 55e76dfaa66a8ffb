"""Runs one validated command against a Backend and returns its Outcome.

The verbs' rules live in pure modules (agent.commands.verbs, agent.commands.upgrade_policy);
this module only sequences backend calls. An upgrade is the long one: check the policy against
fresh facts, cordon and drain, refresh, wait until the node is Ready on the new version, uncordon.
If the node does not come back, it stays cordoned on purpose: workloads must not land on a node
that failed its upgrade.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agent.commands import upgrade_policy
from agent.commands.verbs import AddonArgs, Command, JoinArgs, UpgradeArgs
from agent.errors import BackendError
from agent.logs import get_logger
from agent.microk8s.backends.base import Backend, NoBackend, Outcome, Progress
from agent.microk8s.status import MicroK8sFacts
from agent.settings import MicroK8sSettings

log = get_logger(__name__)

UpgradeGate = Callable[[bool], str | None]
"""Called with `force`; returns why an upgrade must not start now (e.g. would_break_quorum)."""
JoinGate = Callable[[JoinArgs], str | None]
"""Returns why a join must not start now (the target cluster's quorum has no margin)."""

READY_POLL_S = 2.0


def allow_upgrade(force: bool) -> str | None:
    """The default gate: no cluster-level objection."""
    return None


def allow_join(args: JoinArgs) -> str | None:
    """The default gate: no cluster-level objection."""
    return None


def failed(error: str, output: str = "") -> Outcome:
    return Outcome(ok=False, exit_code=None, output=output, error=error)


class Executor:
    """Executes join, addon and upgrade through one backend; one call at a time (the worker)."""

    def __init__(
        self,
        backend: Backend,
        settings: MicroK8sSettings,
        *,
        node: str,
        upgrade_gate: UpgradeGate = allow_upgrade,
        ready_poll_s: float = READY_POLL_S,
    ) -> None:
        self.backend = backend
        self.upgrade_gate = upgrade_gate
        self.join_gate: JoinGate = allow_join
        # Told the reason while a refresh may restart MicroK8s, then None (the HA verdict says
        # "maintenance" meanwhile, so peers do not count the restart as a failure).
        self.on_maintenance: Callable[[str | None], None] = lambda _reason: None
        self._settings = settings
        self._node = node
        self._ready_poll_s = ready_poll_s

    def unavailable(self) -> str | None:
        """Why no command can run at all (no backend), or None."""
        if isinstance(self.backend, NoBackend):
            return f"no MicroK8s backend available: {self.backend.reason}"
        return None

    def upgrade_refusal(self, args: UpgradeArgs, facts: MicroK8sFacts | None) -> str | None:
        """Policy and gate verdict from known facts; None also when facts are not known yet."""
        if facts is not None:
            current = upgrade_policy.installed(facts.channel, facts.version, facts.confinement)
            reason = upgrade_policy.refusal(current, args.channel, force=args.force)
            if reason is not None:
                return reason
        return self.upgrade_gate(args.force)

    async def run(self, command: Command, progress: Progress) -> Outcome:
        """Execute; BackendError (backend cannot act at all) becomes a failed Outcome."""
        args = command.args
        try:
            if isinstance(args, JoinArgs):
                refusal = self.join_gate(args)
                if refusal is not None:
                    return failed(refusal)
                return await self.backend.join(args.url, worker=args.worker, progress=progress)
            if isinstance(args, AddonArgs):
                return await self.backend.addon(
                    args.name, args.action, args.args, progress=progress
                )
            if isinstance(args, UpgradeArgs):
                return await self._upgrade(args, progress)
        except BackendError as exc:
            return failed(str(exc), exc.output)
        finally:
            self.on_maintenance(None)
        return failed(f"{command.verb.value} is not executed by the worker")

    async def _upgrade(self, args: UpgradeArgs, progress: Progress) -> Outcome:
        facts = await self.backend.facts()
        old_version, _ = await self.backend.version()
        current = upgrade_policy.installed(facts.channel, old_version, facts.confinement)
        reason = upgrade_policy.refusal(current, args.channel, force=args.force)
        reason = reason or self.upgrade_gate(args.force)
        if reason is not None:
            return failed(reason)
        if args.drain:
            emptied = await self._empty_node(progress)
            if emptied is not None:
                return emptied
        await progress("refreshing")
        self.on_maintenance(f"upgrading to {args.channel}: the refresh restarts MicroK8s")
        refreshed = await self.backend.refresh(str(args.channel), progress=progress)
        if not refreshed.ok:
            return await self._undo_cordon(args, refreshed, "refresh failed")
        new_version = (refreshed.result or {}).get("version") or (await self.backend.version())[0]
        await progress("waiting for node Ready")
        if not await self._wait_ready(new_version):
            limit = self._settings.join_timeout_s
            wanted = f" on {new_version}" if new_version else ""
            still = "; it stays cordoned" if args.drain else ""
            return failed(
                f"node {self._node} did not become Ready{wanted} within {limit:g} s{still}",
                refreshed.output,
            )
        if args.drain:
            uncordoned = await self.backend.uncordon(self._node, progress=progress)
            if not uncordoned.ok:
                return failed(f"uncordon failed: {uncordoned.error}", uncordoned.output)
        result = {
            "old_version": old_version,
            "new_version": new_version,
            "old_channel": facts.channel,
            "channel": str(args.channel),
        }
        return Outcome(ok=True, exit_code=0, output=refreshed.output, error=None, result=result)

    async def _empty_node(self, progress: Progress) -> Outcome | None:
        """Cordon and drain; None when done, else the failed Outcome (node uncordoned again)."""
        await progress("draining")
        cordoned = await self.backend.cordon(self._node, progress=progress)
        if not cordoned.ok:
            return failed(f"cordon failed: {cordoned.error}", cordoned.output)
        drained = await self.backend.drain(self._node, progress=progress)
        if not drained.ok:
            await self._uncordon_quietly(progress)
            return _prefixed(drained, "drain failed")
        return None

    async def _undo_cordon(self, args: UpgradeArgs, outcome: Outcome, what: str) -> Outcome:
        # The old version still runs: give the node back to the scheduler.
        if args.drain:
            await self._uncordon_quietly(_silent)
        return _prefixed(outcome, what)

    async def _uncordon_quietly(self, progress: Progress) -> None:
        outcome = await self.backend.uncordon(self._node, progress=progress)
        if not outcome.ok:
            log.warning("uncordon_failed", node=self._node, error=outcome.error)

    async def _wait_ready(self, version: str | None) -> bool:
        """Poll until the node is Ready (on `version` when known), within join_timeout_s."""
        deadline = time.monotonic() + self._settings.join_timeout_s
        while True:
            try:
                ready, kubelet = await self.backend.node_ready(self._node)
            except BackendError as exc:
                log.warning("node_ready_unknown", node=self._node, error=str(exc))
                ready, kubelet = None, None
            if ready and (version is None or kubelet == version):
                return True
            if time.monotonic() + self._ready_poll_s > deadline:
                return False
            await asyncio.sleep(self._ready_poll_s)


async def _silent(detail: str) -> None:
    """Progress sink for clean-up steps that should not show as command progress."""


def _prefixed(outcome: Outcome, what: str) -> Outcome:
    return Outcome(
        ok=False,
        exit_code=outcome.exit_code,
        output=outcome.output,
        error=f"{what}: {outcome.error}",
        timed_out=outcome.timed_out,
    )
