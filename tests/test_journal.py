"""The command journal: durable across reloads, torn lines, compaction, bounds, broken dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import durable
from agent.commands.journal import JOURNAL_FILE, Journal
from agent.errors import StateError


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def status(command_id: str, value: str, **extra: object) -> dict[str, object]:
    return {"id": command_id, "verb": "addon", "node": "pi-01", "status": value, **extra}


def test_records_survive_a_reload_and_the_last_status_wins(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, clock=Clock())
    assert journal.load() == []
    journal.write("c-1", status("c-1", "accepted"), until=2000)
    journal.write("c-1", status("c-1", "succeeded", exit_code=0), until=2000)
    journal.write("c-2", status("c-2", "rejected", error="busy"), until=2000)
    journal.close()

    again = Journal(tmp_path, 1 << 20, clock=Clock())
    assert again.load() == []  # nothing was interrupted
    assert again.get("c-1") == status("c-1", "succeeded", exit_code=0)
    assert again.get("c-2") == status("c-2", "rejected", error="busy")
    assert again.get("c-3") is None


def test_non_terminal_records_are_reported_interrupted(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, clock=Clock())
    journal.load()
    journal.write("c-1", status("c-1", "accepted"), until=2000)
    journal.write("c-2", status("c-2", "accepted"), until=2000)
    journal.write("c-2", status("c-2", "failed"), until=2000)
    journal.close()
    # Even long after its window: an unfinished command is kept until it is reported.
    interrupted = Journal(tmp_path, 1 << 20, clock=Clock(99_999)).load()
    assert [record.id for record in interrupted] == ["c-1"]


def test_memory_only_records_are_not_durable(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 20, clock=Clock())
    journal.load()
    journal.remember("s-1", status("s-1", "succeeded"), until=2000)
    assert journal.get("s-1") is not None
    journal.close()
    again = Journal(tmp_path, 1 << 20, clock=Clock())
    again.load()
    assert again.get("s-1") is None


def test_torn_and_foreign_lines_are_skipped_and_compacted_away(tmp_path: Path) -> None:
    good = {"id": "c-1", "until": 2000, "status": status("c-1", "succeeded")}
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(
        json.dumps(good).encode()
        + b'\n[1]\n{"id": 5}\n\xff\xfe\n'
        + b'{"id":"c-2","until":2000,"status":{"id":"c-2","st'  # crash mid-write
    )
    journal = Journal(tmp_path, 1 << 20, clock=Clock())
    assert journal.load() == []
    assert journal.get("c-1") == good["status"]
    assert journal.get("c-2") is None
    # The next record starts on its own line and is readable after a reload.
    journal.write("c-3", status("c-3", "accepted"), until=2000)
    journal.close()
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line)["id"] in {"c-1", "c-3"} for line in lines)
    assert [r.id for r in Journal(tmp_path, 1 << 20, clock=Clock()).load()] == ["c-3"]


def test_expired_ids_are_dropped_but_unfinished_ones_kept(tmp_path: Path) -> None:
    clock = Clock(1000)
    journal = Journal(tmp_path, 1 << 20, clock=clock)
    journal.load()
    journal.write("old", status("old", "succeeded"), until=1500)
    journal.write("stuck", status("stuck", "accepted"), until=1500)
    journal.write("new", status("new", "succeeded"), until=5000)
    clock.now = 1501
    journal.compact()
    assert journal.get("old") is None
    assert journal.get("stuck") is not None
    assert journal.get("new") is not None
    ids = {json.loads(line)["id"] for line in (tmp_path / JOURNAL_FILE).read_bytes().splitlines()}
    assert ids == {"stuck", "new"}


def test_size_is_bounded_by_compaction(tmp_path: Path) -> None:
    clock = Clock(1000)
    journal = Journal(tmp_path, 4096, clock=clock)
    journal.load()
    for index in range(200):
        clock.now += 10
        # Each id's replay window ends 5 s after it is written.
        journal.write(f"c-{index}", status(f"c-{index}", "succeeded"), until=clock.now + 5)
        assert (tmp_path / JOURNAL_FILE).stat().st_size <= 4096
    assert journal.get("c-199") is not None
    assert journal.get("c-0") is None


def test_a_journal_full_of_unexpired_ids_refuses_writes(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 4096, clock=Clock(1000))
    journal.load()
    with pytest.raises(StateError, match=r"unexpired ids \(limit commands.journal_max_bytes"):
        for index in range(200):
            journal.write(f"c-{index}", status(f"c-{index}", "succeeded"), until=9999)
    # What was written before is intact and still known.
    assert journal.get("c-0") is not None
    assert (tmp_path / JOURNAL_FILE).stat().st_size <= 4096


def test_unreadable_journal_marks_it_broken(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).mkdir()  # unreadable as a file, even for root
    journal = Journal(tmp_path, 1 << 20)
    assert journal.load() == []
    assert journal.broken is not None
    with pytest.raises(StateError, match="cannot read"):
        journal.write("c-1", status("c-1", "accepted"), until=2000)


def test_unwritable_state_dir_raises_state_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state", 1 << 20)
    assert journal.load() == []  # no journal yet: fine
    (tmp_path / "state").write_text("now a file where the directory should be")
    with pytest.raises(StateError, match="cannot write"):
        journal.write("c-1", status("c-1", "accepted"), until=2000)
    assert journal.get("c-1") is None


def test_durable_ids_outlive_their_window_in_memory_until_the_size_bound(tmp_path: Path) -> None:
    # A clock stepped back a few minutes after the window passed would make the command look
    # valid again: the id must still be known then, so only the size bound may forget it.
    clock, elapsed = Clock(1000), Clock(0)
    journal = Journal(tmp_path, 1 << 20, clock=clock, monotonic=elapsed)
    journal.load()
    journal.write("mutating", status("mutating", "succeeded"), until=1300)
    journal.remember("read-only", status("read-only", "succeeded"), until=1300)
    clock.now, elapsed.now = 1400, 400
    journal.remember("later", status("later", "succeeded"), until=2000)
    assert journal.get("mutating") is not None
    assert journal.get("read-only") is None


def test_a_command_accepted_at_the_bound_can_always_record_its_end(tmp_path: Path) -> None:
    # Issue 11: at the bound the final write failed, and after a kill -9 the command that had
    # succeeded was reported `interrupted`; the file also outgrew its bound.
    journal = Journal(tmp_path, 4096, clock=Clock(1000))
    journal.load()
    accepted = []
    for index in range(100):
        command_id = f"c-{index}"
        try:
            journal.write(command_id, status(command_id, "accepted"), until=9999)
        except StateError:
            break
        accepted.append(command_id)
        done = status(command_id, "succeeded", output="x" * 3000, error="e" * 2000)
        journal.write(command_id, done, until=9999)  # must never raise
        assert (tmp_path / JOURNAL_FILE).stat().st_size <= 4096
    assert len(accepted) >= 3
    journal.close()
    again = Journal(tmp_path, 4096, clock=Clock(1000))
    assert again.load() == []  # nothing interrupted
    last = again.get(accepted[-1])
    assert last is not None and last["status"] == "succeeded" and last["trimmed"] is True


def test_a_line_with_a_lone_surrogate_is_skipped(tmp_path: Path) -> None:
    good = json.dumps({"id": "c-1", "until": 9999, "status": status("c-1", "succeeded")})
    bad = '{"id": "\\ud800", "until": 9999, "status": {"status": "accepted"}}'
    (tmp_path / JOURNAL_FILE).write_text(f"{bad}\n{good}\n")
    journal = Journal(tmp_path, 4096, clock=Clock(1000))
    assert journal.load() == []
    assert journal.get("c-1") is not None
    assert journal.broken is None


def test_a_journal_far_beyond_its_bound_is_not_loaded(tmp_path: Path) -> None:
    line = json.dumps({"id": "c-1", "until": 9999, "status": status("c-1", "succeeded")})
    (tmp_path / JOURNAL_FILE).write_text(f"{line}\n" * 400)  # ~40 KB for a 4 KiB bound
    journal = Journal(tmp_path, 4096, clock=Clock(1000))
    assert journal.load() == []
    assert journal.broken is not None and "move it aside" in journal.broken
    assert journal.get("c-1") is None
    with pytest.raises(StateError):
        journal.write("c-2", status("c-2", "accepted"), until=9999)


def test_symlinks_in_the_state_dir_are_not_followed(tmp_path: Path) -> None:
    # Issue 11: the root agent followed symlinks planted in state.dir.
    state, outside = tmp_path / "state", tmp_path / "shadow"
    state.mkdir()
    outside.write_bytes(b"secret\n")
    for name in (JOURNAL_FILE, f".{JOURNAL_FILE}.tmp", durable.SESSION_FILE, ".session.tmp"):
        (state / name).symlink_to(outside)
    journal = Journal(state, 4096, clock=Clock(1000))
    journal.load()
    assert journal.broken is not None  # the journal is a symlink: refused, not read
    with pytest.raises(StateError):
        durable.read_session(state)
    durable.write_session(state, 7)  # replaces the link itself
    assert durable.read_session(state) == 7
    (state / JOURNAL_FILE).unlink()
    fresh = Journal(state, 4096, clock=Clock(1000))
    fresh.load()
    fresh.write("c-1", status("c-1", "accepted"), until=9999)
    fresh.compact()  # through the planted .tmp link
    assert outside.read_bytes() == b"secret\n"
    assert not (state / JOURNAL_FILE).is_symlink()
