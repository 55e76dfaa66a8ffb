"""structlog configuration, done once from `cli`.

One pipeline for our events and for stdlib loggers (paho/aiomqtt, aiohttp, asyncio): JSON in
production, console on a TTY. Under journald (stdout is the journal stream) lines carry a `<N>`
syslog priority prefix and no timestamp, because journald adds its own.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

# Syslog priorities for journald's `SyslogLevelPrefix=` (systemd.exec(5)).
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
# Third-party loggers that chatter at INFO; they only surface warnings.
_QUIET_LOGGERS = ("aiohttp.access", "mqtt", "asyncio")


def stdout_is_journal(stream: TextIO | None = None) -> bool:
    """True when `$JOURNAL_STREAM` names this very stdout (not just any inherited value)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    stream = stream or sys.stdout
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


def _pick_format(fmt: str, stream: TextIO) -> str:
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


class _JournalFormatter(structlog.stdlib.ProcessorFormatter):
    """Prefixes each line with `<N>` so journald records the right priority."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        priority = _PRIORITY.get(record.levelname.lower(), 6)
        return f"<{priority}>{line}"


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one renderer on `stream` (stdout)."""
    stream = stream or sys.stdout
    journal = stdout_is_journal(stream)
    chosen = _pick_format(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
    ]
    if not journal:
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: Any
    if chosen == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty() and not journal)
    else:
        renderer = structlog.processors.JSONRenderer()
    formatter_cls = _JournalFormatter if journal else structlog.stdlib.ProcessorFormatter
    formatter = formatter_cls(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class DropLog:
    """Counts dropped messages and logs them as counts, never one line per message.

    A flood of junk (50k messages in 10 s) must not turn into 50k log lines on an SD card: the
    first drop of a burst is logged at once, later ones are summed into one line per
    `every_s` (the next drop after that interval carries the count).
    """

    def __init__(self, event: str, every_s: float = 10.0) -> None:
        self._log = get_logger("agent.drops")
        self._event = event
        self._every_s = every_s
        self._pending = 0
        self._next_at = 0.0
        self.total = 0

    def drop(self, now: float, **fields: Any) -> None:
        """Count one drop at monotonic time `now`; `fields` describe the latest one."""
        self.total += 1
        self._pending += 1
        if now >= self._next_at:
            self._log.warning(
                self._event, dropped=self._pending, dropped_total=self.total, **fields
            )
            self._pending = 0
            self._next_at = now + self._every_s
