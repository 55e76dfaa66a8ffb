"""Fuzzing kit for the command intake: strategies, the intake's pure checks, and the argv oracle.

The rules an accepted command must satisfy are written here again, independently of
agent.commands.verbs, from the text of docs/protocol.md (which follows PROTOCOL.md): if the agent's
own regexes drift (a `$` that also matches before a newline, a `\\d` that also matches Arabic
digits), the oracle disagrees. Character classes are spelled out in ASCII and everything is checked
with fullmatch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from agent.commands import signing, verbs, wire
from agent.commands.executor import Executor
from agent.commands.wire import Limits, Rejected
from agent.microk8s import process
from agent.microk8s.backends.cli import CliBackend
from agent.microk8s.status import MicroK8sFacts
from agent.settings import MicroK8sSettings
from tests.paths import FIXTURES, MICROK8S_CLI

NOW = 1_764_160_000
NODE = "pi-01"  # a node of the fixtures' kube/nodes.json
MAX_AGE_S, SKEW_S = 300, 60
LIMITS = Limits(node=NODE, max_age_s=MAX_AGE_S, clock_skew_s=SKEW_S)
MK, SNAP = "/snap/bin/microk8s", "/usr/bin/snap"
# A fixed key: every example, and so every signature, is reproducible.
SIGNER = signing.Signer("ops-1", bytes(range(32)))
VERIFIER = signing.Verifier({"ops-1": SIGNER.public_key})

# --- the oracle: docs/protocol.md, "Verbs" table ------------------------------------------
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a topic level on every broker
JOIN_URL = re.compile(
    r"(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}):(?P<port>[0-9]{1,5})"
    r"/[A-Za-z0-9]{32,256}(?:/[0-9a-fA-F]{12,64})?"
)
ADDON_NAME = re.compile(r"(?:[a-z0-9][a-z0-9-]*/)?[a-z0-9][a-z0-9-]*")
ADDON_ARG = re.compile(r"[A-Za-z0-9._:/,=@+-]{1,256}")
CHANNEL = re.compile(
    r"(?:latest|[0-9]{1,3}\.[0-9]{1,3}(?:-strict)?)/(?:stable|candidate|beta|edge)"
)
NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SECONDS = re.compile(r"--timeout=[0-9]+s")


def join_url_ok(text: str) -> bool:
    match = JOIN_URL.fullmatch(text)
    if match is None:
        return False
    parts = match["ip"].split(".")
    no_leading_zero = all(part == "0" or not part.startswith("0") for part in parts)
    octets = [int(part) for part in parts]
    return no_leading_zero and max(octets) <= 255 and 1 <= int(match["port"]) <= 65535


def _value(rule: re.Pattern[str] | Callable[[str], bool], text: str) -> bool:
    if isinstance(rule, re.Pattern):
        return rule.fullmatch(text) is not None
    return rule(text)


Slot = str | re.Pattern[str] | Callable[[str], bool]
QUERIES: list[list[Slot]] = [
    [MK, "status", "--format", "yaml"],
    [MK, "version"],
    [SNAP, "list", "microk8s"],
    [MK, "kubectl", "get", "node", NODE_NAME, "-o", "json"],
]
ACTIONS: list[list[Slot]] = [
    [MK, "join", join_url_ok],
    [MK, "join", join_url_ok, "--worker"],
    [SNAP, "refresh", "microk8s", lambda t: t.startswith("--channel=") and _value(CHANNEL, t[10:])],
    [MK, "kubectl", "cordon", NODE_NAME],
    [MK, "kubectl", "uncordon", NODE_NAME],
    [MK, "kubectl", "drain", NODE_NAME, "--ignore-daemonsets", "--delete-emptydir-data", SECONDS],
]


def _fits(argv: Sequence[str], shape: list[Slot]) -> bool:
    return len(shape) == len(argv) and all(
        word == slot if isinstance(slot, str) else _value(slot, word)
        for word, slot in zip(argv, shape, strict=True)
    )


def safe_argv(argv: Sequence[str]) -> bool:
    """Every element is a fixed word of a known command line or a value that passes its rule."""
    if len(argv) >= 3 and argv[0] == MK and argv[1] in ("enable", "disable"):
        values = argv[3:]
        return (
            _value(ADDON_NAME, argv[2])
            and len(argv[2]) <= 128
            and len(values) <= 16
            and all(_value(ADDON_ARG, v) for v in values)
        )
    return any(_fits(argv, shape) for shape in QUERIES + ACTIONS)


def is_query(argv: Sequence[str]) -> bool:
    return any(_fits(argv, shape) for shape in QUERIES)


# --- the intake's pure checks, in Dispatcher._admit's order ---------------------------------
def installed_facts(channel: str) -> MicroK8sFacts:
    strict = "strict" in channel
    return MicroK8sFacts(
        installed=True,
        running=True,
        version="v1.32.3",
        revision="7964",
        channel=channel,
        confinement="strict" if strict else "classic",
    )


def judge(
    payload: bytes, executor: Executor, *, retained: bool, allow_unsigned: bool, channel: str
) -> verbs.Command | Rejected:
    """What the intake decides for one request: the command to run, or why not.

    Mirrors Dispatcher._admit/_validate (decode, authenticate, envelope and arguments,
    availability and upgrade policy); any exception other than Rejected escapes.
    """
    try:
        decoded = wire.decode(payload)
        mutating = decoded.verb_text not in wire.READ_ONLY
        reason = VERIFIER.authenticate(
            decoded.body, mutating=mutating, allow_unsigned=allow_unsigned
        )
        if reason is not None:
            return Rejected(reason, decoded.command_id)
        command = verbs.read_request(decoded, LIMITS, NOW, retained=retained)
        if command.verb.mutating:
            reason = executor.unavailable()
            if reason is None and isinstance(command.args, verbs.UpgradeArgs):
                reason = executor.upgrade_refusal(command.args, installed_facts(channel))
            if reason is not None:
                return Rejected(reason, command.id)
    except Rejected as exc:
        return exc
    return command


# --- the plan: the real Executor and CliBackend, with a recorder instead of processes -------
STATUS_YAML = (MICROK8S_CLI / "status-ha.yaml").read_text()
VERSION = (MICROK8S_CLI / "version.txt").read_text()
NODES = json.loads((FIXTURES / "kube" / "nodes.json").read_text())["items"]


def version_of(channel: str) -> str:
    """What the fake snap installs for a track (tests/fakes/microk8s): 1.34/x -> v1.34.0."""
    match = re.match(r"([0-9]+)\.([0-9]+)", channel)
    return f"v{match[1]}.{match[2]}.0" if match else "v1.33.0"


class Recorder:
    """Stands in for process.run: records each argv and answers like tests/fakes/microk8s."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.version = "v1.32.3"
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], *, timeout_s: float) -> process.Completed:
        self.calls.append(list(argv))
        return process.Completed(tuple(argv), 0, self._output(list(argv)), False, 0.0)

    def _output(self, argv: list[str]) -> str:
        if argv[1:] == ["status", "--format", "yaml"]:
            return STATUS_YAML
        if argv[1:] == ["version"]:
            return VERSION.replace("v1.32.3", self.version)
        if argv[1:] == ["list", "microk8s"]:
            notes = "-" if "strict" in self.channel else "classic"
            return (
                "Name      Version  Rev   Tracking  Publisher   Notes\n"
                f"microk8s  {self.version}  7964  {self.channel}  canonical✓  {notes}\n"
            )
        if argv[1:3] == ["refresh", "microk8s"]:
            self.channel = argv[3].split("=", 1)[1]
            self.version = version_of(self.channel)
            return f"microk8s ({self.channel}) {self.version} from Canonical✓ refreshed\n"
        if argv[1:4] == ["kubectl", "get", "node"]:
            node = json.loads(json.dumps(NODES[0]))
            node["status"]["nodeInfo"]["kubeletVersion"] = self.version
            return json.dumps(node)
        return ""


