"""Presence payloads and reconnect timing (pure): what PROTOCOL.md "Presence" puts on the wire."""

from __future__ import annotations

import json
import random
import time
from typing import Any

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return (rng or random).uniform(0, ceiling)


def presence_payload(state: str, session: int, version: str, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "state": state,
        "session": session,
        "ts": round(time.time(), 3),
        "agent_version": version,
    }
    if reason:
        body["reason"] = reason
    return json.dumps(body, separators=(",", ":")).encode()
