"""Small durable files in `state.dir`: the presence session counter.

Writes are atomic (temp file, fsync, rename, fsync of the directory) so a power cut on a Pi never
leaves a half-written counter. The counter is only persisted after a connection succeeded, so a
broker that stays away for a week does not wear the SD card with one write per retry.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from agent.errors import StateError

SESSION_FILE = "session"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably.

    Raises:
        StateError: when the directory is missing, read-only or full.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_session(state_dir: Path) -> int:
    """The last persisted session number, 0 when there is none.

    Raises:
        StateError: when the file exists but cannot be read or parsed.
    """
    path = state_dir / SESSION_FILE
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc


def write_session(state_dir: Path, session: int) -> None:
    atomic_write(state_dir / SESSION_FILE, f"{session}\n".encode("ascii"))
