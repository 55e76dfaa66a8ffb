"""Operator commands, so that a person never hand-writes (or hand-signs) JSON.

`edge-agent keygen NAME` makes an Ed25519 key pair; `edge-agent send NODE VERB …` checks the node's
retained presence (about 2 s to fail on a wrong name or cluster), builds, signs and publishes a
command, then prints each status as it arrives; `edge-agent nodes` lists the nodes from their
retained presence, health and HA. Exit codes: agent.operator.exits. Broker, cluster and key come
from the operator configuration (agent.operator.settings); MQTT from agent.operator.session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from agent.commands import signing, wire
from agent.config_rules import NAME_RE
from agent.errors import AgentError, ConfigError
from agent.link import mqtt, operator_client
from agent.link.inbound import parse_object, section
from agent.link.topics import Topics
from agent.operator import exits, session
from agent.operator import settings as opsettings
from agent.operator.roster import Roster, age_text, nodes_of, offline_message

EXIT_CODES = {"succeeded": exits.OK, "failed": exits.FAILED, "timed_out": exits.FAILED}
TERMINAL = frozenset({"succeeded", "failed", "timed_out", "rejected"})

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


# -- pure helpers ---------------------------------------------------------------------------


def new_command_id(now: float, token: str | None = None) -> str:
    """`c-<UTC date and time>-<random>`: sortable by time, unique without coordination."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"c-{stamp}-{token or secrets.token_hex(4)}"


def build_envelope(node: str, verb: str, args: Mapping[str, Any], now: float) -> dict[str, Any]:
    """An unsigned v1 envelope; integer times so any JSON library signs the same bytes."""
    return {
        "v": wire.ENVELOPE_VERSION,
        "id": new_command_id(now),
        "verb": verb,
        "target": node,
        "args": dict(args),
        "issued_at": int(now),
    }


def verb_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The `args` object of the envelope from the parsed command line."""
    if ns.verb == "join":
        # `force` only when asked: it skips the HA gate (a join while quorum has no margin).
        return {"url": ns.url, "worker": ns.worker} | ({"force": True} if ns.force else {})
    if ns.verb == "addon":
        return {"name": ns.name, "action": ns.action, "args": list(ns.addon_args)}
    if ns.verb == "upgrade":
        return {"channel": ns.channel, "drain": not ns.no_drain, "force": ns.force}
    return {}


def describe(status: Mapping[str, Any]) -> str:
    """One human line per status update."""
    clock = time.strftime("%H:%M:%S", time.localtime(float(status.get("ts") or time.time())))
    parts = [clock, str(status.get("node")), str(status.get("id")), str(status.get("status"))]
    if status.get("duplicate"):
        parts.append("(duplicate)")
    for key in ("detail", "error"):
        if status.get(key):
            parts.append(str(status[key]))
    result = status.get("result")
    if isinstance(result, dict):
        parts.append(_describe_result(result))
    return "  ".join(part for part in parts if part)


def _describe_result(result: Mapping[str, Any]) -> str:
    if "health" in result:
        health = result.get("health") or {}
        ha = result.get("ha") or {}
        reasons = "; ".join(health.get("reasons") or [])
        text = f"health={health.get('status', 'unknown')} ha={ha.get('verdict', 'unknown')}"
        return f"{text} ({reasons})" if reasons else text
    return " ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict | list))


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, exits.REJECTED)


def node_rows(roster: Roster, now: float) -> list[list[str]]:
    """Table rows: node, presence, health (STALE with its age once offline), version, temp, seen.

    Sparkplug's rule: after a node's death its last values are stale; the age is the time since
    the health was produced, so an operator sees how old the figures are.
    """
    rows = [["NODE", "PRESENCE", "HEALTH", "ROLE", "VERSION", "TEMP", "LAST SEEN"]]
    for view in nodes_of(roster.nodes):
        status = view.health_status or "-"
        health_ts = view.stamp("health")
        if view.health is not None and not view.online:
            age = age_text(now - health_ts) if health_ts is not None else "?"
            status = f"STALE {status} ({age} old)"
        # Retained messages are anyone's: read nested fields only when they are objects.
        temp = section(view.health or {}, "system").get("temperature_c")
        stamps = [t for t in (view.stamp("state"), health_ts) if t is not None]
        presence = view.presence
        since = view.offline_since()
        if since is not None:
            presence = f"offline {age_text(now - since)}"
        rows.append(
            [
                view.name,
                presence,
                status,
                view.role or "-",
                str(view.microk8s("version") or "-"),
                "-" if not _is_number(temp) else f"{temp:.1f} C",
                f"{age_text(now - max(stamps))} ago" if stamps else "-",
            ]
        )
    return rows


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number of sane size (a peer's 10**400 must not crash the table)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return -1e15 < value < 1e15


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# -- argument parsing -----------------------------------------------------------------------


def node_name(value: str) -> str:
    """A target as argparse type: a node name, never a topic filter (`pi-01/#`)."""
    if not NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a node name (lowercase letters, digits and '-', 1-63 characters;"
            " no '/', '+' or '#')"
        )
    return value


def seconds(value: str) -> float:
    """A duration as argparse type: 0 to 7 days."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= number <= 86400 * 7:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 to 604800 seconds")
    return number


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=seconds,
        default=session.ROSTER_WAIT_S,
        metavar="S",
        help=f"seconds to read the retained messages (default {session.ROSTER_WAIT_S:g})",
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_const",
        const=True,
        default=argparse.SUPPRESS,
        help="print the raw JSON payloads instead of one line each",
    )


