"""A gateway's WAN link to the cloud broker, as a TCP relay the demo can cut: a real network partition.

Each gateway's agent reaches the cloud broker through its own :class:`Uplink`, which copies bytes both
ways (TLS stays end to end, agent to broker). :meth:`Uplink.cut` drops every open connection and stops
listening, so the agent sees its connection die and its reconnects refused, exactly as when a
warehouse loses its internet line; :meth:`Uplink.restore` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class Uplink:
    """``async with Uplink(name=…, target_host=…, target_port=…) as link:`` relays ``link.port``."""

    def __init__(self, *, name: str, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.cuts = 0
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def is_up(self) -> bool:
        """True while the link carries traffic."""
        return self._server is not None

    async def __aenter__(self) -> Self:
        self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
        try:
            await self._listen()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cut(log=False)
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self, *, log: bool = True) -> None:
        """Partition: drop every connection and refuse new ones until :meth:`restore`."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        if log and server is not None:
            self.cuts += 1
            logger.warning("uplink %s cut (partition)", self.name)

    async def restore(self) -> None:
        """Heal the partition: listen again on the same port."""
        if self._server is None:
            await self._listen()
            logger.warning("uplink %s restored", self.name)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._group is None or self._server is None:
            writer.transport.abort()
            return
        task = self._group.create_task(self._relay(reader, writer), name=f"uplink-{self.name}")
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self._target)
            self._writers.add(upstream)
            async with asyncio.TaskGroup() as pipes:
                pipes.create_task(_pipe(reader, upstream), name=f"uplink-{self.name}-out")
                pipes.create_task(_pipe(up_reader, writer), name=f"uplink-{self.name}-in")
        except* OSError as failures:
            logger.debug("uplink %s connection ended: %s", self.name, failures.exceptions[0])
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._writers.discard(end)
                    end.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()
    # One side finished: drop the other, which ends the opposite pipe too.
    sink.transport.abort()
