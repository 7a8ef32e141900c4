"""A gateway's uplink relay: a cut drops open connections and refuses new ones until restored."""

from __future__ import annotations

import asyncio

import pytest

from coldtrace.demo.uplink import Uplink

TIMEOUT_S = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await reader.readexactly(len(payload))
    writer.close()
    return answer


def test_cut_and_restore() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        target = int(server.sockets[0].getsockname()[1])
        async with server, Uplink(name="gw-t", target_host="127.0.0.1", target_port=target) as link:
            async with asyncio.timeout(TIMEOUT_S):
                assert await _roundtrip(link.port, b"before") == b"before"
                reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
                writer.write(b"open")
                assert await reader.readexactly(4) == b"open"
                await link.cut()
                assert not link.is_up
                assert await reader.read() == b""  # the open connection is gone
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", link.port)
                port = link.port
                await link.restore()
                assert link.port == port
                assert link.is_up
                assert await _roundtrip(link.port, b"after") == b"after"
            assert link.cuts == 1
            writer.close()

    asyncio.run(scenario())