def executor_for(recorder: Recorder) -> Executor:
    backend = CliBackend(MK, SNAP, timeout_s=600, status_timeout_s=30, run=recorder)
    settings = MicroK8sSettings(join_timeout_s=5)
    return Executor(backend, settings, node=NODE, ready_poll_s=0.001)


async def _no_progress(_detail: str) -> None:
    pass


def plan(loop: asyncio.AbstractEventLoop, command: verbs.Command, channel: str) -> list[list[str]]:
    """Every argv the real executor and CliBackend would run for an accepted command."""
    if isinstance(command.args, verbs.StatusArgs | verbs.RebirthArgs):
        return []  # answered by the intake itself, never executed
    recorder = Recorder(channel)
    loop.run_until_complete(executor_for(recorder).run(command, _no_progress))
    return recorder.calls


# --- strategies: valid requests ------------------------------------------------------------
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdefABCDEF"
LOWER = string.ascii_lowercase + string.digits
ARG_CHARS = ALNUM + "._:/,=@+-"
ID_CHARS = ALNUM + "_-"
RISKS = ("stable", "candidate", "beta", "edge")
INSTALLED = ("1.32-strict/stable", "1.32/stable")

ids = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(ID_CHARS, max_size=63))
# Few draws per example: hypothesis' per-draw cost, not the agent, bounds the fuzz tests' speed.
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
join_urls = st.builds(
    lambda ip, port, token, fp: f"{ip}:{port}/{token}" + (f"/{fp}" if fp else ""),
    ipv4,
    st.integers(1, 65535),
    st.text(ALNUM, min_size=32, max_size=256),
    st.none() | st.text(HEX, min_size=12, max_size=64),
)
addon_names = st.builds(
    lambda repo, head, tail: (f"{repo}/" if repo else "") + head + tail,
    st.none() | st.builds(str.__add__, st.sampled_from(LOWER), st.text(LOWER + "-", max_size=19)),
    st.sampled_from(LOWER),
    st.text(LOWER + "-", max_size=40),
)
addon_args = st.lists(st.text(ARG_CHARS, min_size=1, max_size=40), max_size=16) | st.sampled_from(
    [["10.0.0.200-10.0.0.220"], ["--set=a=b", "a" * 256], ["x"] * 16]
)
channel_names = st.builds(
    lambda track, risk: f"{track}/{risk}",
    st.just("latest")
    | st.builds(
        lambda major, minor, strict: f"{major}.{minor}{strict}",
        st.sampled_from([1, 1, 1, 0, 2, 999]),
        st.integers(0, 999),
        st.sampled_from(["", "-strict"]),
    ),
    st.sampled_from(RISKS),
)
VERB_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "join": st.fixed_dictionaries({"url": join_urls}, optional={"worker": st.booleans()}),
    "addon": st.fixed_dictionaries(
        {"name": addon_names, "action": st.sampled_from(["enable", "disable"])},
        optional={"args": addon_args},
    ),
    "upgrade": st.fixed_dictionaries(
        {"channel": channel_names}, optional={"drain": st.booleans(), "force": st.booleans()}
    ),
    "status": st.builds(dict),
    "rebirth": st.builds(dict),
}


