"""Command line: argv and environment -> settings -> logging -> run; outcomes -> exit codes.

Agent exit codes: 0 clean stop, 1 crash (the service manager restarts us), 2 bad configuration
or usage (also a busy http.port, and a bare `edge-agent`, which prints help), 3 start-up failure.
The operator commands have their own codes: agent.operator.exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from agent import __version__, config, logs
from agent.errors import AgentError, ConfigError
from agent.platform import snap_paths

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3

Command = Callable[[argparse.Namespace], int]


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("EDGE_AGENT_CONFIG"),
        help="TOML configuration file (default: $EDGE_AGENT_CONFIG, else built-in defaults)",
    )


def _load(args: argparse.Namespace) -> config.Settings:
    # Inside the snap, no --config means the file the configure hook wrote.
    return config.load(args.config or snap_paths.default_config_path())


@contextlib.contextmanager
def _lean_imports() -> Iterator[None]:
    """Import the daemon's modules with OpenSSL's default CA *file* pointed at /dev/null, and
    without the system's MIME type table.

    aiohttp builds a verifying SSL context at import time, and loading the system CA bundle into
    it costs ~1 MiB for the agent's whole life. The daemon never uses that context: every HTTPS
    request it makes passes its own (the kubeconfig's CA, or unverified for the cluster agent and
    the probes). The default CA *directory* (looked up lazily, per verification) is left alone,
    and the variable is restored at once, so contexts built later trust the system CAs as usual.

    aiohttp.web also builds a `mimetypes.MimeTypes()` at import (for static files), which reads
    /etc/mime.types into the module's tables: ~0.4 MiB of dicts, again for life. The daemon
    serves JSON and metrics only and guesses no type, so the import sees no system files
    (Python's built-in table stays); `mimetypes.knownfiles` is restored at once.
    """
    import mimetypes

    saved = os.environ.get("SSL_CERT_FILE")
    saved_files = mimetypes.knownfiles
    os.environ["SSL_CERT_FILE"] = os.devnull
    mimetypes.knownfiles = []
    try:
        yield
    finally:
        mimetypes.knownfiles = saved_files
        if saved is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = saved


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(config.to_toml(config.as_dict(settings)), end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(args.log_level or settings.log.level, args.log_format or settings.log.format)
    log = logs.get_logger("agent.cli")
    with _lean_imports():
        from agent import app

        app.preload(settings)
    from agent.link import devbroker

    broker = None
    restart_reason: str | None = None
    try:
        if args.private_broker:
            broker = devbroker.ensure(settings.mqtt.host, settings.mqtt.port)
            devbroker.print_hints(settings)
        restart_reason = asyncio.run(app.main(settings))
    except KeyboardInterrupt:
        return EXIT_OK
    except ConfigError as exc:
        # Found at start-up (e.g. a busy http.port): one line each, as check-config would.
        for problem in exc.problems:
            print(f"edge-agent: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        log.error("startup_failed", error=str(exc))
        return EXIT_STARTUP
    except BaseExceptionGroup as group:
        for failure in group.exceptions:
            log.error(
                "agent_crashed", error=f"{type(failure).__name__}: {failure}", exc_info=failure
            )
        return EXIT_CRASH
    finally:
        if broker is not None:
            broker.stop()
    if restart_reason is not None:
        log.warning("agent_reexec", why=restart_reason)
        # Same interpreter, same arguments: a clean restart without relying on a supervisor.
        os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:]])  # noqa: S606
    return EXIT_OK


def build_parser(
    extra: Sequence[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = (),
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="MicroK8s edge node agent")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent")
    _add_config_arg(run)
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override log.level of the configuration",
    )
    run.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="override log.format (auto: console on a terminal, else JSON)",
    )
    run.add_argument(
        "--private-broker",
        action="store_true",
        help="lab use: start a private mosquitto when nothing listens on mqtt.host:port",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="print the effective configuration; exit 0 or 2")
    _add_config_arg(check)
    check.set_defaults(func=cmd_check_config)
    for add in extra:
        add(sub)
    return parser


def _extra_commands() -> list[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
]:
    """Subcommands that live in their own modules (operator tools, snap hook)."""
    from agent.operator import fleet, tools
    from agent.operator.dashboard import cli as dashboard_cli
    from agent.platform import snap_configure

    adders: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []
    adders.append(snap_configure.add_command)
    adders.append(tools.add_commands)
    adders.append(fleet.add_commands)
    adders.append(dashboard_cli.add_command)
    return adders


AGENT_COMMANDS = frozenset({"run", "check-config"})


def _agent_only(argv: Sequence[str]) -> bool:
    """True when argv names the agent itself: the daemon then never imports the operator tools
    and the snap hook, whose modules would stay resident for its whole life."""
    return bool(argv) and argv[0] in AGENT_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch. A bare `edge-agent` prints help (exit 2): starting a daemon, and
    creating its state directory, takes an explicit `edge-agent run`."""
    words = list(argv if argv is not None else sys.argv[1:])
    parser = build_parser(() if _agent_only(words) else _extra_commands())
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    func: Command = args.func
    return func(args)
