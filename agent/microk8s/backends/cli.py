"""Backend that execs the `microk8s` and `snap` commands, for classic hosts and development.

A strictly confined agent cannot use it (MICROK8S.md §4.2); on a classic host it is the most
direct path and mirrors what an operator would type. Every call goes through `process.run` (a
runner tests can replace), so there is never a shell, always a deadline and a bounded output.
Arguments are validated by the caller (agent.commands.verbs); `Argv` only places them in argv lists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
import shutil
import time
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeAlias

from agent.errors import BackendError, CommandTimedOut, ProcessError
from agent.microk8s import process
from agent.microk8s.backends.base import Outcome, Progress
from agent.microk8s.redact import join_url_secrets, mask_join_urls, mask_secrets
from agent.microk8s.status import (
    NOT_INSTALLED,
    MicroK8sFacts,
    parse_node_ready,
    parse_refresh,
    parse_snap_list,
    parse_status,
    parse_version,
    with_error,
)

OUTPUT_TAIL_BYTES = 4096
"""Output carried in an Outcome (PROTOCOL: at most 4 KiB)."""

KUBECTL_MARGIN_S = 15.0
"""kubectl drain's own --timeout ends this much before our deadline, so it reports what blocked."""

ADDON_ACTIONS = frozenset({"enable", "disable"})

_Result: TypeAlias = process.Completed | ProcessError | CommandTimedOut


class Runner(Protocol):
    """How argv lists are executed: `process.run`, or a recorder in tests that must not spawn."""

    def __call__(self, argv: Sequence[str], *, timeout_s: float) -> Awaitable[process.Completed]:
        """Raises ProcessError or CommandTimedOut like `process.run`."""
        ...


# A Kubernetes node name (PROTOCOL.md identity rule) or an IPv4 address: what remove-node accepts.
_REMOVABLE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$|^\d{1,3}(\.\d{1,3}){3}$")


async def _quiet(_detail: str) -> None:
    """Progress sink for calls that are not commands (the HA monitor publishes its own events)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Argv:
    """The exact command lines CliBackend runs, as pure functions of already validated values.

    Kept apart from the I/O so that tests (the fuzz tests above all) check the argv a command
    would exec without running anything. Callers validate every value first
    (agent.commands.verbs for command arguments, the configuration for the node name); this only
    places them.
    """

    microk8s: str
    snap: str

    def status(self) -> list[str]:
        return [self.microk8s, "status", "--format", "yaml"]

    def version(self) -> list[str]:
        return [self.microk8s, "version"]

    def snap_list(self) -> list[str]:
        return [self.snap, "list", "microk8s"]

    def get_node(self, node: str) -> list[str]:
        return [self.microk8s, "kubectl", "get", "node", node, "-o", "json"]

    def join(self, url: str, *, worker: bool) -> list[str]:
        return [self.microk8s, "join", url, *(["--worker"] if worker else [])]

    def addon(self, name: str, action: str, args: Sequence[str]) -> list[str]:
        """Raises ValueError for an action other than enable/disable."""
        if action not in ADDON_ACTIONS:
            raise ValueError(f"addon action must be enable or disable, not {action!r}")
        return [self.microk8s, action, name, *args]

    def refresh(self, channel: str) -> list[str]:
        return [self.snap, "refresh", "microk8s", f"--channel={channel}"]

    def cordon(self, node: str) -> list[str]:
        return [self.microk8s, "kubectl", "cordon", node]

    def uncordon(self, node: str) -> list[str]:
        return [self.microk8s, "kubectl", "uncordon", node]

    def drain(self, node: str, timeout_s: int) -> list[str]:
        return [
            self.microk8s,
            "kubectl",
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            f"--timeout={timeout_s}s",
        ]

    def remove_node(self, name: str) -> list[str]:
        """Raises ValueError unless `name` is a node name or an IPv4 address."""
        if not _REMOVABLE.fullmatch(name):
            raise ValueError(f"remove-node wants a node name or an IPv4 address, not {name!r:.80}")
        return [self.microk8s, "remove-node", name, "--force"]


SNAP_CURRENT = Path("/snap/microk8s/current")
"""snapd's link to the installed revision: it moves on every refresh, revert or install."""
STATIC_FACTS_MAX_AGE_S = 600.0
"""`microk8s version` and `snap list` are asked again at least this often, else only when the
revision link moves or a command ran: they change with a refresh, not between two."""


def _link_target(path: Path) -> str | None:
    try:
        return str(path.readlink())
    except OSError:
        return None