@st.composite
def valid_bodies(draw: st.DrawFn, now: int = NOW) -> dict[str, Any]:
    """An unsigned envelope that is valid for NODE at `now`."""
    verb = draw(st.sampled_from(sorted(VERB_ARGS)))
    issued: float = now - draw(st.integers(-SKEW_S, MAX_AGE_S))
    if draw(st.booleans()):
        issued -= 0.5
    body = {"v": 1, "id": draw(ids), "verb": verb, "target": NODE, "issued_at": issued}
    body["args"] = draw(VERB_ARGS[verb])
    earliest = max(1, int(now - SKEW_S - issued) + 1)
    if draw(st.booleans()) and earliest <= MAX_AGE_S:
        body["expires_at"] = issued + draw(st.integers(earliest, MAX_AGE_S))
    return body


def payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def readable_id(raw: bytes) -> str | None:
    """The id a rejection must carry: from a UTF-8 JSON object of at most 64 KiB, else None."""
    if len(raw) > 64 * 1024:
        return None
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    command_id = body.get("id") if isinstance(body, dict) else None
    return command_id if isinstance(command_id, str) and ID.fullmatch(command_id) else None


def token_of(body: dict[str, Any]) -> str | None:
    """The join token in a request's url, if it has one (rejections must never repeat it)."""
    args = body.get("args")
    url = args.get("url") if isinstance(args, dict) else None
    match = re.search(r"/([A-Za-z0-9]{32,})", url) if isinstance(url, str) else None
    return match[1] if match else None
