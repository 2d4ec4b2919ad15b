"""A TCP proxy that can take the network down: for network faults between the bot and the Bot API.

`FaultyProxy(target_port)` forwards 127.0.0.1:<port> to the target. `mode` decides what a
connection gets:
- "up": bytes flow both ways;
- "down": connections are accepted and closed at once (the peer sees a reset or an empty reply);
- "stall": connections are accepted and held without forwarding, so the client's read times out.
Switching away from "up" also cuts the connections already open, so keep-alive sockets of an
HTTP client cannot slip past the fault. Everything runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)

MODES = ("up", "down", "stall")


class FaultyProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1"):
        self.host, self.target_port = host, target_port
        self.port = 0
        self._mode = "up"
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections cut or stalled by a fault

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = mode
        if mode != "up":
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()

    async def start(self) -> "FaultyProxy":
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.set_mode("down")
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> "FaultyProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._mode == "down":
                self.refused += 1
                writer.close()
                return
            if self._mode == "stall":
                self.refused += 1
                self._writers.add(writer)
                while self._mode == "stall" and not writer.is_closing():
                    await asyncio.sleep(0.05)
                writer.close()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target_port)
            self._writers.update((writer, upstream_writer))
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (ConnectionError, OSError, asyncio.CancelledError):
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not writer.is_closing():
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
