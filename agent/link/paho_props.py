"""Inbound MQTT 5 properties that paho cannot parse cost their properties, never the connection.

paho-mqtt (2.2) refuses U+FEFF in a received UTF-8 string ("[MQTT-1.5.4-3]"), although MQTT 5
section 1.5.4 says the opposite of the receiver: U+FEFF "MUST NOT be skipped over or stripped off
by a packet receiver". paho raises, the half-read packet is never cleared, and the connection
dies; a *retained* message with such a User Property then kills the link of every subscriber at
every reconnect (issue 11). Other odd properties (a NUL in a string, a repeated single-valued
property, an unknown identifier) fail the same way.

The narrowest fix we found is one override at one point: paho's packet decoder
(`paho.mqtt._packet`, used for every packet the broker sends) builds a `Properties` from its
module namespace, and `install()` points that name at `TolerantProperties`, a subclass that
accepts U+FEFF as the standard requires and, when a property block still cannot be parsed,
skips the whole block (its length is framed) so the message arrives without properties. Nothing
else in paho is touched; the test publishes such properties on every subscribed topic and
checks that commands are still answered, so an upgrade of paho that moves the name fails there.
"""

from __future__ import annotations

import time
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.properties import Properties, VariableByteIntegers

from agent.logs import DropLog

_drops = DropLog("mqtt_properties_skipped")


def skipped_total() -> int:
    """Property blocks dropped since start (each one cost a message its properties)."""
    return _drops.total


class TolerantProperties(Properties):
    """paho's Properties, reading U+FEFF and skipping a block it cannot parse."""

    def readProperty(self, buffer: bytes, type: int, propslen: int) -> tuple[Any, int]:  # noqa: A002, N802
        if type == self.types.index("UTF-8 Encoded String"):
            return _read_text(buffer, propslen)
        if type == self.types.index("UTF-8 String Pair"):
            name, used = _read_text(buffer, propslen)
            value, more = _read_text(buffer[used:], propslen - used)
            return (name, value), used + more
        return super().readProperty(buffer, type, propslen)  # type: ignore[no-untyped-call,no-any-return]

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        try:
            return super().unpack(buffer)  # type: ignore[no-untyped-call,no-any-return]
        except Exception as exc:  # paho raises several types here, all meaning "unparseable"
            # The Property Length frames the block: skip it whole, keep the message. A broken
            # length itself still raises MalformedPacket (the packet is beyond saving).
            length, used = VariableByteIntegers.decode(buffer)  # type: ignore[no-untyped-call]
            self.clear()  # type: ignore[no-untyped-call]
            _drops.drop(time.monotonic(), error=f"{type(exc).__name__}: {exc}"[:200])
            return self, length + used


def _read_text(buffer: bytes, limit: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 string (MQTT 5 section 1.5.4), U+FEFF included."""
    if limit < 2 or len(buffer) < 2:
        raise MalformedPacket("not enough data for a string length")
    length = int.from_bytes(buffer[:2], "big")
    if length > limit - 2 or length > len(buffer) - 2:
        raise MalformedPacket("string longer than its property block")
    text = bytes(buffer[2 : 2 + length]).decode("utf-8")  # strict: no surrogates can appear
    if "\x00" in text:
        raise MalformedPacket("[MQTT-1.5.4-2] U+0000 in a UTF-8 string")
    return text, length + 2


def install() -> None:
    """Make paho's packet decoder build `TolerantProperties` (idempotent)."""
    _packet.Properties = TolerantProperties  # type: ignore[attr-defined]
