"""Upgrade policy: channel parsing, skew rule, downgrades, strict installations, force."""

from __future__ import annotations

import pytest

from agent.commands import upgrade_policy
from agent.commands.upgrade_policy import ChannelError, installed, parse_channel, refusal


@pytest.mark.parametrize(
    ("text", "track", "risk", "minor", "strict"),
    [
        ("1.33/stable", "1.33", "stable", (1, 33), False),
        ("1.33-strict/stable", "1.33-strict", "stable", (1, 33), True),
        ("1.32/candidate", "1.32", "candidate", (1, 32), False),
        ("1.34-strict/beta", "1.34-strict", "beta", (1, 34), True),
        ("latest/edge", "latest", "edge", None, False),
    ],
)
def test_parse_channel(
    text: str, track: str, risk: str, minor: tuple[int, int] | None, strict: bool
) -> None:
    channel = parse_channel(text)
    assert (channel.track, channel.risk, channel.minor, channel.strict) == (
        track,
        risk,
        minor,
        strict,
    )
    assert str(channel) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "stable",
        "1.33",
        "1.33/",
        "/stable",
        "1.33/stable/fix",
        "1.33-classic/stable",
        "1/stable",
        "latest-strict/edge",
        "1.33/Stable",
        "1.33/daily",
        "1.33 /stable",
    ],
)
def test_bad_channels(text: str) -> None:
    with pytest.raises(ChannelError):
        parse_channel(text)


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("v1.32.3", (1, 32)),
        ("1.33.0", (1, 33)),
        ("v1.30", (1, 30)),
        ("v1.32.3-eks", (1, 32)),
        (None, None),
        ("(unknown)", None),
        ("", None),
    ],
)
def test_parse_kube_version(text: str | None, minor: tuple[int, int] | None) -> None:
    assert upgrade_policy.parse_kube_version(text) == minor


CLASSIC_132 = installed("1.32/stable", "v1.32.3", "classic")
STRICT_132 = installed("1.32-strict/stable", "v1.32.3", "strict")

POLICY = [
    # current, target, force, expected refusal fragment (None = allowed)
    (CLASSIC_132, "1.33/stable", False, None),
    (CLASSIC_132, "1.32/stable", False, None),  # same minor: latest patch
    (CLASSIC_132, "1.32/edge", False, None),
    (CLASSIC_132, "1.34/stable", False, "one minor version at a time; upgrade to 1.33 first"),
    (CLASSIC_132, "1.34/stable", True, None),
    (CLASSIC_132, "1.31/stable", False, "would downgrade Kubernetes from 1.32 to 1.31"),
    (CLASSIC_132, "1.31/stable", True, None),
    (CLASSIC_132, "2.0/stable", False, "jumps from 1.32 to 2.0"),
    (CLASSIC_132, "latest/edge", False, "does not name a Kubernetes version"),
    (CLASSIC_132, "latest/edge", True, None),
    (CLASSIC_132, "1.33-strict/stable", False, "switch this classic MicroK8s to strict"),
    (CLASSIC_132, "1.33-strict/stable", True, None),
    (STRICT_132, "1.33-strict/stable", False, None),
    (STRICT_132, "1.34-strict/stable", False, "one minor version at a time"),
    (STRICT_132, "1.33/stable", False, "must stay on a -strict track (e.g. 1.33-strict/stable)"),
    (STRICT_132, "1.33/stable", True, "force does not change this"),
    (STRICT_132, "latest/edge", True, "must stay on a -strict track"),
    # strict detected from the snap's confinement alone, even on a plain-looking track
    (installed("1.32/stable", "v1.32.3", "strict"), "1.33/stable", True, "-strict track"),
    # strict detected from the track alone, when confinement is unknown
    (installed("1.32-strict/stable", None, None), "1.33/stable", True, "-strict track"),
    # version unknown: the channel's track stands in
    (installed("1.32/stable", None, "classic"), "1.34/stable", False, "from 1.32 to 1.34"),
    (installed(None, None, None), "1.33/stable", False, "version is unknown"),
    (installed(None, None, None), "1.33/stable", True, None),
    # the running version wins over the track (e.g. a track that moved on)
    (installed("latest/stable", "v1.31.9", "classic"), "1.33/stable", False, "from 1.31 to 1.33"),
]


@pytest.mark.parametrize(("current", "target", "force", "expected"), POLICY)
def test_upgrade_policy(
    current: upgrade_policy.Installed, target: str, force: bool, expected: str | None
) -> None:
    reason = refusal(current, parse_channel(target), force=force)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert expected in reason


def test_unreadable_current_channel_is_unknown_not_an_error() -> None:
    current = installed("weird", "v1.32.1", "classic")
    assert current.channel is None
    assert current.version == (1, 32)
    assert not current.strict
