"""The telemetry writer's exceptions: what the spool drain must do with a chunk that was not written.

``TelemetryUnavailable``: keep the chunk and retry later (with backoff). ``TelemetryRejected``: the
server refused the data itself; retrying the same text cannot succeed. ``TelemetryMisconfigured`` is
a kind of ``TelemetryUnavailable``: the data is fine but the server, bucket or token is wrong, so the
chunk is kept until an operator fixes the configuration.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """A write to the time-series database failed; ``url`` names the server, ``status`` its HTTP answer."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TelemetryUnavailable(TelemetryError):
    """The server could not take the write now (unreachable, timed out, 5xx, 429): retry later.

    ``retry_after_s`` is the server's Retry-After hint in seconds when it gave one.
    """

    def __init__(
        self, message: str, *, url: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, url=url, status=status)
        self.retry_after_s = retry_after_s


class TelemetryMisconfigured(TelemetryUnavailable):
    """The server refused who or where we write (401, 403, 404), not what: an operator must act.

    A subclass of TelemetryUnavailable so that a drain which only tells the two main cases apart
    keeps the data and retries, rather than discarding good readings over a wrong token or bucket.
    """


class TelemetryRejected(TelemetryError):
    """The server refused the data (400 bad line protocol, 413 too large, 422 outside retention).

    Do not retry the same text. ``server_message`` is the server's own explanation. InfluxDB 2 writes
    the valid lines of a partially bad request and rejects the rest, so some points may be stored.
    """

    def __init__(self, message: str, *, url: str, status: int, server_message: str) -> None:
        super().__init__(message, url=url, status=status)
        self.server_message = server_message
