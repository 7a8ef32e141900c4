"""Webhook signing and delivery against a real HTTP receiver (uvicorn on an ephemeral loopback port).

Time is driven through the dispatcher's injected clock, never by sleeping: a retry becomes due when the
test moves the clock to its ``next_attempt_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud_ingest.db.engine import create_db_engine, migrate, open_database
from cloud_ingest.db.tables import outbox_events, webhook_deliveries, webhooks
from cloud_ingest.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookDispatcher,
    WebhookMetrics,
    redact_url,
    retry_delay_s,
    sign,
    signature_header,
    verify,
)
from tests.harness.ports import LOOPBACK, free_port

T = TypeVar("T")

START_MS = 1_700_000_000_000
SECRET = "whsec-test"  # noqa: S105 - a test fixture, not a credential
TOLERANCE_MS = 5 * 60 * 1000


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test scenario on a fresh event loop."""
    return asyncio.run(coro)


class Clock:
    """The dispatcher's clock, moved by hand."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(self.body)
        return document


@dataclass
class Receiver:
    """Records every request; answers each path with its scripted statuses, then 200."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    script: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        self.script[path].extend(statuses)

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, count: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def endpoint(self, request: Request) -> Response:
        received = Received(request.url.path, dict(request.headers), await request.body())
        queue = self.script[received.path]
        status = queue.popleft() if queue else 200
        async with self.arrived:
            self.requests.append(received)
            self.arrived.notify_all()
        return Response(b"nope" if status >= 300 else b"ok", status_code=status)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A uvicorn server on 127.0.0.1, on a socket bound and listening before the first request."""
    recv = Receiver()
    app = Starlette(routes=[Route("/{path:path}", recv.endpoint, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen()  # connections queue in the backlog until uvicorn accepts: no start-up race
    recv.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    async with asyncio.TaskGroup() as group:
        group.create_task(server.serve(sockets=[sock]), name="webhook-receiver")
        try:
            yield recv
        finally:
            server.should_exit = True


# -- rows ------------------------------------------------------------------------------------------------
def add_webhook(engine: Engine, url: str, *, secret: str = SECRET, active: bool = True) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(webhooks)
                .values(url=url, secret=secret, topics="*", active=active, created_ms=START_MS)
                .returning(webhooks.c.id)
            ).scalar_one()
        )


def add_event(engine: Engine, webhook_ids: list[int], *, topic: str = "hold.placed", lot: str = "L1") -> int:
    """One outbox event plus a pending delivery per webhook, as ``events.emit`` writes them."""
    with engine.begin() as conn:
        event_id = conn.execute(
            insert(outbox_events)
            .values(
                at_ms=START_MS - 1000,
                topic=topic,
                aggregate_type="hold",
                aggregate_id=lot,
                payload=orjson.dumps({"lot_id": lot, "reason": "excursion"}).decode(),
            )
            .returning(outbox_events.c.id)
        ).scalar_one()
        for webhook_id in webhook_ids:
            conn.execute(
                insert(webhook_deliveries).values(
                    webhook_id=webhook_id, event_id=event_id, status="pending", next_attempt_ms=START_MS
                )
            )
    return int(event_id)


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id)))


def webhook_active(engine: Engine, webhook_id: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(select(webhooks.c.active).where(webhooks.c.id == webhook_id)).scalar_one())


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[Engine]:
    engine = open_database(f"sqlite:///{tmp_path}/c.db")
    try:
        yield engine
    finally:
        engine.dispose()


def dispatcher(engine: Engine, clock: Clock, **options: Any) -> WebhookDispatcher:
    settings: dict[str, Any] = {
        "timeout_s": 5.0,
        "max_attempts": 3,
        "retry_initial_s": 2.0,
        "retry_max_s": 600.0,
        "now_ms": clock,
        "metrics": WebhookMetrics(),
    }
    return WebhookDispatcher(engine, **(settings | options))


def sample(d: WebhookDispatcher, result: str) -> float:
    value = d.metrics.registry.get_sample_value("coldtrace_webhook_deliveries_total", {"result": result})
    assert value is not None
    return value


# -- signatures ------------------------------------------------------------------------------------------
def test_signature_verifies_only_with_the_secret_the_body_and_a_fresh_timestamp() -> None:
    body = b'{"id":1}'
    header = signature_header(SECRET, START_MS, body)
    assert header == f"t={START_MS},v1={sign(SECRET, START_MS, body)}"
    assert verify(SECRET, header, body, now_ms=START_MS + 1000, tolerance_ms=TOLERANCE_MS)
    assert not verify("other", header, body, now_ms=START_MS, tolerance_ms=TOLERANCE_MS)
    assert not verify(SECRET, header, b'{"id":2}', now_ms=START_MS, tolerance_ms=TOLERANCE_MS)
    stale = START_MS + TOLERANCE_MS + 1
    assert not verify(SECRET, header, body, now_ms=stale, tolerance_ms=TOLERANCE_MS)
    # The timestamp is signed: moving it forward to pass the freshness check breaks the signature.
    forged = header.replace(f"t={START_MS}", f"t={stale}")
    assert not verify(SECRET, forged, body, now_ms=stale, tolerance_ms=TOLERANCE_MS)


@pytest.mark.parametrize(
    "header", ["", "v1=abc", f"t={START_MS}", f"t=x,v1={'0' * 64}", f"t={START_MS},t={START_MS},v1=0", "junk"]
)
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    assert not verify(SECRET, header, b"{}", now_ms=START_MS, tolerance_ms=TOLERANCE_MS)


def test_any_v1_entry_may_match_during_secret_rotation() -> None:
    body = b"{}"
    header = f"t={START_MS},v1={sign('old', START_MS, body)},v1={sign('new', START_MS, body)}"
    assert verify("new", header, body, now_ms=START_MS, tolerance_ms=0)
    assert verify("old", header, body, now_ms=START_MS, tolerance_ms=0)


@given(secret=st.text(), body=st.binary(), timestamp=st.integers(min_value=0, max_value=2**53))
def test_sign_verify_round_trips(secret: str, body: bytes, timestamp: int) -> None:
    header = signature_header(secret, timestamp, body)
    assert verify(secret, header, body, now_ms=timestamp, tolerance_ms=0)


@given(
    secret=st.text(),
    body=st.binary(min_size=1),
    index=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_fails(secret: str, body: bytes, index: int, flip: int) -> None:
    header = signature_header(secret, START_MS, body)
    altered = bytearray(body)
    altered[index % len(body)] ^= flip
    assert not verify(secret, header, bytes(altered), now_ms=START_MS, tolerance_ms=0)


def test_retry_delays_double_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible jitter
    for attempts, base in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 600.0), (500, 600.0)]:
        for _ in range(50):
            delay = retry_delay_s(attempts, initial_s=2.0, max_s=600.0, rng=rng)
            assert 0.5 * base <= delay <= base


def test_logged_urls_lose_credentials_and_query() -> None:
    assert redact_url("https://u:pw@hooks.example:8443/a/b?token=s3cret") == "https://hooks.example:8443/a/b"


# -- delivery --------------------------------------------------------------------------------------------
def test_delivery_is_signed_recorded_and_counted(engine: Engine) -> None:
    clock = Clock()

    async def scenario() -> tuple[int, Receiver, WebhookDispatcher]:
        async with receiver() as recv:
            webhook_id = add_webhook(engine, recv.url("/hook"))
            event_id = add_event(engine, [webhook_id])
            async with dispatcher(engine, clock) as d:
                assert await d.deliver_due() == 1
                assert await d.deliver_due() == 0  # delivered: nothing left to do
            return event_id, recv, d

    event_id, recv, d = run(scenario())
    [request] = recv.requests
    assert request.headers["content-type"] == "application/json"
    assert request.headers[EVENT_HEADER.lower()] == "hold.placed"
    [row] = deliveries(engine)
    assert request.headers[DELIVERY_HEADER.lower()] == str(row.id)
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, header, request.body, now_ms=clock.now_ms, tolerance_ms=0)
    assert not verify("wrong", header, request.body, now_ms=clock.now_ms, tolerance_ms=0)
    assert request.event == {
        "id": event_id,
        "topic": "hold.placed",
        "at_ms": START_MS - 1000,
        "aggregate_type": "hold",
        "aggregate_id": "L1",
        "data": {"lot_id": "L1", "reason": "excursion"},
    }
    assert request.body == orjson.dumps(request.event, option=orjson.OPT_SORT_KEYS)
    assert (row.status, row.attempts, row.last_status, row.delivered_ms) == ("delivered", 1, 200, START_MS)
    assert sample(d, "delivered") == 1
    assert sample(d, "retry") == 0
    assert d.metrics.registry.get_sample_value("coldtrace_webhook_latency_seconds_count") == 1


def test_a_failure_is_retried_after_its_backoff_and_then_delivered(sqlite_engine: Engine) -> None:
    engine, clock = sqlite_engine, Clock()

    async def scenario() -> tuple[Receiver, WebhookDispatcher]:
        async with receiver() as recv:
            recv.answer("/hook", 500)
            add_event(engine, [add_webhook(engine, recv.url("/hook"))])
            async with dispatcher(engine, clock, retry_initial_s=10.0) as d:
                assert await d.deliver_due() == 1
                [row] = deliveries(engine)
                assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
                assert row.last_error == "HTTP 500: nope"
                # First retry waits retry_initial_s, jittered into [0.5, 1.0] of it.
                assert START_MS + 5_000 <= row.next_attempt_ms <= START_MS + 10_000
                clock.now_ms = row.next_attempt_ms - 1
                assert await d.deliver_due() == 0
                clock.now_ms = row.next_attempt_ms
                assert await d.deliver_due() == 1
            return recv, d

    recv, d = run(scenario())
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.last_status, row.last_error) == ("delivered", 2, 200, None)
    assert row.delivered_ms == clock.now_ms
    first, second = recv.requests
    assert first.body == second.body
    assert first.headers[DELIVERY_HEADER.lower()] == second.headers[DELIVERY_HEADER.lower()]
    assert (sample(d, "retry"), sample(d, "delivered")) == (1, 1)


def test_a_delivery_that_always_fails_goes_dead_after_max_attempts(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine, clock = sqlite_engine, Clock()

    async def scenario() -> tuple[str, int, WebhookDispatcher]:
        async with receiver() as recv:
            url = recv.url("/hook")
            recv.answer("/hook", 503, 503, 503, 503)
            event_id = add_event(engine, [add_webhook(engine, url)])
            async with dispatcher(engine, clock, max_attempts=3) as d:
                for _ in range(3):
                    assert await d.deliver_due() == 1
                    clock.now_ms = deliveries(engine)[0].next_attempt_ms
                clock.now_ms += 10**9
                assert await d.deliver_due() == 0
            assert len(recv.requests) == 3
            return url, event_id, d

    with caplog.at_level(logging.WARNING, logger="cloud_ingest.webhooks"):
        url, event_id, d = run(scenario())
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.last_status, row.delivered_ms) == ("dead", 3, 503, None)
    [warning] = [r for r in caplog.records if "dead" in r.getMessage()]
    assert url in warning.getMessage()
    assert f"event {event_id}" in warning.getMessage()
    assert (sample(d, "retry"), sample(d, "dead")) == (2, 1)


def test_connection_refused_counts_as_a_failed_attempt(sqlite_engine: Engine) -> None:
    engine, clock = sqlite_engine, Clock()
    add_event(engine, [add_webhook(engine, f"http://{LOOPBACK}:{free_port()}/hook")])

    async def scenario() -> WebhookDispatcher:
        async with dispatcher(engine, clock) as d:
            assert await d.deliver_due() == 1
        return d

    d = run(scenario())
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error.startswith("ConnectError")
    assert row.next_attempt_ms > START_MS
    assert sample(d, "retry") == 1


def test_a_slow_receiver_times_out(sqlite_engine: Engine) -> None:
    engine, clock = sqlite_engine, Clock()

    async def scenario() -> None:
        release = asyncio.Event()

        async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()  # accepts the connection, never answers
            writer.close()

        server = await asyncio.start_server(hang, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        add_event(engine, [add_webhook(engine, f"http://{LOOPBACK}:{port}/hook")])
        async with server, dispatcher(engine, clock, timeout_s=0.2) as d:
            assert await d.deliver_due() == 1
            release.set()

    run(scenario())
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert "Timeout" in row.last_error or "timed out" in row.last_error


def test_deliveries_of_one_webhook_keep_event_order(engine: Engine) -> None:
    clock = Clock()

    async def scenario() -> Receiver:
        async with receiver() as recv:
            slow, fast = add_webhook(engine, recv.url("/slow")), add_webhook(engine, recv.url("/fast"))
            for lot in ["L1", "L2", "L3"]:
                add_event(engine, [slow, fast], lot=lot)
            recv.answer("/slow", 500)
            async with dispatcher(engine, clock) as d:
                # /slow fails its first event; its later events wait behind it while /fast gets all three.
                assert await d.deliver_due() == 4
                assert [r.event["aggregate_id"] for r in recv.on("/slow")] == ["L1"]
                assert [r.event["aggregate_id"] for r in recv.on("/fast")] == ["L1", "L2", "L3"]
                clock.now_ms = max(
                    row.next_attempt_ms for row in deliveries(engine) if row.status == "pending"
                )
                assert await d.deliver_due() == 3
            return recv

    recv = run(scenario())
    assert [r.event["aggregate_id"] for r in recv.on("/slow")] == ["L1", "L1", "L2", "L3"]
    assert {row.status for row in deliveries(engine)} == {"delivered"}


def test_the_limit_caps_one_call_and_the_rest_follows(sqlite_engine: Engine) -> None:
    engine, clock = sqlite_engine, Clock()

    async def scenario() -> Receiver:
        async with receiver() as recv:
            hook = add_webhook(engine, recv.url("/hook"))
            for lot in ["L1", "L2", "L3"]:
                add_event(engine, [hook], lot=lot)
            async with dispatcher(engine, clock) as d:
                assert await d.deliver_due(limit=2) == 2
                assert await d.deliver_due(limit=2) == 1
            return recv

    recv = run(scenario())
    assert [r.event["aggregate_id"] for r in recv.requests] == ["L1", "L2", "L3"]


def test_410_gone_deactivates_the_webhook_and_pauses_its_queue(sqlite_engine: Engine) -> None:
    engine, clock = sqlite_engine, Clock()

    async def scenario() -> tuple[int, WebhookDispatcher]:
        async with receiver() as recv:
            recv.answer("/hook", 410)
            hook = add_webhook(engine, recv.url("/hook"))
            add_event(engine, [hook], lot="L1")
            add_event(engine, [hook], lot="L2")
            async with dispatcher(engine, clock) as d:
                assert await d.deliver_due() == 1
                clock.now_ms += 10**9
                assert await d.deliver_due() == 0  # paused while inactive
            assert len(recv.requests) == 1
            return hook, d

    hook, d = run(scenario())
    first, second = deliveries(engine)
    assert (first.status, first.last_status, second.status) == ("dead", 410, "pending")
    assert not webhook_active(engine, hook)
    assert sample(d, "dead") == 1


def test_inactive_webhooks_are_not_delivered(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    add_event(engine, [add_webhook(engine, f"http://{LOOPBACK}:{free_port()}/", active=False)])

    async def scenario() -> int:
        async with dispatcher(engine, Clock()) as d:
            return await d.deliver_due()

    assert run(scenario()) == 0
    assert deliveries(engine)[0].attempts == 0


def test_a_payload_that_is_not_json_goes_dead_without_a_request(sqlite_engine: Engine) -> None:
    engine = sqlite_engine

    async def scenario() -> Receiver:
        async with receiver() as recv:
            event_id = add_event(engine, [add_webhook(engine, recv.url("/hook"))])
            with engine.begin() as conn:
                conn.execute(outbox_events.update().where(outbox_events.c.id == event_id).values(payload="{"))
            async with dispatcher(engine, Clock()) as d:
                assert await d.deliver_due() == 1
            return recv

    assert run(scenario()).requests == []
    [row] = deliveries(engine)
    assert (row.status, row.last_error) == ("dead", "stored payload is not JSON")


def test_two_dispatchers_never_send_the_same_delivery_twice(engine: Engine, db_url: str) -> None:
    """Two processes' dispatchers (separate engines) race for 100 deliveries across 10 webhooks."""
    clock = Clock()
    other_engine = create_db_engine(db_url)

    async def scenario() -> tuple[Receiver, list[int]]:
        attempted = [0, 0]
        async with receiver() as recv:
            hooks = [add_webhook(engine, recv.url(f"/hook/{n}")) for n in range(10)]
            for n in range(10):
                add_event(engine, hooks, lot=f"L{n}")
            client = httpx.AsyncClient()
            async with (
                client,
                dispatcher(engine, clock, client=client) as first,
                dispatcher(other_engine, clock, client=client) as second,
            ):
                while True:
                    # limit=5 < 10 webhooks: each round leaves queue heads for the other dispatcher.
                    counts = await asyncio.gather(first.deliver_due(limit=5), second.deliver_due(limit=5))
                    attempted = [a + c for a, c in zip(attempted, counts, strict=True)]
                    if not any(counts):
                        break
        return recv, attempted

    try:
        recv, attempted = run(scenario())
    finally:
        other_engine.dispose()
    ids = [r.headers[DELIVERY_HEADER.lower()] for r in recv.requests]
    assert len(ids) == len(set(ids)) == 100
    assert sum(attempted) == 100
    assert min(attempted) > 0
    for n in range(10):
        assert [r.event["aggregate_id"] for r in recv.on(f"/hook/{n}")] == [f"L{m}" for m in range(10)]
    assert {(row.status, row.attempts) for row in deliveries(engine)} == {("delivered", 1)}


