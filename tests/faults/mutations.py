"""Near-valid requests for the fuzz tests: a valid envelope with one thing changed.

Each mutation changes one field (or one argument, or one part of it): its type, its length, its
characters, its pattern, its value range; or adds a key, drops one, tampers with the signature or
damages the bytes. Most requests are signed after the change, so the checks behind the signature
are what gets exercised; some are signed before it, which the signature check must catch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from hypothesis import strategies as st

from agent.commands import wire
from tests.faults.fuzzing import (
    INSTALLED,
    LIMITS,
    NODE,
    NOW,
    SIGNER,
    payload,
    valid_bodies,
)

MAX = 64 * 1024
SPECIALS = (
    "\n", "\r", "\x00", "\x1b", " ", "\t", ";", "$", "`", "|", "&", "'", '"', "\\", "/", "-",
    "=", "*", "?", "..", "$(id)", "\u0663", "é", "İ", "\u202e", "\ufeff", "\u0085", "\u2028",
    "\uff10", "🙂",
)  # fmt: skip
chars = st.sampled_from(SPECIALS) | st.characters(codec="utf-8")
json_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([10**400, -(10**400), 2**63, -1, 0, 1e308, -0.0, "", "1", [], {}])
    | st.text(max_size=20)
    | st.lists(st.integers() | st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One request and the context it arrives in."""

    body: dict[str, Any]
    payload: bytes
    kind: str
    retained: bool = False
    allow_unsigned: bool = False
    channel: str = INSTALLED[0]
    signed_before: dict[str, Any] | None = None
    """The valid signed body the mutation was applied to (signature then no longer matches)."""


@st.composite
def perturbed(draw: st.DrawFn, text: str) -> str:
    """`text` with one change of length or character set."""
    how = draw(st.sampled_from(["insert", "replace", "delete", "cut", "append", "long", "case"]))
    at = draw(st.integers(0, len(text)))
    char = draw(chars)
    if how == "insert":
        return text[:at] + char + text[at:]
    if how == "replace":
        return text[:at] + char + text[at + 1 :]
    if how == "delete":
        return text[:at] + text[at + 1 :]
    if how == "cut":
        return text[:at]
    if how == "append":
        return text + char
    if how == "long":
        return (text or "a") * draw(st.integers(2, 300))
    return text.swapcase()