async def probe_cli(path: str) -> bool:
    """True when `path` (a name looked up on PATH, or a path) is an executable file."""
    return shutil.which(path) is not None


class CliBackend:
    """Reaches MicroK8s by running its CLI (`microk8s ...`, `snap ...`)."""

    name: str = "cli"

    def __init__(
        self,
        microk8s: str,
        snap: str,
        *,
        timeout_s: float,
        status_timeout_s: float,
        drain_timeout_s: float | None = None,
        run: Runner = process.run,
        snap_current: Path = SNAP_CURRENT,
    ) -> None:
        """Args:
        microk8s: the microk8s executable (name on PATH or path).
        snap: the snap executable.
        timeout_s: deadline of each mutating command.
        status_timeout_s: deadline of each query (`status` can hang while quorum is lost).
        drain_timeout_s: kubectl drain's own timeout; default (and at most) timeout_s minus
            KUBECTL_MARGIN_S.
        run: executes each argv (tests inject a recorder to see the exact plan).
        snap_current: the revision link that says when version and channel must be re-read.
        """
        self.argv = Argv(microk8s, snap)
        self._run = run
        self._timeout_s = timeout_s
        self._status_timeout_s = status_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._snap_current = snap_current
        # (revision link target, when, `microk8s version`, `snap list`) of the last good reading.
        self._static: tuple[str | None, float, _Result, _Result] | None = None

    # --- queries --------------------------------------------------------------------------

    async def facts(self) -> MicroK8sFacts:
        """Status, version and snap channel; never raises.

        Each `microk8s ...` runs kubectl or a Python script: version and channel are only asked
        again when the revision link moved, a command ran, or STATIC_FACTS_MAX_AGE_S passed.
        """
        revision, now, cached = _link_target(self._snap_current), time.monotonic(), self._static
        fresh = cached is not None and cached[0] == revision and revision is not None
        if fresh and cached is not None and now - cached[1] < STATIC_FACTS_MAX_AGE_S:
            status = await self._query(self.argv.status())
            return _combine(_status_facts(status), cached[2], cached[3])
        status, version, snap_list = await asyncio.gather(
            self._query(self.argv.status()),
            self._query(self.argv.version()),
            self._query(self.argv.snap_list()),
        )
        answers = (version, snap_list)
        good = all(isinstance(r, process.Completed) and r.exit_code == 0 for r in answers)
        self._static = (revision, now, version, snap_list) if good else None
        return _combine(_status_facts(status), version, snap_list)

    async def version(self) -> tuple[str | None, str | None]:
        """(version, revision) from `microk8s version`.

        Raises:
            BackendError: the command could not run, timed out or failed.
        """
        result = await self._query(self.argv.version())
        if not isinstance(result, process.Completed) or result.exit_code != 0:
            raise BackendError(
                f"microk8s version: {_why(result)}", kind=_kind(result), output=_output(result)
            )
        return parse_version(result.output)

    async def node_ready(self, node: str) -> tuple[bool | None, str | None]:
        """(Ready, kubelet version) via `microk8s kubectl get node`; (None, None) when unknown.

        Raises:
            BackendError: microk8s cannot be run at all.
        """
        result = await self._query(self.argv.get_node(node))
        if isinstance(result, ProcessError):
            raise BackendError(str(result), kind="process")
        if isinstance(result, CommandTimedOut) or result.exit_code != 0:
            return None, None
        return parse_node_ready(result.output)

    async def _query(self, argv: Sequence[str]) -> _Result:
        """Run a read-only command; expected failures come back as values, not exceptions."""
        try:
            return await self._run(argv, timeout_s=self._status_timeout_s)
        except (ProcessError, CommandTimedOut) as exc:
            return exc

    # --- mutations ------------------------------------------------------------------------

    async def join(self, url: str, *, worker: bool, progress: Progress) -> Outcome:
        argv = self.argv.join(url, worker=worker)
        return await self._act(argv, progress=progress, secrets=join_url_secrets(url))

    async def addon(
        self, name: str, action: str, args: Sequence[str], *, progress: Progress
    ) -> Outcome:
        return await self._act(self.argv.addon(name, action, args), progress=progress)

    async def refresh(self, channel: str, *, progress: Progress) -> Outcome:
        outcome = await self._act(self.argv.refresh(channel), progress=progress)
        if not outcome.ok:
            return outcome
        _, version = parse_refresh(outcome.output)
        return dataclasses.replace(outcome, result={"channel": channel, "version": version})

    async def cordon(self, node: str, *, progress: Progress) -> Outcome:
        return await self._act(self.argv.cordon(node), progress=progress)

    async def drain(self, node: str, *, progress: Progress) -> Outcome:
        argv = self.argv.drain(node, self.kubectl_drain_timeout())
        return await self._act(argv, progress=progress)

    async def uncordon(self, node: str, *, progress: Progress) -> Outcome:
        return await self._act(self.argv.uncordon(node), progress=progress)

    async def remove_node(self, name: str) -> Outcome:
        """`microk8s remove-node <name> --force` (what Canonical's charm runs for a dead node)."""
        return await self._act(self.argv.remove_node(name), progress=_quiet)

    def kubectl_drain_timeout(self) -> int:
        """Seconds given to kubectl drain's own --timeout (before our deadline, see the margin)."""
        limit = self._timeout_s - KUBECTL_MARGIN_S
        wanted = limit if self._drain_timeout_s is None else min(self._drain_timeout_s, limit)
        return max(1, int(wanted))

    async def _act(
        self, argv: Sequence[str], *, progress: Progress, secrets: Iterable[str] = ()
    ) -> Outcome:
        """Run a mutating command and turn whatever happens into an Outcome with masked output."""
        hidden = tuple(secrets)
        self._static = None  # a refresh (or a join) may change what version and channel say

        def mask(text: str) -> str:
            return mask_join_urls(mask_secrets(text, hidden))

        await progress(f"running {mask(shlex.join(argv))}")
        try:
            done = await self._run(argv, timeout_s=self._timeout_s)
        except ProcessError as exc:
            return Outcome(ok=False, exit_code=None, output="", error=mask(str(exc)))
        except CommandTimedOut as exc:
            output = process.tail(mask(exc.output), OUTPUT_TAIL_BYTES)
            error = f"timed out after {exc.limit_s:g} s"
            return Outcome(ok=False, exit_code=None, output=output, error=error, timed_out=True)
        output = process.tail(mask(done.output), OUTPUT_TAIL_BYTES)
        if done.exit_code != 0:
            error = _exit_error(done.exit_code, output)
            return Outcome(ok=False, exit_code=done.exit_code, output=output, error=error)
        return Outcome(ok=True, exit_code=0, output=output, error=None)