def _add_send_options(parser: argparse.ArgumentParser) -> None:
    """Everything `send` accepts, on the send parser and again on each verb (options anywhere)."""
    opsettings.add_options(parser)
    _add_output(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="S",
        help="seconds to wait for the terminal status (default 120)",
    )


def _add_send(sub: Subparsers) -> None:
    send = sub.add_parser(
        "send",
        help="sign and send a command to a node; follow its status",
        description="Exit codes: 0 succeeded, 1 failed or timed out, 2 usage, 3 no answer"
        " (unknown or offline node, no status in time), 4 rejected, 5 local error.",
    )
    _add_send_options(send)
    send.add_argument("node", type=node_name, help="the target node's name")
    verbs = send.add_subparsers(dest="verb", metavar="VERB", required=True)
    addon = verbs.add_parser("addon", help="addon enable|disable NAME [ARGS...]")
    addon.add_argument("action", choices=["enable", "disable"], help="enable or disable")
    addon.add_argument("name", help="addon name, e.g. dns or community/argocd")
    addon.add_argument("addon_args", nargs="*", metavar="ARGS", help="addon arguments")
    join = verbs.add_parser("join", help="join URL [--worker] [--force]")
    join.add_argument("url", help="IPv4:PORT/TOKEN[/FINGERPRINT] from microk8s add-node")
    join.add_argument("--worker", action="store_true", help="join as a worker node")
    join.add_argument(
        "--force", action="store_true", help="join even while the cluster's quorum has no margin"
    )
    upgrade = verbs.add_parser("upgrade", help="upgrade CHANNEL [--no-drain] [--force]")
    upgrade.add_argument("channel", help="snap channel, e.g. 1.33/stable")
    upgrade.add_argument("--no-drain", action="store_true", help="do not cordon and drain first")
    upgrade.add_argument("--force", action="store_true", help="allow a skip or a downgrade")
    status = verbs.add_parser("status", help="the node's current health and HA report")
    rebirth = verbs.add_parser(
        "rebirth", help="re-publish the node's retained birth, health and HA verdict now"
    )
    for verb in (addon, join, upgrade, status, rebirth):
        _add_send_options(verb)
    send.set_defaults(func=cmd_send)