def _paths(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every field and argument (and addon arg item) of a body, as key paths."""
    paths: list[tuple[Any, ...]] = [(key,) for key in body]
    args = body.get("args")
    if isinstance(args, dict):
        paths += [("args", key) for key in args]
        values = args.get("args")
        if isinstance(values, list):
            paths += [("args", "args", index) for index in range(len(values))]
    return paths


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(body, path[:-1])[path[-1]] = value


@st.composite
def _generic(draw: st.DrawFn, body: dict[str, Any], now: int) -> str:
    """Drop, retype or perturb one field or argument; or add an unknown key."""
    paths = _paths(body)
    how = draw(st.sampled_from(["drop", "retype", "perturb", "extra"]))
    path = draw(st.sampled_from(paths))
    if how == "extra":
        where = body if draw(st.booleans()) or not isinstance(body["args"], dict) else body["args"]
        key = draw(st.text(max_size=8) | st.sampled_from(["Target", "args ", "worker", "sig2"]))
        where[key] = draw(json_values)
    elif how == "drop":
        del _get(body, path[:-1])[path[-1]]
    elif how == "retype":
        _set(body, path, draw(json_values))
    else:
        strings = [p for p in paths if isinstance(_get(body, p), str)]
        path = draw(st.sampled_from(strings))
        _set(body, path, draw(perturbed(_get(body, path))))
    return f"{how}:{'.'.join(map(str, path))}"


@st.composite
def _times(draw: st.DrawFn, body: dict[str, Any], now: int) -> str:
    skew, age = LIMITS.clock_skew_s, LIMITS.max_age_s
    how = draw(st.sampled_from(["future", "expired", "inverted", "too_long", "odd", "odd_exp"]))
    late = draw(st.integers(1, 10**6))
    if how == "future":
        body["issued_at"] = now + skew + late
    elif how == "expired":
        body.pop("expires_at", None)
        body["issued_at"] = now - age - skew - late
    elif how == "inverted":
        body["expires_at"] = body["issued_at"] - draw(st.integers(0, 100))
    elif how == "too_long":
        body["expires_at"] = body["issued_at"] + age + late
    else:
        key = "issued_at" if how == "odd" else "expires_at"
        body[key] = draw(json_values | st.sampled_from([float("inf"), float("nan")]))
    return f"times:{how}"


URL_PARTS = (
    "256.0.0.1:25000/{t}", "127.0.0:25000/{t}", "127.0.0.11.2:25000/{t}", "node1:25000/{t}",
    "[::1]:25000/{t}", "127.0.0.11:0/{t}", "127.0.0.11:65536/{t}", "127.0.0.11:/{t}",
    "127.0.0.11/{t}",
    "127.0.0.11:25000/{t}/abcdef01234", "127.0.0.11:25000/{t}/abcdefg12345",
    "https://127.0.0.11:25000/{t}", "127.0.0.11:25000/{t}/", "127.0.0.11:25000/{t}?x=1",
    "127.0.0.11:25000/{t} --worker", " 127.0.0.11:25000/{t}",
    "127.0.0.11:25000/{t}\n", "\u0661\u0660.0.0.1:25000/{t}", "127.0.0.11:\uff125000/{t}",
    "-127.0.0.11:25000/{t}",
    "127.0.0.11:25000/{t}/{t}", "0127.000.000.011:25000/{t}", "127.0.0.11:25000//{t}",
)  # fmt: skip
NAMES = (
    "DNS", "-dns", "--help", "core//dns", "a/b/c", "/dns", "dns/", "dns\n", "dns ", "dné", "dns;id",
    "-/dns", "core/-dns", "\uff44\uff4e\uff53", "d" * 129, "", "dns:arg", "dns.x", "../dns",
    "core/DNS",
)  # fmt: skip
ARGS = ("", " ", "a b", ";reboot", "$(id)", "`id`", "a\nb", "a\n", "é", "x" * 257, "a|b", "a&b")
CHANNELS = (
    "1.33", "1.33/", "/stable", "1.33/Stable", "1.33/stable/hotfix", "1.33/stable\n",
    "\u0661.\u0663\u0663/stable",
    "latest", "v1.33/stable", "--channel=x", "1.33/stable --classic", " 1.33/stable",
    "1.1234/stable",
    "1.33-classic/stable", "latest/stable-x", "1.33-strict/", "LATEST/edge", "1.33/edge\x00",
)  # fmt: skip
TARGETS = (
    "pi-02",
    "PI-01",
    "pi-01 ",
    "pi-01\n",
    "",
    "pi-0",
    "*",
    "+",
    "#",
    "pi-01/cmd",
    "p\u0456-01",
)
IDS = ("", ".c", "-c", "c" * 65, "c/1", "c+1", "c#1", "c 1", "c\n", "é", "c\x00", "_c", "c?")
# Valid before: NATS refuses `.` in a topic level (and drops the connection), RabbitMQ maps it.
TOPIC_UNSAFE_IDS = ("c.1", "c:1", "a.b.c")


@st.composite
def _specific(draw: st.DrawFn, body: dict[str, Any], now: int) -> str:
    """Values just outside one rule: url parts, addon names/args, channels, targets, ids."""
    args = body["args"]
    verb = body["verb"]
    # The verb's own rules first: hypothesis draws the first choices of a list more often.
    field = draw(st.sampled_from([*OWN_RULES[verb], *COMMON_RULES]))
    if field == "url":
        token = "a" * draw(st.sampled_from([31, 32, 257]))
        args["url"] = draw(st.sampled_from(URL_PARTS)).format(t=token)
    elif field == "addon_name":
        args["name"] = draw(st.sampled_from(NAMES))
    elif field == "addon_args":
        values = list(args.get("args", []))
        values.insert(draw(st.integers(0, len(values))), draw(st.sampled_from(ARGS)))
        args["args"] = ["a"] * 17 if draw(st.integers(0, 5)) == 0 else values
    elif field == "channel":
        args["channel"] = draw(st.sampled_from(CHANNELS))
    elif field == "target":
        body["target"] = draw(st.sampled_from(TARGETS))
    elif field == "id":
        body["id"] = draw(st.sampled_from(IDS + TOPIC_UNSAFE_IDS))
    elif field == "v":
        body["v"] = draw(st.sampled_from([0, 2, "1", 1.0, True, None, [1]]))
    elif field == "verb":
        body["verb"] = draw(
            st.sampled_from(["join", "addon", "upgrade", "status", "rebirth", "reboot"])
        )
    elif field == "flag":
        flag = {"join": "worker", "upgrade": "force"}.get(verb, "drain")
        args[flag] = draw(st.sampled_from(["true", 1, 0, None, [], "false"]))
    else:
        body["verb"] = draw(st.sampled_from(sorted(wire.READ_ONLY)))
        body["args"] = draw(st.sampled_from([{"x": 1}, {"url": "x"}]))
    return field


OWN_RULES = {
    "join": ["url", "url"],
    "addon": ["addon_args", "addon_name"],
    "upgrade": ["channel", "channel"],
    "status": [],
    "rebirth": [],
}
COMMON_RULES = ["target", "id", "v", "verb", "flag", "status_args"]


def _tamper(draw: st.DrawFn, body: dict[str, Any]) -> str:
    """Damage the signature of a signed body."""
    how = draw(st.sampled_from(["flip", "drop_sig", "drop_key", "unknown_key", "short", "not_b64"]))
    sig = body["sig"]
    if how == "flip":
        at = draw(st.integers(0, len(sig) - 3))
        body["sig"] = sig[:at] + ("A" if sig[at] != "A" else "B") + sig[at + 1 :]
    elif how == "drop_sig":
        del body["sig"]
    elif how == "drop_key":
        del body["key_id"]
    elif how == "unknown_key":
        body["key_id"] = draw(st.sampled_from(["ops-2", "", "ops-1\n", "OPS-1"]))
    elif how == "short":
        body["sig"] = sig[:40]
    else:
        body["sig"] = sig[:-4] + "!!!="
    return f"signature:{how}"


MUTATORS = {"specific": _specific, "generic": _generic, "times": _times}


# Hypothesis draws the first entries of a list more often: the most searching mode comes first.
MODES = ("after", "unsigned", "before", "after", "tamper", "valid", "after", "retained")


@st.composite
def requests(draw: st.DrawFn, now: int = NOW) -> Case:
    """A valid request, or one with exactly one change, in a drawn context.

    Modes: `valid` (signed, or an unsigned status or rebirth), `retained` (valid but retained),
    `after` (changed, then signed), `before` (signed, then changed), `unsigned` (changed, no
    signature, allow_unsigned drawn), `tamper` (valid, signature damaged).
    """
    # A copy: strategies may hand out shared objects (sampled lists), and mutations work in place.
    body = copy.deepcopy(draw(valid_bodies(now)))
    channel = draw(st.sampled_from(INSTALLED))
    mode = draw(st.sampled_from(MODES))
    if mode in ("valid", "retained"):
        if body["verb"] not in wire.READ_ONLY or draw(st.booleans()):
            body = SIGNER.sign(body)
        return Case(body, payload(body), mode, retained=mode == "retained", channel=channel)
    signed_before = None
    if mode == "tamper":
        body = SIGNER.sign(body)
        kind = _tamper(draw, body)
    else:
        if mode == "before":
            signed_before = SIGNER.sign(body)
            body = copy.deepcopy(signed_before)
        mutator = draw(st.sampled_from(list(MUTATORS)))
        kind = draw(MUTATORS[mutator](body, now))
        if mode == "after":
            body = SIGNER.sign(body)
    allow_unsigned = mode == "unsigned" and draw(st.booleans())
    return Case(
        body,
        payload(body),
        f"{mode}/{kind}",
        allow_unsigned=allow_unsigned,
        channel=channel,
        signed_before=signed_before,
    )


def example(verb: str, args: dict[str, Any], now: int = NOW) -> dict[str, Any]:
    """A valid, unsigned request issued `now`."""
    return {"v": 1, "id": f"c-{verb}", "verb": verb, "target": NODE, "args": args, "issued_at": now}


def examples(now: int = NOW) -> tuple[dict[str, Any], ...]:
    return (
        example("join", {"url": f"127.0.0.11:25000/{'a1' * 16}/2c0cb3284b05", "worker": True}, now),
        example("join", {"url": f"127.0.0.12:1/{'Z9' * 20}"}, now),
        example(
            "addon", {"name": "metallb", "action": "enable", "args": ["10.0.0.2-10.0.0.9"]}, now
        ),
        example("addon", {"name": "community/argocd", "action": "disable"}, now),
        example("upgrade", {"channel": "1.33-strict/stable", "drain": True}, now),
        example("upgrade", {"channel": "1.33/edge", "drain": False, "force": True}, now),
        example("status", {}, now),
    )


# Valid payloads to damage: the variety is in the damage, so a few of each verb are enough.
POOL = tuple(payload(SIGNER.sign(body)) for body in examples())


def listed_near_misses(now: int = NOW) -> list[Case]:
    """Every listed value just outside a rule, in its place in an otherwise valid request, signed.

    Hypothesis draws these only now and then; here each one is tried, every run.
    """
    join, _, addon, _, _, _, status = examples(now)
    # On a classic node with force, only the channel's own rule can refuse it.
    upgrade = example("upgrade", {"channel": "1.33/stable", "force": True}, now)
    places: list[tuple[dict[str, Any], tuple[str, ...], list[Any]]] = [
        (join, ("args", "url"), [u.format(t="a" * n) for u in URL_PARTS for n in (31, 32, 257)]),
        (addon, ("args", "name"), list(NAMES)),
        (addon, ("args", "args"), [["a", bad] for bad in ARGS] + [["a"] * 17]),
        (upgrade, ("args", "channel"), list(CHANNELS)),
        (status, ("target",), list(TARGETS)),
        (status, ("id",), list(IDS + TOPIC_UNSAFE_IDS)),
        (addon, ("v",), [0, 2, "1", 1.0, True, None, [1]]),
        (status, ("issued_at",), [10**400, -(10**400), 1e308, -1, "1764160000", True]),
        (status, ("expires_at",), [10**400, now + 10**6, now - 10**6, now]),
    ]
    cases: list[Case] = []
    for base, path, values in places:
        for value in values:
            body = copy.deepcopy(base)
            body["id"] = f"listed-{len(cases)}"  # distinct, for tests that send them all
            _set(body, path, value)
            signed = SIGNER.sign(body)
            kind = f"listed/{'.'.join(path)}"
            cases.append(Case(signed, payload(signed), kind, channel=INSTALLED[1]))
    return cases


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a valid signed payload damaged at the byte level or padded to ~64 KiB."""
    how = draw(st.sampled_from(["random", "flip", "cut", "insert", "pad", "wrap"]))
    if how == "random":
        return draw(st.binary(max_size=4096))
    raw = draw(st.sampled_from(POOL))
    at = draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if how == "cut":
        return raw[:at]
    if how == "insert":
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if how == "pad":  # whitespace is valid JSON: only the size decides
        return raw + b" " * (MAX - len(raw) + draw(st.integers(-4, 4)))
    return json.dumps(draw(st.sampled_from([[json.loads(raw)], "x", 1, None]))).encode()
