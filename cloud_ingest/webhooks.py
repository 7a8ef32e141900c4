"""Signed webhook deliveries from the transactional outbox.

``cloud_ingest.events.emit`` queues one ``pending`` row in ``webhook_deliveries`` per matching webhook in
the same transaction as the event; :class:`WebhookDispatcher` POSTs them. The contract with receivers:

* **Signature.** ``X-Coldtrace-Signature: t=<ms>,v1=<hex>`` where hex is HMAC-SHA256 of
  ``b"<ms>." + body`` under the webhook's secret (Stripe's scheme). Signing the timestamp lets a receiver
  refuse replays of an old request; :func:`verify` does both checks.
* **At least once.** A delivery is claimed with a *lease* (``next_attempt_ms`` pushed past the request
  timeout) in a short transaction, POSTed outside any transaction, then settled. A process that dies
  mid-request leaves the lease to expire and the delivery is sent again, so receivers deduplicate on
  ``X-Coldtrace-Delivery``. Settling only touches a row whose lease is still ours.
* **Per-webhook order.** Only the oldest pending delivery of a webhook (by id, i.e. event order) may be
  claimed, so event N+1 never overtakes event N, also while N waits out a retry backoff: receivers
  apply holds and releases in order. A delivery that goes ``dead`` stops blocking its successors: one
  poisoned event must not stall a webhook forever; the dead row stays for an operator to inspect.
* **Several processes.** On PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP LOCKED``, and because
  only queue heads are claimable no two dispatchers ever hold deliveries of the same webhook at once.
  SQLite ignores ``FOR UPDATE``; its ``BEGIN IMMEDIATE`` transactions serialise the claims instead.
* **Failures.** A non-2xx answer, a timeout or a connection error is retried with capped, jittered
  exponential backoff until ``max_attempts``, then the delivery is ``dead`` (logged at WARNING).
  ``410 Gone`` means the receiver retired the endpoint: the delivery is dead and the webhook is set
  inactive. An inactive webhook is *paused*: its remaining pending deliveries are kept but not sent
  until an operator reactivates it, and then they go out in order.
* Redirects are not followed: a webhook URL is configured exactly, and following a redirect would let a
  receiver point the cloud's signed requests at a host nobody configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, get_args
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine, exists, select, update
from sqlalchemy.exc import SQLAlchemyError

from cloud_ingest.db.tables import outbox_events, webhook_deliveries, webhooks
from coldtrace.clock import wall_ms

if TYPE_CHECKING:
    from cloud_ingest.settings import CloudSettings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Coldtrace-Signature"
EVENT_HEADER = "X-Coldtrace-Event"
DELIVERY_HEADER = "X-Coldtrace-Delivery"

Result = Literal["delivered", "retry", "dead"]

#: How long past the request timeout a claim stays ours; covers settling the batch in the database.
LEASE_MARGIN_S = 60.0
#: The longest the run loop waits between attempts to reach a failing database.
DB_BACKOFF_MAX_S = 60.0
#: Bytes of a failed response's body kept in ``last_error`` for the operator.
ERROR_BODY_BYTES = 256


def sign(secret: str, timestamp_ms: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp_ms>." + body`` under ``secret``."""
    message = f"{timestamp_ms}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp_ms: int, body: bytes) -> str:
    """The ``X-Coldtrace-Signature`` value: ``t=<ms>,v1=<hex>``."""
    return f"t={timestamp_ms},v1={sign(secret, timestamp_ms, body)}"


