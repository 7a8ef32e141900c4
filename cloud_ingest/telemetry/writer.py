"""Writes line protocol to a time-series database over the InfluxDB v2 write API (``/api/v2/write``).

One :class:`TelemetryWriter` per ingest worker. It writes one chunk per call and says how it went:
return (stored), :class:`TelemetryUnavailable` (keep the chunk, retry later) or
:class:`TelemetryRejected` (the data itself was refused). It never retries by itself: the spool drain
owns retries, with :class:`~cloud_ingest.telemetry.backoff.Backoff`, so a retry never outlives the
caller's view of what is still pending.

Servers: InfluxDB 2.x/3.x and 1.8+ (its v2 compatibility endpoint), and VictoriaMetrics. Beware that
VictoriaMetrics answers 204 to lines it cannot parse (it only logs them), so a success from it does
not prove the lines valid; InfluxDB answers 400 and names the first bad line.
"""

from __future__ import annotations

import json
import logging
import time
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self, cast

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from pydantic import SecretStr

from cloud_ingest.telemetry.errors import (
    TelemetryMisconfigured,
    TelemetryRejected,
    TelemetryUnavailable,
)

logger = logging.getLogger(__name__)

#: Longest piece of a server's error body carried in an exception message.
_MAX_SERVER_MESSAGE = 500
#: The client's precision constants are plain strings although its signatures ask for WritePrecision.
_PRECISION_MS = cast("WritePrecision", WritePrecision.MS)
#: 4xx answers that mean "not now" rather than "not this data".
_TRANSIENT_4XX = frozenset({408, 429})
#: 4xx answers about credentials or the endpoint, not about the lines sent.
_CONFIG_4XX = frozenset({401, 403, 404})


class TelemetryWriter:
    """An async client for one server, bucket and organisation; use it as an async context manager.

    ``async with TelemetryWriter(url=..., token=..., org=..., bucket=...) as writer:
    await writer.write(lines)``. The underlying HTTP session is created on entry (the client must be
    built inside a running event loop) and closed on exit.
    """

    def __init__(
        self,
        *,
        url: str,
        token: SecretStr | str,
        org: str,
        bucket: str,
        timeout_s: float = 10.0,
    ) -> None:
        """Remember the settings; nothing connects until the first use.

        ``timeout_s`` bounds a whole request (connect, send, answer). VictoriaMetrics ignores token,
        org and bucket; InfluxDB 2 needs all three.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        """Create the HTTP session."""
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP session."""
        await self.close()

    def _ensure_open(self) -> tuple[InfluxDBClientAsync, WriteApiAsync]:
        if self._closed:
            raise RuntimeError(f"TelemetryWriter for {self.url} is closed")
        if self._client is None or self._write_api is None:
            self._client = InfluxDBClientAsync(
                url=self.url,
                token=self._token.get_secret_value(),
                org=self.org,
                timeout=int(self.timeout_s * 1000),  # the client takes milliseconds
            )
            self._write_api = self._client.write_api()
        return self._client, self._write_api

    async def close(self) -> None:
        """Close the HTTP session; the writer cannot be used afterwards. Safe to call twice."""
        self._closed = True
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated

    async def write(self, lines: str) -> None:
        """Write ``lines`` (line protocol, millisecond timestamps) in one request; return once stored.

        Raises :class:`TelemetryUnavailable` when the server cannot be reached, times out or answers
        5xx, 408 or 429; :class:`TelemetryMisconfigured` (a TelemetryUnavailable) for 401, 403 and
        404; :class:`TelemetryRejected` with the server's message for any other 4xx. Text with no
        line is not sent.
        """
        _, write_api = self._ensure_open()
        if not lines.strip():
            return
        try:
            await write_api.write(
                bucket=self.bucket, org=self.org, record=lines, write_precision=_PRECISION_MS
            )
        except ApiException as exc:
            raise self._translate_status(exc) from exc
        except TimeoutError as exc:
            raise TelemetryUnavailable(
                f"{self.url} did not answer a write within {self.timeout_s:g} s", url=self.url
            ) from exc
        except aiohttp.ClientError as exc:
            raise TelemetryUnavailable(
                f"cannot write to {self.url}: {type(exc).__name__}: {exc}", url=self.url
            ) from exc
        logger.debug("wrote %d bytes of line protocol to %s", len(lines), self.url)

    async def ping(self) -> bool:
        """True when the server answers ``/ping`` with success within the timeout; never raises."""
        client, _ = self._ensure_open()
        try:
            ok: bool = await client.ping()
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("ping %s failed: %s", self.url, exc)
            return False
        return ok

    def _translate_status(self, exc: ApiException) -> TelemetryUnavailable | TelemetryRejected:
        status: int = exc.status or 0
        message = _server_message(exc)
        where = f"{self.url}/api/v2/write (bucket {self.bucket!r}, org {self.org!r})"
        if status >= 500 or status in _TRANSIENT_4XX:
            return TelemetryUnavailable(
                f"{where} answered {status}: {message}",
                url=self.url,
                status=status,
                retry_after_s=_retry_after_s(exc),
            )
        if status == 404:
            return TelemetryMisconfigured(
                f"{where} answered 404 ({message}): {_explain_404(exc)}", url=self.url, status=status
            )
        if status in _CONFIG_4XX:
            return TelemetryMisconfigured(
                f"{where} answered {status} ({message}): check the token and its write permission "
                "on the bucket",
                url=self.url,
                status=status,
            )
        if 400 <= status < 500:
            return TelemetryRejected(
                f"{where} rejected the data with {status}: {message}",
                url=self.url,
                status=status,
                server_message=message,
            )
        # 0 (no HTTP answer), 1xx or an unfollowed 3xx: nothing says the data is bad, so keep it.
        return TelemetryUnavailable(
            f"{where} answered {status}: {message}", url=self.url, status=status or None
        )


def _server_message(exc: ApiException) -> str:
    """The server's own explanation: InfluxDB 2 sends {"message"}, 1.x {"error"}, others plain text."""
    body = exc.body
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("message", "error"):
            if isinstance(parsed.get(key), str):
                text = parsed[key]
                break
    text = text.strip() or str(exc.reason or "")
    if len(text) > _MAX_SERVER_MESSAGE:
        text = text[:_MAX_SERVER_MESSAGE] + "…"
    return text


def _header(exc: ApiException, name: str) -> str | None:
    headers = exc.headers
    if headers is None:
        return None
    value = headers.get(name)
    return None if value is None else str(value)


def _explain_404(exc: ApiException) -> str:
    version = _header(exc, "X-Influxdb-Version")
    if version is not None and version.startswith("1."):
        return (
            f"this is InfluxDB {version}, which has no /api/v2/write before 1.8; use InfluxDB 1.8+ "
            '(bucket "<database>/<retention policy>"), InfluxDB 2.x/3.x or VictoriaMetrics'
        )
    return (
        "the bucket or organisation does not exist, or the server has no InfluxDB v2 write API "
        "(InfluxDB before 1.8 has none)"
    )


def _retry_after_s(exc: ApiException) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date (RFC 9110)."""
    value = _header(exc, "Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
