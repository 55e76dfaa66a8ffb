"""`edge-agent dashboard`: its flags, its safety checks, and its exit codes.

The broker, cluster and TLS come from the operator configuration (agent.operator.settings), as
for `send` and `fleet`. Binding anywhere but loopback requires `--token-file`. aiohttp.web and
the MQTT watcher are imported only when the command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import logs
from agent.errors import ConfigError
from agent.operator import exits
from agent.operator import settings as opsettings
from agent.operator.dashboard import access

if TYPE_CHECKING:
    from agent.operator.dashboard.server import DashboardOptions

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_command(sub: Subparsers) -> None:
    """Register `dashboard` on the main parser (cli._extra_commands)."""
    parser = sub.add_parser(
        "dashboard",
        help="serve a read-only fleet page (HTML, /api/fleet JSON, /events live updates)",
        description="Serve a read-only page of one cluster's nodes, fed by their retained MQTT "
        "messages. It never sends a command.",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=9881, help="TCP port (default 9881)")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding an access token (16+ characters); required when --bind is not "
        "loopback. Put TLS (a reverse proxy) in front as well.",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="an online node's health older than this is shown STALE (default 90)",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log level (info)"
    )
    opsettings.add_options(parser)
    parser.set_defaults(func=cmd_dashboard)


def options_from(ns: argparse.Namespace) -> DashboardOptions:
    """Validated listening options.

    Raises:
        ConfigError: a bad port, an unreadable or weak token, or a non-loopback bind without one.
    """
    from agent.operator.dashboard.server import DashboardOptions

    problems: list[str] = []
    if not 1 <= ns.port <= 65535:
        problems.append(f"--port: {ns.port} is not a TCP port (1-65535)")
    if not ns.stale_after > 0:
        problems.append("--stale-after: must be more than 0 seconds")
    token = None
    if ns.token_file is not None:
        try:
            token = ns.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"--token-file: cannot read {str(ns.token_file)!r}: {exc}")
        else:
            why = access.check_token(token)
            if why:
                problems.append(f"--token-file: {why}")
    elif not access.is_loopback(ns.bind):
        problems.append(
            f"--bind {ns.bind}: the page would be readable by anyone who can reach it; give "
            "--token-file (and put TLS in front), or bind 127.0.0.1"
        )
    if problems:
        raise ConfigError(problems)
    return DashboardOptions(
        bind=ns.bind, port=ns.port, token=token, stale_after_s=float(ns.stale_after)
    )


async def _until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until SIGTERM, SIGINT or SIGHUP: each is a clean stop (nothing to save)."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def cmd_dashboard(ns: argparse.Namespace) -> int:
    try:
        operator = opsettings.resolve(ns)
        options = options_from(ns)
    except ConfigError as exc:
        print(f"edge-agent dashboard: {exc}", file=sys.stderr)
        return exits.USAGE
    logs.configure(ns.log_level or "info", "auto")
    from agent.operator.dashboard import server

    client_id = f"edge-agent-dashboard-{secrets.token_hex(4)}"
    host = f"[{options.bind}]" if ":" in options.bind else options.bind
    print(f"edge-agent dashboard: http://{host}:{options.port}/", file=sys.stderr, flush=True)
    try:
        asyncio.run(
            _until_signal(server.serve(operator.mqtt, operator.cluster, options, client_id))
        )
    except KeyboardInterrupt:
        return exits.OK
    except OSError as exc:
        print(f"edge-agent dashboard: cannot listen: {exc}", file=sys.stderr)
        return exits.LOCAL
    return exits.OK