def add_commands(sub: Subparsers) -> None:
    """Register keygen, send, nodes and operator-config on the main parser."""
    keygen = sub.add_parser("keygen", help="make an operator key pair NAME.key / NAME.pub")
    keygen.add_argument("name", help="key id; the files are NAME.key and NAME.pub")
    keygen.add_argument("--dir", type=Path, default=Path(), help="where to write (default .)")
    keygen.set_defaults(func=cmd_keygen)
    _add_send(sub)
    nodes = sub.add_parser(
        "nodes",
        help="list the nodes of a cluster from retained messages",
        description="Exit codes: 0 listed, 2 usage, 3 no nodes in the cluster, 5 local error.",
    )
    opsettings.add_options(nodes)
    _add_output(nodes)
    add_wait(nodes)
    nodes.set_defaults(func=cmd_nodes)
    show = sub.add_parser(
        "operator-config", help="print the effective operator configuration; exit 0 or 2"
    )
    opsettings.add_options(show)
    show.set_defaults(func=cmd_operator_config)


# -- commands -------------------------------------------------------------------------------


def cmd_keygen(ns: argparse.Namespace) -> int:
    try:
        private, public = signing.generate(ns.name, ns.dir)
    except signing.SigningError as exc:
        print(f"edge-agent keygen: {exc}", file=sys.stderr)
        return exits.LOCAL
    print(f"private key: {private} (keep it secret; mode 0600)")
    print(f"public key:  {public}")
    print(f"On every node, add {public.name} to commands.trusted_keys (key id {ns.name!r}).")
    print(f"Sign with it: --signing-key {private}, or signing_key in operator.toml.")
    return exits.OK


def load_settings(ns: argparse.Namespace, command: str) -> opsettings.OperatorSettings | None:
    """The operator settings, or None after printing every problem (the caller exits 2)."""
    try:
        return opsettings.resolve(ns)
    except ConfigError as exc:
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        return None


def cmd_operator_config(ns: argparse.Namespace) -> int:
    effective = load_settings(ns, "operator-config")
    if effective is None:
        return exits.USAGE
    print(opsettings.as_toml(effective), end="")
    return exits.OK


