"""agent.microk8s.process against real children: exit codes, output cap, group kill on timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.errors import CommandTimedOut, ProcessError
from agent.microk8s import process
from tests.paths import FAKES, MICROK8S_CLI


def _alive(pid: int) -> bool:
    """A zombie counts as dead: in a container nobody may reap an orphan that was killed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _wait_dead(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return not _alive(pid)


async def _wait_for_file(path: Path, within_s: float = 5.0) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never written")


@pytest.mark.parametrize("code", [0, 1, 3, 127])
async def test_exit_code_and_output(code: int) -> None:
    done = await process.run(["sh", "-c", f"echo out; echo err >&2; exit {code}"], timeout_s=10)
    assert done.exit_code == code
    assert done.output == "out\nerr\n"
    assert not done.truncated
    assert done.argv == ("sh", "-c", f"echo out; echo err >&2; exit {code}")
    assert 0 <= done.duration_s < 10


async def test_killed_by_signal_is_negative() -> None:
    done = await process.run(["sh", "-c", "kill -9 $$"], timeout_s=10)
    assert done.exit_code == -9


async def test_no_stdin() -> None:
    done = await process.run(["sh", "-c", "cat; echo done"], timeout_s=10)
    assert done.output == "done\n"


async def test_env_replaces_environment() -> None:
    done = await process.run(
        ["/usr/bin/env"], timeout_s=10, env={"ONLY": "this", "PATH": "/usr/bin:/bin"}
    )
    assert sorted(done.output.splitlines()) == ["ONLY=this", "PATH=/usr/bin:/bin"]


async def test_invalid_utf8_is_replaced() -> None:
    done = await process.run(["printf", r"ok \377\376 end"], timeout_s=10)
    assert done.output == "ok \ufffd\ufffd end"


async def test_output_keeps_the_tail() -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo LAST"
    done = await process.run(["sh", "-c", script], timeout_s=10, output_limit=1000)
    assert done.truncated
    assert len(done.output.encode()) <= 1000
    assert done.output.endswith("line-1999\nLAST\n")
    assert "line-0\n" not in done.output


async def test_truncation_never_splits_a_character() -> None:
    code = "import sys; sys.stdout.write('é' * 1000); sys.stdout.flush()"
    done = await process.run([sys.executable, "-c", code], timeout_s=10, output_limit=101)
    assert done.truncated
    assert done.output == "é" * 50


async def test_exactly_at_limit_is_not_truncated() -> None:
    done = await process.run(["printf", "abcd"], timeout_s=10, output_limit=4)
    assert (done.output, done.truncated) == ("abcd", False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/nonexistent/definitely-not-here"], "executable not found"),
        (["definitely-not-on-path-xyz"], "executable not found"),
        ([str(MICROK8S_CLI / "version.txt")], "permission denied"),
        (["/"], "permission denied"),
        ([], "empty command"),
    ],
)
async def test_cannot_start(argv: list[str], message: str) -> None:
    with pytest.raises(ProcessError, match=message):
        await process.run(argv, timeout_s=10)


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 30 & echo $! > {pidfile}; echo started; sleep 30"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        await process.run(["sh", "-c", script], timeout_s=0.5)
    assert time.monotonic() - started < 0.5 + process.KILL_GRACE_S + 2
    assert caught.value.limit_s == 0.5
    assert caught.value.output == "started\n"
    assert await _wait_dead(int(pidfile.read_text()))


async def test_timeout_sigkills_a_group_that_ignores_sigterm() -> None:
    script = "trap '' TERM; echo ignoring; while :; do sleep 0.05; done"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        await process.run(["sh", "-c", script], timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert process.KILL_GRACE_S <= elapsed + 0.05 < 0.3 + process.KILL_GRACE_S + 2
    assert "ignoring" in caught.value.output


async def test_timeout_kills_grandchild_of_fake_microk8s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SPAWN_CHILD", "1")
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "30")
    with pytest.raises(CommandTimedOut) as caught:
        await process.run([str(FAKES / "microk8s"), "version"], timeout_s=1.5)
    pid = int(caught.value.output.split("child pid ")[1].split()[0])
    assert await _wait_dead(pid)


async def test_orphans_holding_the_pipe_are_reaped_after_exit(tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan"
    script = f"sleep 30 & echo $! > {pidfile}; echo parent done"
    started = time.monotonic()
    done = await process.run(["sh", "-c", script], timeout_s=20)
    assert done.exit_code == 0
    assert done.output == "parent done\n"
    assert time.monotonic() - started < process.DRAIN_GRACE_S + 3
    assert await _wait_dead(int(pidfile.read_text()))


async def test_escaped_orphan_cannot_hold_a_finished_command(tmp_path: Path) -> None:
    # setsid leaves our process group, so the group kill cannot reach it; it keeps the pipe.
    pidfile = tmp_path / "escaped"
    script = f"setsid sleep 30 & echo $! > {pidfile}; echo parent done"
    started = time.monotonic()
    try:
        done = await process.run(["sh", "-c", script], timeout_s=20)
        assert (done.exit_code, done.output) == (0, "parent done\n")
        assert time.monotonic() - started < process.DRAIN_GRACE_S * 2 + 3
    finally:
        os.kill(int(await _wait_for_file(pidfile)), signal.SIGKILL)
    await asyncio.sleep(0.1)  # let asyncio see the pipe close


async def test_escaped_orphan_cannot_stretch_a_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped"
    script = f"setsid sleep 30 & echo $! > {pidfile}; sleep 30"
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimedOut):
            await process.run(["sh", "-c", script], timeout_s=0.3)
        assert time.monotonic() - started < 0.3 + process.KILL_GRACE_S * 2 + 3
    finally:
        os.kill(int(await _wait_for_file(pidfile)), signal.SIGKILL)
    await asyncio.sleep(0.1)


async def test_cancellation_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pidfile}; wait"
    task = asyncio.create_task(process.run(["sh", "-c", script], timeout_s=60))
    leader, grandchild = (int(p) for p in (await _wait_for_file(pidfile)).split())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_dead(leader)
    assert await _wait_dead(grandchild)


async def test_outer_timeout_cancels_and_kills(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; exec sleep 30"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await process.run(["sh", "-c", script], timeout_s=60)
    assert await _wait_dead(int(pidfile.read_text()))


async def test_runs_concurrently() -> None:
    started = time.monotonic()
    results = await asyncio.gather(
        *(process.run(["sh", "-c", f"sleep 0.5; echo {i}"], timeout_s=10) for i in range(5))
    )
    assert [r.output for r in results] == [f"{i}\n" for i in range(5)]
    assert time.monotonic() - started < 2.0  # one after the other would take 2.5 s


async def test_output_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        await process.run(["true"], timeout_s=1, output_limit=0)


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("hello", 4096, "hello"),
        ("hello", 3, "llo"),
        ("hello", 0, ""),
        ("aé", 2, "é"),
        ("aéb", 2, "b"),
        ("€uro", 5, "uro"),
        ("x" * 5000, 4096, "x" * 4096),
    ],
)
def test_tail(text: str, limit: int, expected: str) -> None:
    assert process.tail(text, limit) == expected
    assert len(process.tail(text, limit).encode()) <= limit


def test_tail_default_is_4_kib() -> None:
    assert len(process.tail("ü" * 3000).encode()) == 4096


def test_completed_is_frozen() -> None:
    done = process.Completed(("true",), 0, "", False, 0.0)
    with pytest.raises(AttributeError):
        done.exit_code = 1  # type: ignore[misc]