# -- the loop --------------------------------------------------------------------------------------------
def test_run_delivers_and_stops_promptly_when_told(sqlite_engine: Engine) -> None:
    engine = sqlite_engine

    async def scenario() -> None:
        stop = asyncio.Event()
        async with receiver() as recv:
            add_event(engine, [add_webhook(engine, recv.url("/hook"))])
            async with dispatcher(engine, Clock()) as d, asyncio.TaskGroup() as group:
                # An hour's interval: the test would time out unless stop ends the wait at once.
                group.create_task(d.run(interval_s=3600.0, stop=stop), name="dispatcher")
                await recv.wait_for(1)
                stop.set()

    run(scenario())
    assert deliveries(engine)[0].status == "delivered"


class _Signal(logging.Handler):
    """Sets an asyncio event when a record is logged (the dispatcher logs from the loop's thread)."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "database error" in record.getMessage():
            self.event.set()


def test_run_survives_database_errors_and_recovers(tmp_path: Any) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/late.db")  # no tables yet: every query fails

    async def scenario() -> None:
        failed = asyncio.Event()
        handler = _Signal(failed)
        logging.getLogger("cloud_ingest.webhooks").addHandler(handler)
        stop = asyncio.Event()
        try:
            async with (
                receiver() as recv,
                dispatcher(engine, Clock()) as d,
                asyncio.TaskGroup() as group,
            ):
                group.create_task(d.run(interval_s=0.01, stop=stop), name="dispatcher")
                await failed.wait()
                await asyncio.to_thread(migrate, engine)
                add_event(engine, [add_webhook(engine, recv.url("/hook"))])
                await recv.wait_for(1)
                stop.set()
        finally:
            logging.getLogger("cloud_ingest.webhooks").removeHandler(handler)

    try:
        run(scenario())
        assert deliveries(engine)[0].status == "delivered"
    finally:
        engine.dispose()


def test_deliver_due_needs_a_client(sqlite_engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="httpx client"):
        run(dispatcher(sqlite_engine, Clock()).deliver_due())