def _status_facts(status: _Result) -> MicroK8sFacts:
    if isinstance(status, ProcessError):
        return dataclasses.replace(NOT_INSTALLED, error=str(status))
    if isinstance(status, CommandTimedOut):
        error = f"microk8s status timed out after {status.limit_s:g} s"
        return MicroK8sFacts(installed=True, running=None, error=error)
    return parse_status(status.output, status.exit_code)


def _combine(facts: MicroK8sFacts, version: _Result, snap_list: _Result) -> MicroK8sFacts:
    """Fill version and channel in; `microk8s version` first, `snap list` as the fallback.

    snapd knowing the snap proves it is installed even when the microk8s command cannot run.
    """
    ver, rev = (None, None)
    if isinstance(version, process.Completed) and version.exit_code == 0:
        ver, rev = parse_version(version.output)
    snap = None
    if isinstance(snap_list, process.Completed) and snap_list.exit_code == 0:
        snap = parse_snap_list(snap_list.output)
    if snap is not None:
        ver, rev = ver or snap["version"], rev or snap["revision"]
        facts = dataclasses.replace(facts, channel=snap["channel"], confinement=snap["confinement"])
        if not facts.installed:
            facts = dataclasses.replace(facts, installed=True, running=None)
    facts = dataclasses.replace(facts, version=ver, revision=rev)
    if facts.installed and snap is None:
        facts = with_error(facts, f"channel unknown: snap list microk8s: {_why(snap_list)}")
    return facts


def _why(result: _Result) -> str:
    """One line saying how a command went wrong (or that its output was unreadable)."""
    if isinstance(result, ProcessError):
        return str(result)
    if isinstance(result, CommandTimedOut):
        return f"timed out after {result.limit_s:g} s"
    if result.exit_code != 0:
        return _exit_error(result.exit_code, result.output)
    return "unreadable output"


def _kind(result: _Result) -> str:
    if isinstance(result, ProcessError):
        return "process"
    if isinstance(result, CommandTimedOut):
        return "timeout"
    return "exit"


def _output(result: _Result) -> str:
    if isinstance(result, ProcessError):
        return ""
    return process.tail(result.output, OUTPUT_TAIL_BYTES)


def _exit_error(exit_code: int, output: str) -> str:
    """`exit code N: <last line>`; MicroK8s puts the reason on the last line (or a traceback's)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    head = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
    return f"{head}: {lines[-1][:300]}" if lines else head
