"""A small TCP proxy we control, standing between the agent and the broker (toxiproxy-like).

`tc netem` needs the sch_netem kernel module, which this machine kind lacks, so network faults
are made at the TCP level instead:
- `lossy(p)`: each chunk is held back with probability p for a retransmission-like delay
  (200-1000 ms), in order — what 30 % packet loss looks like to a TCP application;
- `blackhole()`: nothing is forwarded in either direction and new connections hang, while the
  sockets stay open — a cable pulled somewhere between the two;
- `heal()`: back to normal (the held data is dropped, as a real blackhole drops packets, and the
  open connections are cut, as the peers' retransmissions would have timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class NetProxy:
    def __init__(self, target_host: str, target_port: int, seed: int = 7) -> None:
        self.target = (target_host, target_port)
        self.loss = 0.0
        self.blackholed = False
        self.rng = random.Random(seed)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.held_chunks = 0

    async def start(self) -> NetProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self._cut()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def lossy(self, probability: float) -> None:
        self.loss = probability

    def blackhole(self) -> None:
        self.blackholed = True

    def heal(self) -> None:
        self.loss = 0.0
        if self.blackholed:
            self.blackholed = False
            self._cut()

    def _dropping(self) -> bool:
        # Re-read after an await: a blackhole may have started while the chunk was held back.
        return self.blackholed

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        while self.blackholed and not writer.transport.is_closing():
            await asyncio.sleep(0.1)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                writer.transport.abort()
                return
            if self.blackholed:
                continue
            if self.loss and self.rng.random() < self.loss:
                self.held_chunks += 1
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            if self._dropping():
                continue
            writer.write(chunk)
            await writer.drain()
