"""The only place that spawns subprocesses.

Every child runs in its own session (so it and everything it forks form one process group), with
no shell, no stdin and a bounded output buffer. A deadline or a cancellation kills the whole group:
MicroK8s wrappers fork `kubectl`, `dqlite` and `snap` helpers that would otherwise outlive us.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from agent.errors import CommandTimedOut, ProcessError

DEFAULT_OUTPUT_LIMIT = 65_536
"""Bytes of merged stdout/stderr kept per command (the tail: errors come last)."""

KILL_GRACE_S = 1.0
"""Time between SIGTERM and SIGKILL of a process group."""

DRAIN_GRACE_S = 1.0
"""How long output may keep flowing after the direct child exited (from its leftover children)."""

_READ_CHUNK = 65_536
_EXIT_POLL_S = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class Completed:
    """A finished child: its exit code and the tail of its merged output."""

    argv: tuple[str, ...]
    exit_code: int
    """Exit status; negative N means killed by signal N (asyncio's convention)."""
    output: str
    """Merged stdout+stderr as UTF-8 (bad bytes replaced); at most output_limit bytes."""
    truncated: bool
    """True when earlier output was dropped to respect output_limit."""
    duration_s: float


class _TailBuffer:
    """Keeps the last `limit` bytes written to it; the end of a failing command says why."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("output_limit must be positive")
        self._limit = limit
        self._data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self._limit
        if excess > 0:
            del self._data[:excess]
            self.truncated = True

    def text(self) -> str:
        data = bytes(self._data)
        if self.truncated:
            data = _drop_partial_head(data)
        return data.decode("utf-8", errors="replace")


def _drop_partial_head(data: bytes) -> bytes:
    """Skip UTF-8 continuation bytes left at the start by a cut, so no U+FFFD appears there."""
    start = 0
    while start < min(len(data), 3) and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:]


def tail(text: str, limit_bytes: int = 4096) -> str:
    """Return at most the last `limit_bytes` bytes of `text` (UTF-8), never splitting a character.

    Wire messages carry only a bounded tail of command output (PROTOCOL: 4 KiB).
    """
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit_bytes:
        return text
    if limit_bytes <= 0:
        return ""
    return _drop_partial_head(data[-limit_bytes:]).decode("utf-8", errors="replace")


async def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    env: Mapping[str, str] | None = None,
    on_output: Callable[[bytes], None] | None = None,
) -> Completed:
    """Run `argv` (never through a shell) and return its exit code and output tail.

    Args:
        argv: program and arguments; the program is looked up on PATH like execvp does.
        timeout_s: deadline for the child to exit and close its output.
        output_limit: bytes of merged output kept (the last ones).
        env: the complete environment of the child; None inherits ours.
        on_output: called with each chunk of merged output as it arrives (for helpers that
            report progress while they run); it must not block.

    Raises:
        ProcessError: the program is missing or cannot be executed.
        CommandTimedOut: the deadline passed; the process group was killed.
        (Cancellation kills the process group too, then propagates.)
    """
    sink = _TailBuffer(output_limit)
    args = tuple(argv)
    started = time.monotonic()
    proc = await _spawn(args, env)
    reader = asyncio.create_task(_pump(proc, sink, on_output), name=f"process-output-{proc.pid}")
    try:
        async with asyncio.timeout(timeout_s):
            exit_code = await _wait_exit(proc, reader)
    except TimeoutError:
        await _stop_group(proc)
        await _settle(reader)
        raise CommandTimedOut(timeout_s, tail(sink.text())) from None
    except BaseException:
        # Cancellation (agent shutdown, command deadline upstream): the children must die too.
        await _stop_group(proc)
        raise
    finally:
        await _settle(reader)
    return Completed(args, exit_code, sink.text(), sink.truncated, time.monotonic() - started)


async def _spawn(
    argv: tuple[str, ...], env: Mapping[str, str] | None
) -> asyncio.subprocess.Process:
    """Start the child in a new session; translate exec failures into ProcessError."""
    if not argv or not argv[0]:
        raise ProcessError("cannot run an empty command")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        raise ProcessError(f"cannot run {argv[0]!r}: executable not found") from exc
    except PermissionError as exc:
        raise ProcessError(f"cannot run {argv[0]!r}: not executable (permission denied)") from exc
    except OSError as exc:
        raise ProcessError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc


async def _pump(
    proc: asyncio.subprocess.Process,
    sink: _TailBuffer,
    on_output: Callable[[bytes], None] | None = None,
) -> None:
    """Copy the child's output into the tail buffer (and to `on_output`) until EOF."""
    stream = proc.stdout
    if stream is None:  # not reached: _spawn always asks for a pipe
        return
    try:
        while chunk := await stream.read(_READ_CHUNK):
            sink.write(chunk)
            if on_output is not None:
                on_output(chunk)
    except OSError as exc:
        sink.write(f"\n[output read failed: {exc}]\n".encode())


async def _wait_exit(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> int:
    """Wait for the child to exit and its output to end.

    A child that exits while its own children still hold the pipe (`cmd &` in a wrapper) would
    keep us waiting until the deadline; after a short grace those orphans are killed. asyncio's
    `wait()` only returns once the pipe is closed too, hence the poll of `returncode`.
    """
    while not reader.done():
        await asyncio.wait({reader}, timeout=_EXIT_POLL_S)
        if proc.returncode is not None and not reader.done():
            await asyncio.wait({reader}, timeout=DRAIN_GRACE_S)
            if not reader.done():
                _signal_group(proc, signal.SIGKILL)
            return proc.returncode
    return await proc.wait()


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, give it KILL_GRACE_S, then SIGKILL whatever is left.

    The SIGKILL is sent from `finally`, so a second cancellation during the grace period still
    leaves no survivors; grandchildren that ignore SIGTERM die with it too.
    """
    _signal_group(proc, signal.SIGTERM)
    try:
        await _wait_bounded(proc, KILL_GRACE_S)
    finally:
        _signal_group(proc, signal.SIGKILL)
    await _wait_bounded(proc, KILL_GRACE_S)


async def _wait_bounded(proc: asyncio.subprocess.Process, within_s: float) -> None:
    """Wait for the exit, but not forever: asyncio's `wait()` also waits for the pipe to close,
    and a descendant that left the group (setsid) may hold it open for as long as it likes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            await proc.wait()


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # start_new_session=True made the child a session and group leader: its pgid is its pid.
    # A group that is already gone is the goal, not an error.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _settle(reader: asyncio.Task[None]) -> None:
    """Let the reader collect what a dying group wrote, but never wait on escaped orphans."""
    if not reader.done():
        await asyncio.wait({reader}, timeout=DRAIN_GRACE_S)
    if not reader.done():
        reader.cancel()
        await asyncio.wait({reader})
