"""Operator commands, so that a person never hand-writes (or hand-signs) JSON.

`edge-agent keygen NAME` makes an Ed25519 key pair; `edge-agent send … NODE VERB …` builds, signs
and publishes a command, then prints each status as it arrives (exit 0 succeeded, 1 failed or
timed out, 2 rejected, 3 no answer); `edge-agent nodes` lists the nodes from their retained
state and health. MQTT goes through agent.link.operator_client, a short-lived client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import signing, wire
from agent.errors import AgentError, ConfigError
from agent.link import mqtt, operator_client
from agent.link.topics import Topics
from agent.operator import settings as opsettings
from agent.settings import MqttSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
EXIT_NO_ANSWER = 3
EXIT_CODES = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "timed_out": EXIT_FAILED}
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
        return {"url": ns.url, "worker": ns.worker}
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
    return EXIT_CODES.get(status, EXIT_REJECTED)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def node_rows(
    states: Mapping[str, Mapping[str, Any]], healths: Mapping[str, Mapping[str, Any]], now: float
) -> list[list[str]]:
    """Table rows: node, presence, health status, MicroK8s version, temperature, last seen."""
    rows = [["NODE", "STATE", "STATUS", "VERSION", "TEMP", "LAST SEEN"]]
    for node in sorted(set(states) | set(healths)):
        state, health = states.get(node, {}), healths.get(node, {})
        temp = (health.get("system") or {}).get("temperature_c")
        version = (health.get("microk8s") or {}).get("version")
        stamps = [t for t in (state.get("ts"), health.get("ts")) if isinstance(t, int | float)]
        rows.append(
            [
                node,
                str(state.get("state", "unknown")),
                str(health.get("status", "-")),
                str(version or "-"),
                "-" if not _is_number(temp) else f"{temp:.1f} C",
                _age(now - max(stamps) if stamps else None),
            ]
        )
    return rows


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# -- argument parsing -----------------------------------------------------------------------


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 1883
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {value!r}")
    return host, int(port)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", type=_broker, default=("127.0.0.1", 1883), metavar="HOST[:PORT]"
    )
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--prefix", default="microk8s")
    parser.add_argument("--username", default="")
    parser.add_argument("--password-file", default="")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca-file", default="")
    parser.add_argument("--cert-file", default="")
    parser.add_argument("--key-file", default="", help="TLS client key (not the signing key)")
    parser.add_argument("--json", action="store_true", help="print raw JSON payloads")


def _mqtt(ns: argparse.Namespace) -> MqttSettings:
    host, port = ns.broker
    tls = ns.tls or bool(ns.ca_file or ns.cert_file)
    return MqttSettings(
        host=host,
        port=port,
        prefix=ns.prefix,
        username=ns.username,
        password_file=ns.password_file,
        tls=tls,
        ca_file=ns.ca_file,
        cert_file=ns.cert_file,
        key_file=ns.key_file,
    )


def _add_send(sub: Subparsers) -> None:
    send = sub.add_parser("send", help="sign and send a command to a node; follow its status")
    _add_connection(send)
    send.add_argument("--key", type=Path, help="operator private key NAME.key (key id = NAME)")
    send.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    send.add_argument("node")
    verbs = send.add_subparsers(dest="verb", metavar="VERB", required=True)
    addon = verbs.add_parser("addon", help="addon enable|disable NAME [ARGS...]")
    addon.add_argument("action", choices=["enable", "disable"])
    addon.add_argument("name")
    addon.add_argument("addon_args", nargs="*", metavar="ARGS")
    join = verbs.add_parser("join", help="join URL [--worker]")
    join.add_argument("url")
    join.add_argument("--worker", action="store_true")
    upgrade = verbs.add_parser("upgrade", help="upgrade CHANNEL [--no-drain] [--force]")
    upgrade.add_argument("channel")
    upgrade.add_argument("--no-drain", action="store_true")
    upgrade.add_argument("--force", action="store_true")
    verbs.add_parser("status", help="the node's current health and HA report")
    send.set_defaults(func=cmd_send)


def add_commands(sub: Subparsers) -> None:
    """Register keygen, send and nodes on the main parser (cli._extra_commands)."""
    keygen = sub.add_parser("keygen", help="make an operator key pair NAME.key / NAME.pub")
    keygen.add_argument("name")
    keygen.add_argument("--dir", type=Path, default=Path())
    keygen.set_defaults(func=cmd_keygen)
    _add_send(sub)
    nodes = sub.add_parser("nodes", help="list the nodes of a cluster from retained messages")
    _add_connection(nodes)
    nodes.add_argument("--wait", type=float, default=1.0, help="seconds to collect (1)")
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
        return 1
    print(f"private key: {private} (keep it secret; mode 0600)")
    print(f"public key:  {public}")
    print(f"On every node, add {public.name} to commands.trusted_keys (key id {ns.name!r}).")
    return 0


def cmd_operator_config(ns: argparse.Namespace) -> int:
    try:
        effective = opsettings.resolve(ns)
    except ConfigError as exc:
        print(f"edge-agent operator-config: {exc}", file=sys.stderr)
        return 2
    print(opsettings.as_toml(effective), end="")
    return 0


def cmd_send(ns: argparse.Namespace) -> int:
    try:
        return asyncio.run(_send(ns))
    except AgentError as exc:
        print(f"edge-agent send: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER


def cmd_nodes(ns: argparse.Namespace) -> int:
    try:
        return asyncio.run(_nodes(ns))
    except AgentError as exc:
        print(f"edge-agent nodes: {exc}", file=sys.stderr)
        return 1


def _envelope(ns: argparse.Namespace) -> dict[str, Any]:
    envelope = build_envelope(ns.node, ns.verb, verb_args(ns), time.time())
    if ns.key is not None:
        envelope = signing.Signer.from_file(ns.key).sign(envelope)
    return envelope


async def _send(ns: argparse.Namespace) -> int:
    envelope = _envelope(ns)
    topics = Topics(ns.prefix, ns.cluster, ns.node)
    reply = f"{topics.root}/reply/{secrets.token_hex(8)}"
    correlation = secrets.token_bytes(16)
    client_id = f"edge-agent-operator-{secrets.token_hex(4)}"
    async with operator_client.operator_client(_mqtt(ns), client_id) as client:
        await client.subscribe(reply)
        await client.subscribe(topics.cmd_status(envelope["id"]))
        await client.publish(
            topics.cmd,
            wire.encode(envelope),
            response_topic=reply,
            correlation_data=correlation,
        )
        follower = _Follower(envelope["id"], reply, correlation, as_json=ns.json)
        try:
            async with asyncio.timeout(ns.timeout):
                return await follower.follow(client)
        except TimeoutError:
            what = "no terminal status" if follower.seen else "no answer"
            print(f"edge-agent send: {what} within {ns.timeout:g} s", file=sys.stderr)
            return EXIT_NO_ANSWER


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
        return EXIT_NO_ANSWER  # pragma: no cover - the stream only ends by raising

    def _status(self, inbound: mqtt.Inbound) -> dict[str, Any] | None:
        if inbound.topic == self._reply and inbound.correlation_data != self._correlation:
            return None
        try:
            status = json.loads(inbound.payload)
        except ValueError:
            return None
        if not isinstance(status, dict):
            return None
        # An unreadable request is answered with id null, on the reply topic only.
        if status.get("id") != self._id and not (
            inbound.topic == self._reply and status.get("id") is None
        ):
            return None
        return status


async def _nodes(ns: argparse.Namespace) -> int:
    base = f"{ns.prefix}/{ns.cluster}/nodes"
    states: dict[str, dict[str, Any]] = {}
    healths: dict[str, dict[str, Any]] = {}
    client_id = f"edge-agent-operator-{secrets.token_hex(4)}"
    async with operator_client.operator_client(_mqtt(ns), client_id) as client:
        await client.subscribe(f"{base}/+/state")
        await client.subscribe(f"{base}/+/health")
        try:
            async with asyncio.timeout(ns.wait):
                async for inbound in client.messages():
                    _collect(inbound, base, states, healths)
        except TimeoutError:
            pass
    if ns.json:
        print(json.dumps({"state": states, "health": healths}, indent=2))
    else:
        print(format_table(node_rows(states, healths, time.time())))
    return 0


def _collect(
    inbound: mqtt.Inbound,
    base: str,
    states: dict[str, dict[str, Any]],
    healths: dict[str, dict[str, Any]],
) -> None:
    node, _, leaf = inbound.topic[len(base) + 1 :].partition("/")
    try:
        body = json.loads(inbound.payload)
    except ValueError:
        return
    if isinstance(body, dict):
        (states if leaf == "state" else healths)[node] = body
