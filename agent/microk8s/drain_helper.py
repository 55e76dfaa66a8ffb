"""Parent side of the drain helper: spawn `python -m agent.microk8s.drain`, relay its progress.

The helper owns the Kubernetes client (and its 38 MiB); the agent only starts it through
`agent.microk8s.process` (own process group, deadline, bounded output), turns each JSON line into a
`running` detail as it arrives, and maps the exit code to an Outcome.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import CommandTimedOut, ProcessError
from agent.logs import get_logger
from agent.microk8s import process
from agent.microk8s.backends.base import Outcome, Progress
from agent.microk8s.kube_model import HelperExit, describe_event

log = get_logger(__name__)

VERBS = ("drain", "cordon", "uncordon")
START_MARGIN_S = 30.0
"""Added to the helper's own timeout: starting Python and the client takes seconds on a Pi."""
OUTPUT_TAIL_BYTES = 4096


class _Lines:
    """Splits the helper's output chunks into JSON events, queued for the progress relay."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue()
        self.result: Mapping[str, Any] | None = None
        self.lines: list[str] = []
        """What happened, for a person: each event described, other output kept as is."""
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                self.lines.append(line.decode(errors="replace"))  # a warning on stderr, say
                continue
            if event.get("event") == "result":
                self.result = event
                if event.get("error"):
                    self.lines.append(f"error: {event['error']}")
            if (detail := describe_event(event)) is not None:
                self.lines.append(detail)
            self.queue.put_nowait(event)

    def text(self) -> str:
        return "\n".join(self.lines)


async def _relay(lines: _Lines, progress: Progress) -> None:
    """Publish each new detail; a repeated one (waiting for pods, every second) only once."""
    last = None
    while (event := await lines.queue.get()) is not None:
        detail = describe_event(event)
        if detail is not None and detail != last:
            await progress(detail)
            last = detail


async def run(
    verb: str,
    *,
    kubeconfig: Path,
    node: str,
    timeout_s: float,
    progress: Progress,
    python: str = sys.executable,
) -> Outcome:
    """Run one helper verb to its end; failures come back as Outcomes, never raised."""
    if verb not in VERBS:
        raise ValueError(f"unknown helper verb {verb!r}")
    argv = [python, "-m", "agent.microk8s.drain", verb, "--kubeconfig", str(kubeconfig)]
    argv += ["--node", node, "--timeout", f"{timeout_s:g}"]
    lines = _Lines()
    relay = asyncio.create_task(_relay(lines, progress), name=f"kube-helper-{verb}-progress")
    try:
        done = await process.run(argv, timeout_s=timeout_s + START_MARGIN_S, on_output=lines.feed)
    except CommandTimedOut as exc:
        error = f"the {verb} helper did not finish within {exc.limit_s:g} s"
        return Outcome(False, None, process.tail(exc.output, OUTPUT_TAIL_BYTES), error, True)
    except ProcessError as exc:
        return Outcome(ok=False, exit_code=None, output="", error=str(exc))
    finally:
        lines.queue.put_nowait(None)
        await relay
    return _outcome(verb, node, done, lines)


def _outcome(verb: str, node: str, done: process.Completed, lines: _Lines) -> Outcome:
    output = process.tail(lines.text(), OUTPUT_TAIL_BYTES)
    result = lines.result
    peak_kib = result.get("max_rss_kib") if result else None
    log.info(
        "kube_helper_finished",
        verb=verb,
        node=node,
        exit_code=done.exit_code,
        duration_s=round(done.duration_s, 3),
        max_rss_mib=round(peak_kib / 1024, 1) if isinstance(peak_kib, int) else None,
    )
    if done.exit_code == HelperExit.OK:
        return Outcome(ok=True, exit_code=0, output=output, error=None, result=_extra(result))
    error = result.get("error") if result else None
    if not isinstance(error, str):
        error = _last_line(output) or f"the {verb} helper exited with code {done.exit_code}"
    timed_out = done.exit_code == HelperExit.TIMED_OUT
    return Outcome(False, done.exit_code, output, error, timed_out)


def _extra(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not result:
        return None
    extra = {k: v for k, v in result.items() if k not in {"event", "ok", "error"}}
    return extra or None


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
