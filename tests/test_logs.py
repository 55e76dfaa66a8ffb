"""Logging pipeline: JSON/console, journald priority prefixes, stdlib loggers routed through."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
import structlog

from agent import logs


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_json_lines_for_structlog_and_stdlib() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    logs.get_logger("agent.test").info("command_finished", command_id="c-1", duration_s=0.5)
    logging.getLogger("mqtt").warning("Connection lost, rc=7")
    logging.getLogger("aiohttp.access").info("hidden access line")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "command_finished"
    assert lines[0]["command_id"] == "c-1"
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]
    assert lines[1]["event"] == "Connection lost, rc=7"
    assert lines[1]["logger"] == "mqtt"
    assert len(lines) == 2


def test_auto_picks_json_when_not_a_tty() -> None:
    stream = io.StringIO()
    logs.configure("info", "auto", stream)
    logs.get_logger("x").info("hello_world")
    assert json.loads(stream.getvalue())["event"] == "hello_world"


def test_console_format() -> None:
    stream = io.StringIO()
    logs.configure("info", "console", stream)
    logs.get_logger("x").info("hello_world", node="pi-01")
    out = stream.getvalue()
    assert "hello_world" in out
    assert "node=pi-01" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_journald_prefix_and_no_timestamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "journal"
    with target.open("w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        logs.configure("debug", "json", stream)
        logs.get_logger("x").warning("disk_nearly_full", mount="/")
        logs.get_logger("x").error("collector_failed")
    lines = target.read_text().splitlines()
    assert lines[0].startswith("<4>{")
    assert lines[1].startswith("<3>{")
    assert "timestamp" not in json.loads(lines[0][3:])


def test_inherited_journal_stream_of_another_file_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert logs.stdout_is_journal(io.StringIO()) is False


def test_level_filters_debug() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    logs.get_logger("x").debug("noise")
    assert stream.getvalue() == ""
