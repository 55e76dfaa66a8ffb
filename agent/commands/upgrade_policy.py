"""Pure upgrade policy: snap channels, Kubernetes minor versions and what may follow what.

MicroK8s tracks are Kubernetes minor versions (`1.33`, `1.33-strict`) or `latest`. Kubernetes'
version-skew policy allows a cluster to hold versions N and N+1 only during a rolling upgrade, so
a node moves one minor version at a time and never backwards (MICROK8S.md §5) unless an operator
says `force`. A strictly confined MicroK8s cannot become a classic one by a refresh, so a strict
node stays on `-strict` tracks whatever `force` says.
"""

from __future__ import annotations

import dataclasses
import re

from agent.errors import AgentError

RISKS = ("stable", "candidate", "beta", "edge")
CHANNEL_RE = re.compile(
    r"^(?P<track>latest|(?P<major>[0-9]{1,3})\.(?P<minor>[0-9]{1,3})(?P<strict>-strict)?)"
    r"/(?P<risk>[a-z]+)$"
)
KUBE_VERSION_RE = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.\d+)?(?:[-+].*)?$")

Minor = tuple[int, int]


class ChannelError(AgentError):
    """A channel name that is not `<track>/<risk>` with a MicroK8s track."""


@dataclasses.dataclass(frozen=True, slots=True)
class Channel:
    text: str
    track: str
    risk: str
    minor: Minor | None
    """(major, minor) of a numbered track; None for `latest`."""
    strict: bool

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True, slots=True)
class Installed:
    """What is on the node now, as far as the backend could tell."""

    channel: Channel | None
    version: Minor | None
    strict: bool


def parse_channel(text: str) -> Channel:
    """`1.33/stable`, `1.33-strict/stable`, `latest/edge` → Channel.

    Raises:
        ChannelError: with the expected form.
    """
    match = CHANNEL_RE.fullmatch(text)
    if match is None:
        raise ChannelError(
            "channel must be <track>/<risk> with track 1.NN, 1.NN-strict or latest"
            " (e.g. 1.33/stable, 1.33-strict/stable, latest/edge)"
        )
    if match["risk"] not in RISKS:
        raise ChannelError(f"channel risk must be one of {', '.join(RISKS)}")
    minor = None if match["major"] is None else (int(match["major"]), int(match["minor"]))
    return Channel(text, match["track"], match["risk"], minor, strict=bool(match["strict"]))


def parse_kube_version(text: str | None) -> Minor | None:
    """`v1.32.3` → (1, 32); None when unknown or unreadable."""
    match = KUBE_VERSION_RE.match(text or "")
    return None if match is None else (int(match["major"]), int(match["minor"]))


def installed(channel: str | None, version: str | None, confinement: str | None) -> Installed:
    """Combine backend facts; a `-strict` track or a strict snap means strict."""
    parsed: Channel | None
    try:
        parsed = parse_channel(channel) if channel else None
    except ChannelError:
        parsed = None
    strict = confinement == "strict" or (parsed is not None and parsed.strict)
    return Installed(parsed, parse_kube_version(version), strict)


def _fmt(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


def refusal(current: Installed, target: Channel, *, force: bool) -> str | None:
    """Why the node must not move to `target`, or None when it may."""
    if current.strict and not target.strict:
        return (
            f"this MicroK8s is strictly confined and must stay on a -strict track"
            f" (e.g. {_strict_example(target)}); {target} is not one. force does not change this"
        )
    if force:
        return None
    if target.strict and not current.strict:
        return (
            f"{target} would switch this classic MicroK8s to strict confinement, which is a"
            " reinstall rather than an upgrade; set force to do it anyway"
        )
    return _skew_refusal(current, target)


def _skew_refusal(current: Installed, target: Channel) -> str | None:
    if target.minor is None:
        return (
            f"{target} does not name a Kubernetes version, so the one-minor-version rule cannot"
            " be checked; use a numbered track such as 1.33/stable, or set force"
        )
    now = current.version or (current.channel.minor if current.channel else None)
    if now is None:
        return (
            "the installed MicroK8s version is unknown, so the upgrade cannot be checked;"
            " set force to go ahead"
        )
    if target.minor < now:
        return (
            f"{target} would downgrade Kubernetes from {_fmt(now)} to {_fmt(target.minor)};"
            " set force to do it anyway"
        )
    if target.minor[0] != now[0] or target.minor[1] - now[1] > 1:
        return (
            f"{target} jumps from {_fmt(now)} to {_fmt(target.minor)}: Kubernetes allows one"
            f" minor version at a time; upgrade to {now[0]}.{now[1] + 1} first, or set force"
        )
    return None


def _strict_example(target: Channel) -> str:
    if target.minor is None:
        return "1.33-strict/stable"
    return f"{_fmt(target.minor)}-strict/{target.risk}"
