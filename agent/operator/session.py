"""The operator's MQTT session: connect with the operator settings, read the retained roster.

Shared by `send` (pre-flight), `nodes` and `fleet upgrade`, so each asks the broker the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

from agent.link import operator_client
from agent.operator.roster import Roster
from agent.operator.settings import OperatorSettings

# How long the retained messages are awaited when nothing tells us they are complete.
ROSTER_WAIT_S = 2.0


@contextlib.asynccontextmanager
async def connect(settings: OperatorSettings) -> AsyncIterator[operator_client.OperatorClient]:
    """A short-lived client with a random id (several operators may run at once)."""
    client_id = f"edge-agent-operator-{secrets.token_hex(4)}"
    async with operator_client.operator_client(settings.mqtt, client_id) as client:
        yield client


async def read_roster(
    client: operator_client.OperatorClient,
    roster: Roster,
    wait_s: float = ROSTER_WAIT_S,
    until: Callable[[Roster], bool] | None = None,
) -> Roster:
    """Subscribe to the roster's filters and feed it for `wait_s`, or until `until` holds."""
    for topic_filter in roster.filters():
        await client.subscribe(topic_filter)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            async for inbound in client.messages():
                roster.feed(inbound.topic, inbound.payload)
                if until is not None and until(roster):
                    break
    return roster
