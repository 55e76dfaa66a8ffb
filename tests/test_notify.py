"""sd_notify: the pure parsing, real datagrams on path and abstract sockets, and the agent as a
Type=notify service (READY before the broker, STATUS on connect, WATCHDOG pings, STOPPING)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.platform import systemd_notify
from tests.conftest import Broker, agent_config, free_port, watch

pytestmark = pytest.mark.broker


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.messages: list[list[str]] = []

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float = 30) -> list[str]:
        for fields in self.messages:
            if predicate(fields):
                return fields
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = data.decode().split("\n")
            self.messages.append(fields)
            if predicate(fields):
                return fields
        raise AssertionError(f"no matching notification; got {self.messages[-10:]}")

    def count(self, field: str) -> int:
        return sum(field in fields for fields in self.messages)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


def has(field: str) -> Callable[[list[str]], bool]:
    return lambda fields: field in fields


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@sd/notify", "\0sd/notify"), ("", None)],
)
def test_socket_address(value: str, expected: str | None) -> None:
    assert systemd_notify.socket_address(value) == expected


def test_socket_address_rejects_unsupported_kinds() -> None:
    assert systemd_notify.socket_address("vsock:2:1234") is None
    assert systemd_notify.socket_address("relative/path") is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_and_only_for_our_pid(
    env: dict[str, str], expected: float | None
) -> None:
    assert systemd_notify.watchdog_interval_s(env, pid=42) == expected


def test_send_utf8_fields_to_a_path_socket(listener: Listener) -> None:
    notifier = systemd_notify.Notifier({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.send("READY=1", "STATUS=connected ✓")
    assert listener.wait_for(has("READY=1")) == ["READY=1", "STATUS=connected ✓"]


def test_send_to_an_abstract_socket() -> None:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = systemd_notify.Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("WATCHDOG=1")
        sock.settimeout(5)
        assert sock.recv(64) == b"WATCHDOG=1"


def test_without_a_socket_nothing_is_sent() -> None:
    notifier = systemd_notify.Notifier({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_failed_send_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = systemd_notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.send("READY=1") is False
    assert notifier.send("WATCHDOG=1") is False


def _service_env(listener: Listener, watchdog_usec: int = 200_000) -> dict[str, str]:
    # WATCHDOG_PID is left out: systemd sets it to the main pid, which we do not know yet.
    return {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": str(watchdog_usec)}


async def test_status_follows_changes_without_polling(listener: Listener) -> None:
    """With `changed`, status() is looked at on a change, a stop or a watchdog ping only."""
    notifier = systemd_notify.Notifier({"NOTIFY_SOCKET": listener.env_value})  # no watchdog
    text, looks = ["disconnected, session 0"], []

    def status() -> str:
        looks.append(text[0])
        return text[0]

    stopping, changed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        notifier.run(alive=lambda: True, status=status, stopping=stopping, changed=changed)
    )
    await asyncio.sleep(systemd_notify.STATUS_POLL_S * 1.5)  # a poller would have looked again
    assert looks == ["disconnected, session 0"]
    text[0] = "connected, session 1"
    changed.set()
    await asyncio.sleep(0.2)
    assert looks == ["disconnected, session 0", "connected, session 1"]
    stopping.set()
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    listener.wait_for(has("STOPPING=1"), timeout_s=5)
    sent = [field for fields in listener.messages for field in fields]
    assert sent == [
        "READY=1",
        "STATUS=disconnected, session 0",
        "STATUS=connected, session 1",
        "STOPPING=1",
        "STATUS=stopping",
    ]


def test_agent_notifies_ready_status_watchdog_and_stopping(
    tmp_path: Path, broker: Broker, spawn_agent, listener: Listener
) -> None:
    agent = spawn_agent(agent_config(tmp_path, broker), env=_service_env(listener))
    ready = listener.wait_for(has("READY=1"))
    assert any(field.startswith("STATUS=") for field in ready)
    listener.wait_for(has("STATUS=connected, session 1"))
    listener.wait_for(lambda fields: listener.count("WATCHDOG=1") >= 2)
    agent.signal(signal.SIGTERM)
    listener.wait_for(has("STOPPING=1"))
    assert agent.wait(timeout_s=30) == 0
    ready_index = next(i for i, f in enumerate(listener.messages) if "READY=1" in f)
    first_ping = next(i for i, f in enumerate(listener.messages) if "WATCHDOG=1" in f)
    assert ready_index < first_ping


def test_agent_is_ready_without_a_broker(tmp_path: Path, spawn_agent, listener: Listener) -> None:
    absent = Broker(tmp_path, port=free_port())  # never started: nothing listens there
    config = agent_config(tmp_path, absent)
    agent = spawn_agent(config, env=_service_env(listener))
    ready = listener.wait_for(has("READY=1"))
    assert "STATUS=disconnected, session 0" in ready
    listener.wait_for(lambda fields: listener.count("WATCHDOG=1") >= 2)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


async def test_agent_survives_an_unreachable_notify_socket_and_logs_once(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    config = agent_config(tmp_path, broker)
    # Pings every 50 ms: dozens of failed sends while three health messages go out.
    env = {"NOTIFY_SOCKET": str(tmp_path / "denied.sock"), "WATCHDOG_USEC": "100000"}
    async with watch(broker, "microk8s/#") as w:
        agent = spawn_agent(config, env=env)
        _, first = await w.wait_for(lambda t, p: t.endswith("/health"), timeout_s=30)
        await w.wait_for(
            lambda t, p: t.endswith("/health") and p["seq"] >= first["seq"] + 2, timeout_s=30
        )
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    events = [line.get("event") for line in agent.log_lines()]
    assert events.count("sd_notify_failed") == 1
