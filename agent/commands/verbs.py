"""Pure per-verb argument validation: a checked `Envelope` in, typed arguments out.

Every value that later reaches a subprocess argv is checked here against the rules of
PROTOCOL.md (and MicroK8s' own rules for join URLs), so the backends only ever see arguments that
cannot be mistaken for options or carry shell-like surprises. Rejection reasons never repeat a
join token.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from agent.commands import upgrade_policy
from agent.commands.wire import Decoded, Envelope, Limits, Rejected, Verb, check_envelope, short
from agent.microk8s.redact import join_url_secrets

# Always applied with fullmatch (`$` alone also matches before a final newline) and spelled with
# [0-9] (`\d` matches any Unicode digit): what passes here goes into an argv verbatim.
JOIN_URL_RE = re.compile(
    r"^(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}):(?P<port>[0-9]{1,5})"
    r"/(?P<token>[A-Za-z0-9]{32,256})(?:/(?P<fingerprint>[0-9a-fA-F]{12,64}))?$"
)
JOIN_URL_FORMAT = "<IPv4>:<port>/<token>[/<fingerprint>]"
# Stricter than PROTOCOL.md on one point: the repository part may not start with "-" either,
# so no argv word can look like an option.
ADDON_NAME_RE = re.compile(r"^([a-z0-9][a-z0-9-]*/)?[a-z0-9][a-z0-9-]*$")
ADDON_ARG_RE = re.compile(r"^[A-Za-z0-9._:/,=@+-]{1,256}$")
ADDON_NAME_MAX = 128
ADDON_ARGS_MAX = 16
ADDON_ACTIONS = ("enable", "disable")


@dataclasses.dataclass(frozen=True, slots=True)
class JoinArgs:
    url: str
    worker: bool
    force: bool = False
    """Join even while the cluster's quorum has no margin (the HA gate is skipped)."""

    @property
    def host(self) -> str:
        return self.url.split(":", 1)[0]

    def secrets(self) -> tuple[str, ...]:
        return join_url_secrets(self.url)


@dataclasses.dataclass(frozen=True, slots=True)
class AddonArgs:
    name: str
    action: str
    args: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeArgs:
    channel: upgrade_policy.Channel
    drain: bool
    force: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StatusArgs:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class RebirthArgs:
    pass


