"""A tiny asyncio HTTP server for ``/metrics`` (Prometheus text) and ``/health`` (JSON).

Shared by the edge agent and the cloud workers: no thread, no web framework on a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

logger = logging.getLogger(__name__)


class Renders(Protocol):
    """Anything that renders the Prometheus text exposition."""

    def render(self) -> bytes:
        """The exposition bytes."""
        ...


async def serve(
    host: str,
    port: int,
    metrics: Renders,
    health: Callable[[], dict[str, Any]],
    *,
    ready: asyncio.Future[int],
) -> None:
    """Serve /metrics and /health until cancelled; ``ready`` gets the bound port once listening."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, body, kind = "200 OK", metrics.render(), "text/plain; version=0.0.4"
            elif path == "/health":
                status, body, kind = "200 OK", orjson.dumps(health()), "application/json"
            else:
                status, body, kind = "404 Not Found", b"not found: try /metrics or /health\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            logger.debug("metrics request dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    sockets = server.sockets or ()
    metrics_port = sockets[0].getsockname()[1] if sockets else port
    logger.info("metrics and health on http://%s:%s/metrics", host, metrics_port)
    ready.set_result(metrics_port)
    async with server:
        await server.serve_forever()
