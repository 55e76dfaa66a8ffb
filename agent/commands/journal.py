"""The durable journal of command ids: what makes "exactly once" survive restarts and crashes.

One JSON line per record, `{"id", "until", "status"}`, appended and fsync'd before the command
is acted on; the last line for an id is its last known status. A command whose last record is
`accepted` or `running` when the agent starts was interrupted (crash, kill, power cut) and is
reported `failed` with error `interrupted`, never run again.

The file stays small: `until` is the time after which a replay of the id is rejected as expired
anyway (expires_at + clock skew), so compaction drops those records, rewriting the file
atomically. If unexpired records alone exceed `commands.journal_max_bytes`, writes fail with a
StateError and new mutating commands are refused until ids expire: forgetting an unexpired id
would allow a replay to run twice.

The bound holds on write and on load (issue 11). Every unfinished command keeps
TERMINAL_LINE_MAX bytes of room for its final record (which is trimmed to fit), so a command
accepted at the bound can always record how it ended: without that, a command that succeeded
was reported `interrupted` after a kill -9. At start the file is read line by line, never whole,
and one far beyond the bound is not read at all (the journal is then broken: mutating commands
are refused, with the reason, until an operator moves it aside). Lines are decoded by the
untrusted-input decoder, so a line holding a lone surrogate is skipped instead of crashing every
start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import durable
from agent.errors import StateError
from agent.link import inbound
from agent.logs import get_logger

log = get_logger(__name__)

JOURNAL_FILE = "commands.journal"
NON_TERMINAL = frozenset({"accepted", "running"})
# Expired records leave memory at once past MEMORY_PRUNE_AT records (by the wall clock), and at
# least every PRUNE_EVERY_S once their window has really passed (by the monotonic clock, so a
# wall-clock jump forgets nothing early): a `status` result holds a whole health snapshot
# (~4 KiB), and waiting for the count alone let a node asked for its status every second grow
# by megabytes (found by bench/soak.py).
MEMORY_PRUNE_AT = 4096
PRUNE_EVERY_S = 10.0
TERMINAL_LINE_MAX = 1024
"""Room kept per unfinished command for its final record; final records are trimmed to fit."""
LOAD_LIMIT_FACTOR = 4
"""A journal more than this many times its bound is not loaded (it was not written by us)."""
TRIMMED_ERROR_CHARS = 300


@dataclasses.dataclass(slots=True)
class Record:
    id: str
    until: float
    status: dict[str, Any]
    durable: bool = True
    forget_at: float = math.inf
    """Monotonic time after which memory may drop the record; inf for records read at start."""

    @property
    def pending(self) -> bool:
        return self.durable and self.status.get("status") in NON_TERMINAL

    def line(self) -> bytes:
        """The journal line; a final status beyond TERMINAL_LINE_MAX loses output and result.

        The file only has to say how the command ended (for duplicates after a restart);
        memory keeps the whole status.
        """
        line = _encode(self.id, self.until, self.status)
        if len(line) <= TERMINAL_LINE_MAX or self.status.get("status") in NON_TERMINAL:
            return line
        keep = {k: v for k, v in self.status.items() if k not in ("output", "result", "error")}
        error = self.status.get("error")
        if isinstance(error, str):
            keep["error"] = error[:TRIMMED_ERROR_CHARS]
        return _encode(self.id, self.until, {**keep, "trimmed": True})


class Journal:
    """Index of known command ids (memory) backed by an append-only file (durable ids)."""

    def __init__(
        self,
        state_dir: Path,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = state_dir / JOURNAL_FILE
        self._max_bytes = max_bytes
        self._clock = clock
        self._monotonic = monotonic
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._torn = False
        self._next_prune = 0.0
        self.broken: str | None = None
        """Why the journal cannot be used at all (unreadable at start), or None."""

    def load(self) -> list[Record]:
        """Read the file, compact it, and return the records of interrupted commands.

        Never raises: an unreadable journal marks the journal broken (mutating commands are then
        refused) so that health keeps flowing.
        """
        try:
            lines = self._read_lines()
        except FileNotFoundError:
            lines = 0
        except (OSError, StateError) as exc:
            error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.broken = f"cannot read {self.path}: {error}"
            log.error("journal_unreadable", path=str(self.path), error=self.broken)
            return []
        interrupted = [r for r in self._records.values() if r.status.get("status") in NON_TERMINAL]
        if lines:
            # Rewrite without duplicates, but expire nothing: the wall clock may be wrong right
            # now (a forward jump), and forgetting an unexpired id would let its replay run.
            with self._lock, contextlib.suppress(StateError):
                self._compact_locked(expire=False)
        log.info("journal_loaded", records=len(self._records), interrupted=len(interrupted))
        return interrupted

    def _read_lines(self) -> int:
        """Index the file's records, line by line; returns the number of lines.

        Raises:
            OSError: unreadable. StateError: far beyond the bound (not ours; not read at all).
        """
        with durable.open_nofollow(self.path) as file:
            size = os.fstat(file.fileno()).st_size
            if size > LOAD_LIMIT_FACTOR * self._max_bytes:
                raise StateError(
                    f"it is {size} bytes, more than {LOAD_LIMIT_FACTOR} times"
                    f" commands.journal_max_bytes ({self._max_bytes}); move it aside"
                )
            count = 0
            for raw in file:
                count += 1
                record = _parse_line(raw)
                if record is not None:
                    self._records[record.id] = record
        return count

    def get(self, command_id: str) -> dict[str, Any] | None:
        """The last known status of `command_id`, or None for a new id."""
        record = self._records.get(command_id)
        return None if record is None else record.status

    def remember(self, command_id: str, status: dict[str, Any], until: float) -> None:
        """Keep a status in memory only (read-only commands; failed durable writes)."""
        with self._lock:
            known = self._records.get(command_id)
            durable = known.durable if known is not None else False
            self._keep(Record(command_id, until, status, durable))

    def write(self, command_id: str, status: dict[str, Any], until: float) -> None:
        """Record a status durably (fsync'd) before the caller acts on it.

        Raises:
            StateError: the state dir is unusable or the journal is full of unexpired ids.
        """
        if self.broken is not None:
            raise StateError(self.broken)
        record = Record(command_id, until, status)
        line = record.line()
        with self._lock:
            if not self._fits(record, line):
                self._compact_locked()
                if not self._fits(record, line):
                    raise StateError(
                        f"the command journal holds {self._size} bytes of unexpired ids"
                        f" (limit commands.journal_max_bytes = {self._max_bytes})"
                    )
            self._append(line)
            self._keep(record)

    def compact(self) -> None:
        """Rewrite the file atomically without the records whose replay window is over.

        Only done when the journal reaches its size bound (and on request), never at start-up.

        Raises:
            StateError: the file cannot be replaced.
        """
        with self._lock:
            self._compact_locked()

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    # -- internals (called with the lock held) ---------------------------------------------

    def _fits(self, record: Record, line: bytes) -> bool:
        """Room for `line` and, after it, TERMINAL_LINE_MAX per command still unfinished.

        Raises:
            StateError: the file cannot be opened.
        """
        try:
            self._open()  # the size is known once the file is open
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        pending = {r.id for r in self._records.values() if r.pending}
        pending.discard(record.id)
        if record.pending:
            pending.add(record.id)
        reserve = TERMINAL_LINE_MAX * len(pending)
        return self._size + 1 + len(line) + reserve <= self._max_bytes

    def _append(self, line: bytes) -> None:
        # After a failed write the file may end in half a line: start on a fresh one.
        data = (b"\n" if self._torn else b"") + line
        try:
            fd = self._open()
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self._torn = True
            self._close_fd()
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._torn = False
        self._size += len(data)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _keep(self, record: Record) -> None:
        """Index a record; its memory lifetime is what is left of its window, now."""
        now, elapsed = self._clock(), self._monotonic()
        record.forget_at = elapsed + max(0.0, record.until - now)
        self._records[record.id] = record
        if len(self._records) > MEMORY_PRUNE_AT:
            self._prune(now)
        elif elapsed >= self._next_prune:
            self._next_prune = elapsed + PRUNE_EVERY_S
            self._drop(lambda r: elapsed > r.forget_at)

    def _prune(self, now: float) -> None:
        self._drop(lambda r: now > r.until)

    def _drop(self, over: Callable[[Record], bool], *, durable_too: bool = False) -> None:
        """Forget ids in memory.

        Durable ids (mutating commands) are only forgotten when the journal reaches its size
        bound (`_compact_locked`): a clock that jumps back a few minutes would otherwise make a
        forgotten command look valid again, and its replay would run twice. Their memory is
        bounded by `commands.journal_max_bytes` anyway. A command that never finished is kept
        until it is reported interrupted.
        """
        for command_id in [
            i
            for i, r in self._records.items()
            if over(r)
            and (durable_too or not r.durable)
            and r.status.get("status") not in NON_TERMINAL
        ]:
            del self._records[command_id]

    def _compact_locked(self, *, expire: bool = True) -> None:
        if expire:
            now = self._clock()
            self._drop(lambda r: now > r.until, durable_too=True)
        data = b"".join(r.line() for r in self._records.values() if r.durable)
        self._close_fd()
        durable.atomic_write(self.path, data)
        self._size = len(data)
        self._torn = False
        log.debug("journal_compacted", bytes=len(data), records=len(self._records))


def _encode(command_id: str, until: float, status: dict[str, Any]) -> bytes:
    body = {"id": command_id, "until": round(until, 3), "status": status}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _parse_line(raw: bytes) -> Record | None:
    """One journal line, or None for a torn, foreign or undecodable line (a crash mid-write)."""
    body = inbound.parse_object(raw.strip())
    if isinstance(body, inbound.Invalid):
        return None
    command_id, until, status = body.get("id"), body.get("until"), body.get("status")
    if not isinstance(command_id, str) or not isinstance(status, dict):
        return None
    if isinstance(until, bool) or not isinstance(until, int | float):
        return None
    return Record(command_id, float(until), status)