Args = JoinArgs | AddonArgs | UpgradeArgs | StatusArgs | RebirthArgs


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A request that passed every check: what the executor runs."""

    envelope: Envelope
    args: Args

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def verb(self) -> Verb:
        return self.envelope.verb


RETAINED = (
    "retained command: publish commands with retain=false (a retained one is replayed at every"
    " subscription); clear it with an empty retained message on this topic"
)


def read_request(decoded: Decoded, limits: Limits, now: float, *, retained: bool) -> Command:
    """Everything after authentication that needs no I/O: retain flag, envelope, arguments.

    Raises:
        Rejected: naming the first problem found.
    """
    if retained:
        raise Rejected(RETAINED, decoded.command_id, decoded.verb_text)
    return parse(check_envelope(decoded, limits, now))


def parse(envelope: Envelope) -> Command:
    """Validate the envelope's args for its verb.

    Raises:
        Rejected: naming the bad argument and the rule it breaks.
    """
    checker = _Checker(envelope)
    parsers: dict[Verb, Callable[[], Args]] = {
        Verb.JOIN: checker.join,
        Verb.ADDON: checker.addon,
        Verb.UPGRADE: checker.upgrade,
        Verb.STATUS: checker.status,
        Verb.REBIRTH: checker.rebirth,
    }
    return Command(envelope, parsers[envelope.verb]())


class _Checker:
    """Reads one envelope's args; every failure becomes a Rejected carrying the id and verb."""

    def __init__(self, envelope: Envelope) -> None:
        self._env = envelope
        self._args: Mapping[str, Any] = envelope.args

    def reject(self, reason: str) -> Rejected:
        return Rejected(f"{self._env.verb.value}: {reason}", self._env.id, self._env.verb.value)

    def only(self, allowed: set[str], required: set[str]) -> None:
        unknown = sorted(set(self._args) - allowed)
        if unknown:
            raise self.reject(
                f"unknown argument(s) {short(', '.join(unknown))};"
                f" known: {', '.join(sorted(allowed))}"
            )
        missing = sorted(required - set(self._args))
        if missing:
            raise self.reject(f"missing argument(s): {', '.join(missing)}")

    def flag(self, key: str, default: bool) -> bool:
        value = self._args.get(key, default)
        if not isinstance(value, bool):
            raise self.reject(f"{key} must be true or false")
        return value

    def join(self) -> JoinArgs:
        self.only({"url", "worker", "force"}, {"url"})
        url = self._args["url"]
        if not isinstance(url, str) or not _valid_join_url(url):
            raise self.reject(
                f"url must be {JOIN_URL_FORMAT}: an IPv4 address (MicroK8s refuses host names"
                " and IPv6), a port, a token of at least 32 letters and digits and optionally"
                " a fingerprint of at least 12 hex digits (as printed by `microk8s add-node`)"
            )
        return JoinArgs(url=url, worker=self.flag("worker", False), force=self.flag("force", False))

    def addon(self) -> AddonArgs:
        self.only({"name", "action", "args"}, {"name", "action"})
        name, action = self._args["name"], self._args["action"]
        if (
            not isinstance(name, str)
            or len(name) > ADDON_NAME_MAX
            or not ADDON_NAME_RE.fullmatch(name)
        ):
            raise self.reject(
                "name must be an addon name like dns, core/dns or community/argocd"
                " (lowercase letters, digits and '-', optionally prefixed by a repository)"
            )
        if action not in ADDON_ACTIONS:
            raise self.reject("action must be enable or disable")
        return AddonArgs(name=name, action=str(action), args=self._addon_args())

    def _addon_args(self) -> tuple[str, ...]:
        values = self._args.get("args", [])
        if not isinstance(values, list):
            raise self.reject("args must be a list of strings")
        if len(values) > ADDON_ARGS_MAX:
            raise self.reject(f"at most {ADDON_ARGS_MAX} args, got {len(values)}")
        for index, value in enumerate(values):
            if not isinstance(value, str) or not ADDON_ARG_RE.fullmatch(value):
                raise self.reject(
                    f"args[{index}] must be 1-256 characters of A-Z a-z 0-9 . _ : / , = @ + -"
                )
        return tuple(values)

    def upgrade(self) -> UpgradeArgs:
        self.only({"channel", "drain", "force"}, {"channel"})
        text = self._args["channel"]
        if not isinstance(text, str):
            raise self.reject("channel must be a string like 1.33/stable")
        try:
            channel = upgrade_policy.parse_channel(text)
        except upgrade_policy.ChannelError as exc:
            raise self.reject(str(exc)) from None
        return UpgradeArgs(
            channel=channel, drain=self.flag("drain", True), force=self.flag("force", False)
        )

    def status(self) -> StatusArgs:
        self._no_args()
        return StatusArgs()

    def rebirth(self) -> RebirthArgs:
        self._no_args()
        return RebirthArgs()

    def _no_args(self) -> None:
        if self._args:
            raise self.reject(f'{self._env.verb.value} takes no args (send "args": {{}})')


def _valid_join_url(url: str) -> bool:
    match = JOIN_URL_RE.fullmatch(url)
    if match is None:
        return False
    # No leading zeros: some parsers read "010" as octal (8), so the node would join elsewhere.
    octets = match["ip"].split(".")
    octets_ok = all(int(octet) <= 255 and (octet == "0" or octet[0] != "0") for octet in octets)
    return octets_ok and 1 <= int(match["port"]) <= 65535