def verify(secret: str, header: str, body: bytes, *, now_ms: int, tolerance_ms: int) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` and its timestamp is within ``tolerance_ms``.

    Several ``v1=`` entries are accepted (one matching is enough) so a sender may sign with an old and
    a new secret while they are rotated. Malformed headers verify as False rather than raising.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now_ms - timestamp) > tolerance_ms:
        return False
    expected = sign(secret, timestamp, body).encode()
    # Compare every candidate (no early exit) in constant time, so timing reveals nothing.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in candidates]
    return any(matches)


def encode_event(
    *, event_id: int, topic: str, at_ms: int, aggregate_type: str, aggregate_id: str, payload: str
) -> bytes:
    """The request body for one outbox event; sorted keys, so the same event always signs the same.

    Raises ``orjson.JSONDecodeError`` when ``payload`` (the stored JSON text) is not JSON.
    """
    document = {
        "id": event_id,
        "topic": topic,
        "at_ms": at_ms,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "data": orjson.loads(payload),
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def retry_delay_s(attempts: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay after the ``attempts``-th failure: ``initial_s * 2**(attempts-1)`` capped at ``max_s``, times
    a jitter factor in [0.5, 1.0) so receivers recovering from an outage are not hit in lockstep."""
    base = min(max_s, initial_s * 2.0 ** min(attempts - 1, 62))
    return base * (1.0 - 0.5 * rng.random())


def redact_url(url: str) -> str:
    """``url`` without credentials or query string (where tokens hide), for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookMetrics:
    """The dispatcher's Prometheus metrics; pass the cloud's registry to expose them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register on ``registry`` (a private one when None: tests run several dispatchers)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        # prometheus_client appends ``_total``: the series is coldtrace_webhook_deliveries_total.
        self.deliveries = Counter(
            "coldtrace_webhook_deliveries",
            "Webhook delivery attempts by result",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "coldtrace_webhook_latency_seconds",
            "Duration of webhook POSTs, failed ones included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        for result in get_args(Result):
            self.deliveries.labels(result=result)  # zero series exist before the first delivery


@dataclass(frozen=True, slots=True)
class _Claim:
    """A delivery this dispatcher holds until ``lease_until_ms``."""

    delivery_id: int
    webhook_id: int
    event_id: int
    attempts: int
    url: str
    secret: str
    topic: str
    body: bytes | None  # None: the stored payload is not JSON, so it can never be delivered
    lease_until_ms: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one POST came to."""

    claim: _Claim
    at_ms: int
    status: int | None  # None when no response arrived
    error: str | None

    @property
    def ok(self) -> bool:
        """The receiver accepted it (2xx)."""
        return self.status is not None and 200 <= self.status < 300


class WebhookDispatcher:
    """Sends due webhook deliveries; ``async with`` it, then await :meth:`run` in a TaskGroup."""

    def __init__(
        self,
        engine: Engine,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 8,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 600.0,
        now_ms: Callable[[], int] = wall_ms,
        metrics: WebhookMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Check the options. Without ``client`` one is created on ``__aenter__`` and closed on exit."""
        if timeout_s <= 0 or max_attempts < 1 or not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                "need timeout_s > 0, max_attempts >= 1 and 0 < retry_initial_s <= retry_max_s, got "
                f"{timeout_s=}, {max_attempts=}, {retry_initial_s=}, {retry_max_s=}"
            )
        self._engine = engine
        self._client = client
        self._owns_client = False
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._now_ms = now_ms
        self._lease_ms = int((timeout_s + LEASE_MARGIN_S) * 1000)
        self.metrics = metrics if metrics is not None else WebhookMetrics()
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not security

    @classmethod
    def from_settings(
        cls,
        engine: Engine,
        settings: CloudSettings,
        *,
        client: httpx.AsyncClient | None = None,
        metrics: WebhookMetrics | None = None,
    ) -> WebhookDispatcher:
        """A dispatcher with the timeouts and retry policy of ``settings``."""
        return cls(
            engine,
            client=client,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            retry_initial_s=settings.webhook_retry_initial_s,
            retry_max_s=settings.webhook_retry_max_s,
            metrics=metrics,
        )

    async def __aenter__(self) -> Self:
        """Create the HTTP client unless one was given."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
            self._owns_client = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP client if this dispatcher created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._owns_client = False

    async def run(self, *, interval_s: float, stop: asyncio.Event | None = None, limit: int = 100) -> None:
        """Deliver due webhooks every ``interval_s`` until ``stop`` is set (or the task is cancelled).

        A full batch is followed at once by the next, so a backlog drains without waiting. A database
        error is logged and retried with backoff: an unreachable database must not end the loop.
        """
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        stop_event = stop if stop is not None else asyncio.Event()
        failures = 0
        while not stop_event.is_set():
            try:
                attempted = await self.deliver_due(limit)
            except SQLAlchemyError as exc:
                failures += 1
                delay = retry_delay_s(
                    failures, initial_s=interval_s, max_s=max(interval_s, DB_BACKOFF_MAX_S), rng=self._rng
                )
                logger.warning(
                    "webhook dispatch: database error (%d in a row), retrying in %.1f s: %s",
                    failures,
                    delay,
                    exc,
                )
            else:
                failures = 0
                delay = 0.0 if attempted >= limit else interval_s
            if await _stopped(stop_event, delay):
                return

    async def deliver_due(self, limit: int = 100) -> int:
        """POST up to ``limit`` due deliveries and settle them; returns how many were attempted.

        Each round claims the due head of every webhook's queue, POSTs those concurrently (one per
        webhook, so order within a webhook holds) and settles them; rounds repeat while work remains.
        """
        client = self._client
        if client is None:
            raise RuntimeError("WebhookDispatcher needs an httpx client: pass one or use 'async with'")
        attempted = 0
        while attempted < limit:
            claims = await asyncio.to_thread(self._claim, limit - attempted)
            if not claims:
                break
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._send(client, claim), name=f"webhook-delivery-{claim.delivery_id}")
                    for claim in claims
                ]
            outcomes = [task.result() for task in tasks]
            results = await asyncio.to_thread(self._settle, outcomes)
            for result in results:
                self.metrics.deliveries.labels(result=result).inc()
            attempted += len(claims)
        return attempted

    def _claim(self, limit: int) -> list[_Claim]:
        """Lease up to ``limit`` due queue heads (blocking; runs in a worker thread)."""
        d, w, e = webhook_deliveries, webhooks, outbox_events
        earlier = webhook_deliveries.alias("earlier")
        now = self._now_ms()
        lease_until = now + self._lease_ms
        query = (
            select(
                d.c.id,
                d.c.webhook_id,
                d.c.event_id,
                d.c.attempts,
                w.c.url,
                w.c.secret,
                e.c.topic,
                e.c.at_ms,
                e.c.aggregate_type,
                e.c.aggregate_id,
                e.c.payload,
            )
            .select_from(d.join(w, w.c.id == d.c.webhook_id).join(e, e.c.id == d.c.event_id))
            .where(
                d.c.status == "pending",
                d.c.next_attempt_ms <= now,
                w.c.active,
                # Only the head of each webhook's queue: see "Per-webhook order" in the module docstring.
                ~exists().where(
                    earlier.c.webhook_id == d.c.webhook_id,
                    earlier.c.status == "pending",
                    earlier.c.id < d.c.id,
                ),
            )
            .order_by(d.c.id)
            .limit(limit)
            .with_for_update(of=d, skip_locked=True)
        )
        with self._engine.begin() as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    update(d).where(d.c.id.in_([row.id for row in rows])).values(next_attempt_ms=lease_until)
                )
        return [_to_claim(row, lease_until) for row in rows]

    async def _send(self, client: httpx.AsyncClient, claim: _Claim) -> _Outcome:
        """POST one claimed delivery; every transport failure becomes an outcome, never an exception."""
        if claim.body is None:
            return _Outcome(claim, at_ms=self._now_ms(), status=None, error="stored payload is not JSON")
        timestamp = self._now_ms()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(claim.secret, timestamp, claim.body),
            EVENT_HEADER: claim.topic,
            DELIVERY_HEADER: str(claim.delivery_id),
        }
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            # httpx's timeout bounds each phase; this bounds the whole request (a slow-drip receiver).
            async with (
                asyncio.timeout(self._timeout_s),
                client.stream("POST", claim.url, content=claim.body, headers=headers) as response,
            ):
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}: {await _body_excerpt(response)}"
        except TimeoutError:
            error = f"timed out after {self._timeout_s} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)
        logger.debug(
            "webhook delivery %d to %s: %s", claim.delivery_id, redact_url(claim.url), error or status
        )
        return _Outcome(claim, at_ms=self._now_ms(), status=status, error=error)

    def _settle(self, outcomes: Sequence[_Outcome]) -> list[Result]:
        """Record outcomes in one transaction (blocking; runs in a worker thread)."""
        d = webhook_deliveries
        results: list[Result] = []
        with self._engine.begin() as conn:
            for outcome in outcomes:
                claim = outcome.claim
                result, values = self._next_state(outcome)
                updated = conn.execute(
                    update(d)
                    .where(
                        d.c.id == claim.delivery_id,
                        d.c.status == "pending",
                        # Still our lease? If it expired and another dispatcher took over, it settles.
                        d.c.next_attempt_ms == claim.lease_until_ms,
                    )
                    .values(**values)
                )
                if updated.rowcount == 0:
                    logger.warning(
                        "webhook delivery %d: lease lost before its outcome was recorded; it will be retried",
                        claim.delivery_id,
                    )
                    continue
                if outcome.status == 410:
                    conn.execute(
                        update(webhooks).where(webhooks.c.id == claim.webhook_id).values(active=False)
                    )
                    logger.warning(
                        "webhook %d (%s) answered 410 Gone; deactivated, its pending deliveries are paused",
                        claim.webhook_id,
                        redact_url(claim.url),
                    )
                if result == "dead":
                    logger.warning(
                        "webhook %d (%s): delivery %d of event %d (%s) is dead after %d attempts: %s",
                        claim.webhook_id,
                        redact_url(claim.url),
                        claim.delivery_id,
                        claim.event_id,
                        claim.topic,
                        values["attempts"],
                        outcome.error,
                    )
                results.append(result)
        return results

    def _next_state(self, outcome: _Outcome) -> tuple[Result, dict[str, Any]]:
        """The delivery's new column values after ``outcome``."""
        attempts = outcome.claim.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status": outcome.status,
            "last_error": outcome.error,
        }
        if outcome.ok:
            return "delivered", {**values, "status": "delivered", "delivered_ms": outcome.at_ms}
        final = outcome.status == 410 or outcome.claim.body is None
        if final or attempts >= self._max_attempts:
            # next_attempt_ms is moved off our lease value so the row reads as settled, not in flight.
            return "dead", {**values, "status": "dead", "next_attempt_ms": outcome.at_ms}
        delay_s = retry_delay_s(
            attempts, initial_s=self._retry_initial_s, max_s=self._retry_max_s, rng=self._rng
        )
        return "retry", {**values, "next_attempt_ms": outcome.at_ms + int(delay_s * 1000)}


def _to_claim(row: Any, lease_until_ms: int) -> _Claim:
    """A claimed row with its request body encoded."""
    try:
        body: bytes | None = encode_event(
            event_id=row.event_id,
            topic=row.topic,
            at_ms=row.at_ms,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            payload=row.payload,
        )
    except orjson.JSONDecodeError:
        logger.exception(
            "outbox event %d has a payload that is not JSON; it cannot be delivered", row.event_id
        )
        body = None
    return _Claim(
        delivery_id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        attempts=row.attempts,
        url=row.url,
        secret=row.secret,
        topic=row.topic,
        body=body,
        lease_until_ms=lease_until_ms,
    )


async def _body_excerpt(response: httpx.Response) -> str:
    """The start of a response body (for last_error), without reading an arbitrarily large one."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY_BYTES:
            break
    return b"".join(chunks)[:ERROR_BODY_BYTES].decode("utf-8", errors="replace")


async def _stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``stop``; True when it is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
