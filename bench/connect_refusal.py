"""How long an MQTT 5 connect takes to fail on a 3.1.1-only broker (not a test).

Starts RabbitMQ 3.10 (MQTT plugin) and NATS 2.9 (MQTT listener) as tests/interop does, then times
`connect` → error for aiomqtt's own client and for the agent's (`agent.link.mqtt.Client`), which
also notices a connection closed before CONNACK. Prints one line per attempt.

    .venv/bin/python -m bench.connect_refusal [--attempts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiomqtt

from agent.link.mqtt import Client
from tests.interop.brokers import NatsBroker, RabbitBroker


async def attempt(cls: type[aiomqtt.Client], port: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        async with cls("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10):
            return "connected", time.monotonic() - started
    except aiomqtt.MqttError as exc:
        return str(exc), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=3)
    attempts = parser.parse_args().attempts
    for kind in (RabbitBroker, NatsBroker):
        with tempfile.TemporaryDirectory() as workdir:
            broker = kind(Path(workdir))
            broker.start()
            try:
                for cls in (aiomqtt.Client, Client):
                    for _ in range(attempts):
                        error, took = asyncio.run(attempt(cls, broker.port))
                        label = f"{cls.__module__}.{cls.__name__}"
                        print(f"{broker.name:9} {label:25} {took * 1000:9.1f} ms  {error}")
            finally:
                broker.close()


if __name__ == "__main__":
    main()
