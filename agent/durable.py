"""Small durable files in `state.dir`: the presence session counter.

Writes are atomic (temp file, fsync, rename, fsync of the directory) so a power cut on a Pi never
leaves a half-written counter. The counter is only persisted after a connection succeeded, so a
broker that stays away for a week does not wear the SD card with one write per retry.

The agent may run as root: files in `state.dir` are opened with O_NOFOLLOW, and the temporary
file is created exclusively, so a symlink planted there cannot redirect a write (or a read) to
another file such as /etc/shadow (issue 11).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

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
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover (or a planted symlink: unlink removes the link itself)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # rename() replaces a symlink at `path` itself, never its target.
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
        with open_nofollow(path) as handle:
            return int(handle.read(64).decode("ascii").strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc


def open_nofollow(path: Path) -> BinaryIO:
    """Open an existing file of `state.dir` for reading; a symlink raises OSError (ELOOP).

    Raises:
        OSError: including FileNotFoundError.
    """
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def write_session(state_dir: Path, session: int) -> None:
    atomic_write(state_dir / SESSION_FILE, f"{session}\n".encode("ascii"))