class OperatorExit(AgentError):
    """An expected end of an operator command: one line for stderr and its exit code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def run_command(
    ns: argparse.Namespace,
    command: str,
    main: Callable[[opsettings.OperatorSettings], Coroutine[Any, Any, int]],
) -> int:
    """Settings (exit 2 on a problem), then `main` under asyncio; errors become exit codes."""
    effective = load_settings(ns, command)
    if effective is None:
        return exits.USAGE
    try:
        return asyncio.run(main(effective))
    except OperatorExit as exc:
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        return exc.code
    except AgentError as exc:
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        return exits.LOCAL
    except KeyboardInterrupt:
        print(f"edge-agent {command}: interrupted", file=sys.stderr)
        return exits.INTERRUPTED


def cmd_send(ns: argparse.Namespace) -> int:
    return run_command(ns, "send", lambda effective: _send(ns, effective))


def cmd_nodes(ns: argparse.Namespace) -> int:
    return run_command(ns, "nodes", lambda effective: _nodes(ns, effective))


def _envelope(ns: argparse.Namespace, effective: opsettings.OperatorSettings) -> dict[str, Any]:
    envelope = build_envelope(ns.node, ns.verb, verb_args(ns), time.time())
    if effective.signing_key:
        envelope = signing.Signer.from_file(Path(effective.signing_key)).sign(envelope)
    return envelope


def preflight(roster: Roster, node: str, now: float) -> str | None:
    """Why a command to `node` would get no answer (unknown or offline), else None."""
    view = roster.nodes.get(node)
    if view is None or view.state is None:
        return roster.unknown_node_message(node)
    if not view.online:
        return offline_message(view, roster.cluster, now)
    return None


async def _send(ns: argparse.Namespace, effective: opsettings.OperatorSettings) -> int:
    envelope = _envelope(ns, effective)
    topics = Topics(effective.mqtt.prefix, effective.cluster, ns.node)
    reply = f"{topics.root}/reply/{secrets.token_hex(8)}"
    correlation = secrets.token_bytes(16)
    timeout = getattr(ns, "timeout", 120.0)
    async with session.connect(effective) as client:
        roster = Roster(effective.mqtt.prefix, effective.cluster)

        def target_seen(r: Roster) -> bool:
            return ns.node in r.nodes and r.nodes[ns.node].state is not None

        # The target's exact topic too: RabbitMQ 3.10 replays retained messages to exact
        # subscriptions only, so the roster's wildcards alone would never see the node there.
        await client.subscribe(topics.state)
        await session.read_roster(client, roster, until=target_seen)
        why = preflight(roster, ns.node, time.time())
        if why is not None:
            print(f"edge-agent send: {why}", file=sys.stderr)
            return exits.NO_ANSWER
        if effective.mqtt.protocol == 5:  # MQTT 3.1.1 has no Response Topic: R/cmd/{id} only
            await client.subscribe(reply)
        await client.subscribe(topics.cmd_status(envelope["id"]))
        await client.publish(
            topics.cmd, wire.encode(envelope), response_topic=reply, correlation_data=correlation
        )
        follower = _Follower(envelope["id"], reply, correlation, as_json=getattr(ns, "json", False))
        try:
            async with asyncio.timeout(timeout):
                return await follower.follow(client)
        except TimeoutError:
            what = "no terminal status" if follower.seen else "no answer"
            print(f"edge-agent send: {what} within {timeout:g} s", file=sys.stderr)
            return exits.NO_ANSWER


class _Follower:
    """Prints each distinct status of one command (it arrives on two topics) until terminal."""

    def __init__(self, command_id: str, reply: str, correlation: bytes, *, as_json: bool) -> None:
        self._id = command_id
        self._reply = reply
        self._correlation = correlation
        self._json = as_json
        self._printed: set[bytes] = set()
        self.seen = False

    async def follow(self, client: operator_client.OperatorClient) -> int:
        async for inbound in client.messages():
            status = self._status(inbound)
            if status is None or inbound.payload in self._printed:
                continue
            self._printed.add(inbound.payload)
            self.seen = True
            text = inbound.payload.decode() if self._json else describe(status)
            print(text, flush=True)
            if status.get("status") in TERMINAL:
                return exit_code(str(status["status"]))
        return exits.NO_ANSWER  # pragma: no cover - the stream only ends by raising

    def _status(self, inbound: mqtt.Inbound) -> dict[str, Any] | None:
        if inbound.topic == self._reply and inbound.correlation_data != self._correlation:
            return None
        if inbound.topic != self._reply and not inbound.topic.endswith(f"/cmd/{self._id}"):
            return None
        status = parse_object(inbound.payload)
        if not isinstance(status, dict):
            return None
        # An unreadable request is answered with id null, on the reply topic only.
        if status.get("id") != self._id and not (
            inbound.topic == self._reply and status.get("id") is None
        ):
            return None
        return status


async def _nodes(ns: argparse.Namespace, effective: opsettings.OperatorSettings) -> int:
    roster = Roster(effective.mqtt.prefix, effective.cluster)
    async with session.connect(effective) as client:
        await session.read_roster(client, roster, ns.wait)
    if not roster.nodes:
        print(
            f"edge-agent nodes: no nodes in cluster {effective.cluster!r}"
            f" ({roster.no_nodes_hint()})",
            file=sys.stderr,
        )
        return exits.NO_ANSWER
    if getattr(ns, "json", False):
        views = nodes_of(roster.nodes)
        body = {v.name: {"state": v.state, "health": v.health, "ha": v.ha} for v in views}
        print(json.dumps(body, indent=2))
    else:
        print(format_table(node_rows(roster, time.time())))
    return exits.OK
