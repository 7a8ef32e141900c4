"""The InfluxDB v2 write endpoint in front of InfluxDB 1.6, so the cloud worker writes there unchanged.

The worker's spool drain speaks the v2 write API (``POST /api/v2/write?bucket=…&precision=ms``).
InfluxDB 1.8+ answers that itself, mapping the bucket to a database ("DBRP"); 1.6, the strict
line-protocol oracle the tests have, predates it. This relay does what 1.8's compatibility endpoint
does: the body goes unchanged to ``/write?db=<bucket>&precision=<p>`` and InfluxDB's own answer (204,
or 400 naming the first bad line) goes back to the worker. Nothing is parsed, rewritten or invented
here: the lines stored are exactly those the cloud produced.
"""

from __future__ import annotations

import asyncio
import gzip
from types import TracebackType
from typing import Self

from aiohttp import web

from tests.harness.influxdb1 import InfluxDB1
from tests.harness.ports import LOOPBACK, free_port

#: v2 precision names -> InfluxDB 1.x names.
_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


class InfluxV2Relay:
    """``async with InfluxV2Relay(influx) as relay:`` serves ``relay.url`` until the block ends."""

    def __init__(self, influx: InfluxDB1) -> None:
        self.influx = influx
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.writes = 0
        """Write requests InfluxDB answered with 204."""
        self.refused: list[str] = []
        """InfluxDB's error bodies for refused writes (a malformed line is a bug to report)."""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/v2/write", self._write)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _write(self, request: web.Request) -> web.Response:
        bucket = request.query.get("bucket")
        precision = _PRECISION.get(request.query.get("precision", "ns"))
        if not bucket or precision is None:
            return web.json_response(
                {"code": "invalid", "message": "bucket and precision needed"}, status=400
            )
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        # The harness client is synchronous; keep the worker's event loop free meanwhile.
        answer = await asyncio.to_thread(self.influx.write, bucket, body.decode("utf-8"), precision)
        if answer.status_code == 204:
            self.writes += 1
        else:
            self.refused.append(answer.text)
        return web.Response(
            status=answer.status_code,
            body=answer.content,
            content_type=answer.headers.get("Content-Type", "application/json").split(";")[0],
        )
