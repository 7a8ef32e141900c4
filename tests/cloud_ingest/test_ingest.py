"""Verification, exactly-once storage, chain continuity and rejects, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select, text

from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import (
    alerts,
    batches,
    chain_gaps,
    devices,
    gateways,
    readings,
    rejects,
    telemetry_spool,
)
from cloud_ingest.housekeeping import housekeep
from cloud_ingest.ingest import READING_COLUMNS, Inbound, Ingestor, IngestResult, Outcome
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.registry import revoke_gateway
from cloud_ingest.settings import CloudSettings
from cloud_ingest.verify import IngestReject
from coldtrace.contract.batch import HEADER_BYTES, frame_hash
from tests.cloud_ingest.builders import T0, GatewaySim, count_rows, reading, series
from tests.cloud_ingest.conftest import fresh_postgres_url
from tests.harness.postgres import Postgres


@pytest.fixture
def ingestor(engine: Engine) -> Ingestor:
    return Ingestor(
        engine, CloudSettings(chain_gap_grace_s=0), metrics=CloudMetrics(), clock=lambda: T0 + 3_600_000
    )


@pytest.fixture
def gw(engine: Engine) -> GatewaySim:
    sim = GatewaySim()
    sim.register(engine)
    return sim


def send(ingestor: Ingestor, frame: bytes, gateway: str = "gw-1", identity: str | None = None):  # type: ignore[no-untyped-def]
    return ingestor.ingest(frame, topic_gateway=gateway, identity=identity or gateway, transport="mqtt")


def test_a_signed_batch_is_stored_once_and_a_resend_changes_nothing(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    frame = gw.frame(list(series("dev-1", [4.0, 4.5, 5.0])))
    first = send(ingestor, frame)
    assert (first.outcome, first.readings_new) == (Outcome.ACCEPTED, 3)
    again = send(ingestor, frame)
    assert again.outcome is Outcome.DUPLICATE
    assert count_rows(engine, readings) == 3
    assert count_rows(engine, batches) == 1
    assert count_rows(engine, telemetry_spool) == 1
    with engine.connect() as conn:
        device = conn.execute(select(devices).where(devices.c.device_id == "dev-1")).one()
    assert (device.last_seq, device.readings_total, device.temperature_c) == (3, 3, 5.0)


def test_a_reading_already_stored_through_another_batch_is_not_stored_twice(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    send(ingestor, gw.frame([reading("dev-1", 1, T0, 4.0)]))
    result = send(ingestor, gw.frame([reading("dev-1", 1, T0, 4.0), reading("dev-1", 2, T0 + 1000, 4.1)]))
    assert (result.readings_new, result.readings_duplicate) == (1, 1)
    assert count_rows(engine, readings) == 2


@pytest.mark.services
def test_a_reading_another_worker_commits_during_the_copy_is_left_to_it(postgres: Postgres) -> None:
    """The race the binary COPY cannot settle by itself (PostgreSQL only: SQLite writers never overlap):
    the reading was not stored when the group looked, and another transaction commits it while the
    COPY waits on its key."""
    engine = open_database(fresh_postgres_url(postgres))
    ingestor = Ingestor(engine, CloudSettings(), metrics=CloudMetrics(), clock=lambda: T0 + 3_600_000)
    gw = GatewaySim()
    gw.register(engine)
    frame = gw.frame(list(series("dev-1", [4.0, 4.5, 5.0])))
    other = engine.connect()
    other.begin()
    row = dict.fromkeys(READING_COLUMNS) | {
        "device_id": "dev-1", "seq": 2, "gateway_id": "gw-9", "batch_seq": 1, "site_id": "site-1",
        "t_device_ms": T0, "t_gateway_ms": T0, "received_ms": T0, "clock": "ok", "temperature_c": 4.5,
        "flags": "", "lot_ids": "",
    }  # fmt: skip
    other.execute(readings.insert().values(**row))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        storing = pool.submit(send, ingestor, frame)
        try:
            with engine.connect() as watcher:
                deadline = time.monotonic() + 30
                while True:
                    waiting = watcher.execute(_WAITING_ON_A_LOCK).scalar_one()
                    # pg_stat_activity is read once per transaction: each look needs a fresh one.
                    watcher.rollback()
                    if waiting:
                        break
                    assert not storing.done(), storing.result()
                    assert time.monotonic() < deadline, "the COPY never waited on the uncommitted reading"
        except BaseException:
            other.rollback()  # else the COPY waits on it for ever and the pool never shuts down
            raise
        other.commit()
        result = storing.result(timeout=30)
    other.close()
    assert (result.outcome, result.readings_new, result.readings_duplicate) == (Outcome.ACCEPTED, 2, 1)
    with engine.connect() as conn:
        stored = conn.execute(select(readings.c.seq, readings.c.gateway_id).order_by(readings.c.seq)).all()
    assert [tuple(r) for r in stored] == [(1, "gw-1"), (2, "gw-9"), (3, "gw-1")]
    engine.dispose()


_WAITING_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _reject(
    ingestor: Ingestor, frame: bytes, *, gateway: str = "gw-1", identity: str | None = None
) -> IngestReject:
    result = send(ingestor, frame, gateway, identity)
    assert result.outcome is Outcome.REJECTED
    assert result.reason is not None
    return result.reason


def test_each_kind_of_bad_batch_is_rejected_with_its_reason_and_dead_lettered(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    good = gw.frame([reading("dev-1", 1, T0, 4.0)])
    altered = bytearray(good)
    altered[-5] ^= 0x01
    assert _reject(ingestor, bytes(altered)) is IngestReject.BAD_SIGNATURE

    forger = GatewaySim(key=Ed25519PrivateKey.generate())
    assert _reject(ingestor, forger.frame([reading("dev-1", 1, T0, 4.0)])) is IngestReject.UNKNOWN_KEY

    stranger = GatewaySim(gateway_id="gw-unknown")
    assert _reject(ingestor, stranger.frame([reading("d", 1, T0, 4.0)]), gateway="gw-unknown") is (
        IngestReject.UNKNOWN_GATEWAY
    )
    # Sent by gw-2's connection on gw-1's topic: the identities disagree.
    assert _reject(ingestor, good, identity="gw-2") is IngestReject.IDENTITY_MISMATCH
    # gw-1's frame on gw-2's topic (and gw-2 identity): signed with a key of another gateway.
    other = GatewaySim(gateway_id="gw-2")
    other.register(engine)
    assert _reject(ingestor, good, gateway="gw-2") is IngestReject.IDENTITY_MISMATCH

    too_big = b"CT\x01" + bytes(HEADER_BYTES) + b"x" * (1024 * 1024)
    assert _reject(ingestor, too_big) is IngestReject.OVERSIZED
    wrong_schema = bytes([*good[:2], 3, *good[3:]])
    assert _reject(ingestor, wrong_schema) is IngestReject.UNSUPPORTED_SCHEMA
    assert (
        _reject(ingestor, b"not a frame at all, just text that is long enough" * 3) is IngestReject.BAD_FRAME
    )

    assert send(ingestor, good).outcome is Outcome.ACCEPTED
    # Same batch sequence, different content, validly signed: a forked or replayed chain.
    forked = GatewaySim(key=gw.key)
    assert _reject(ingestor, forked.frame([reading("dev-1", 9, T0, 9.0)])) is IngestReject.REPLAYED_SEQUENCE

    with engine.connect() as conn:
        reasons = [r.reason for r in conn.execute(select(rejects.c.reason, rejects.c.raw, rejects.c.size))]
        kept = conn.execute(select(rejects.c.raw).where(rejects.c.reason == "bad_signature")).scalar_one()
        big = conn.execute(select(rejects.c.raw, rejects.c.size).where(rejects.c.reason == "oversized")).one()
    assert len(reasons) == 9
    assert kept == bytes(altered)
    assert big.raw is None
    assert big.size > 1024 * 1024
    registry = ingestor.metrics.registry
    assert registry.get_sample_value("coldtrace_cloud_rejects_total", {"reason": "identity_mismatch"}) == 2


def test_a_batch_that_does_not_chain_to_its_stored_predecessor_is_refused(
    ingestor: Ingestor, gw: GatewaySim
) -> None:
    send(ingestor, gw.frame([reading("dev-1", 1, T0, 4.0)]))
    gw.prev = "f" * 64  # the agent's chain was altered
    assert _reject(ingestor, gw.frame([reading("dev-1", 2, T0 + 1, 4.0)])) is IngestReject.CHAIN_MISMATCH


def test_reordered_batches_are_accepted_and_a_gap_raises_a_gateway_alert_until_filled(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    frames = [gw.frame([reading("dev-1", i, T0 + i * 1000, 4.0)]) for i in range(1, 5)]
    for f in (frames[0], frames[3], frames[1]):
        assert send(ingestor, f).outcome is Outcome.ACCEPTED
    with engine.connect() as conn:
        gaps = conn.execute(select(chain_gaps.c.seq_from, chain_gaps.c.seq_to, chain_gaps.c.filled_ms)).all()
    assert [(g.seq_from, g.seq_to, g.filled_ms) for g in gaps] == [(3, 3, None)]

    housekeep(engine, ingestor.settings, ingestor.metrics, now_ms=T0 + 3_600_000)
    with engine.connect() as conn:
        alert = conn.execute(select(alerts).where(alerts.c.kind == "gateway")).one()
    assert (alert.subject_id, alert.condition, alert.rule_id) == ("gw-1", "active", "chain_gap")

    assert send(ingestor, frames[2]).outcome is Outcome.ACCEPTED
    with engine.connect() as conn:
        assert (
            conn.execute(select(alerts.c.condition).where(alerts.c.id == alert.id)).scalar_one() == "cleared"
        )
    assert count_rows(engine, chain_gaps, chain_gaps.c.filled_ms.is_(None)) == 0
    assert count_rows(engine, readings) == 4


def test_a_revoked_gateway_is_refused_even_with_its_key_cached(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    assert send(ingestor, gw.frame([reading("dev-1", 1, T0, 4.0)])).outcome is Outcome.ACCEPTED
    with engine.begin() as conn:
        revoke_gateway(conn, "gw-1", now_ms=T0)
    assert _reject(ingestor, gw.frame([reading("dev-1", 2, T0 + 1, 4.0)])) is IngestReject.REVOKED
    assert count_rows(engine, readings) == 1


# -- several frames in one transaction (what a busy worker does) --------------------------------------
def _many(ingestor: Ingestor, frames: list[tuple[str, bytes]]) -> list[IngestResult]:
    inbound = [Inbound(f, topic_gateway=g, identity=g) for g, f in frames]
    return ingestor.ingest_many(inbound, transport="mqtt")


def test_a_group_checks_each_frame_against_the_ones_before_it_in_the_same_transaction(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    f1, f2, f3 = (gw.frame([reading("dev-1", n, T0 + n * 1000, 4.0)]) for n in (1, 2, 3))
    forked = GatewaySim(key=gw.key, seq=1, prev=frame_hash(f1)).frame([reading("dev-1", 9, T0, 4.0)])
    results = _many(ingestor, [("gw-1", f3), ("gw-1", f1), ("gw-1", f2), ("gw-1", f2), ("gw-1", forked)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3 + [Outcome.DUPLICATE, Outcome.REJECTED]
    assert results[4].reason is IngestReject.REPLAYED_SEQUENCE
    # f3 first opened a gap (1-2), which f1 and f2 filled in the same transaction.
    with engine.connect() as conn:
        gaps = conn.execute(select(chain_gaps.c.filled_ms)).scalars().all()
        head = conn.execute(select(gateways.c.head_seq, gateways.c.batches_accepted)).one()
    assert gaps
    assert None not in gaps
    assert tuple(head) == (3, 3)
    assert count_rows(engine, readings) == 3
    assert count_rows(engine, rejects) == 1


def test_a_bad_or_revoked_frame_in_a_group_is_refused_and_the_others_are_stored(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    other = GatewaySim(gateway_id="gw-2", site_id="site-2")
    other.register(engine)
    revoked = GatewaySim(gateway_id="gw-3", site_id="site-3")
    revoked.register(engine)
    with engine.begin() as conn:
        revoke_gateway(conn, "gw-3", now_ms=T0)
    good = gw.frame([reading("dev-1", 1, T0, 4.0)])
    altered = bytearray(other.frame([reading("dev-2", 1, T0, 4.0)]))
    altered[-5] ^= 0x01
    results = _many(ingestor, [("gw-1", good), ("gw-2", bytes(altered)),
                               ("gw-3", revoked.frame([reading("dev-3", 1, T0, 4.0)]))])  # fmt: skip
    assert [(r.outcome, r.reason) for r in results] == [
        (Outcome.ACCEPTED, None), (Outcome.REJECTED, IngestReject.BAD_SIGNATURE),
        (Outcome.REJECTED, IngestReject.REVOKED),
    ]  # fmt: skip
    assert count_rows(engine, readings) == 1
    assert count_rows(engine, rejects) == 2


def test_a_reading_two_gateways_heard_in_one_group_is_new_only_in_the_first(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    other = GatewaySim(gateway_id="gw-2", site_id="site-2")
    other.register(engine)
    shared = reading("dev-1", 1, T0, 4.0)
    later = reading("dev-1", 2, T0 + 1000, 4.1)
    results = _many(ingestor, [("gw-1", gw.frame([shared])), ("gw-2", other.frame([shared, later]))])
    assert [(r.readings_new, r.readings_duplicate) for r in results] == [(1, 0), (1, 1)]
    with engine.connect() as conn:
        stored = conn.execute(select(readings.c.seq, readings.c.gateway_id).order_by(readings.c.seq)).all()
        total = conn.execute(select(devices.c.readings_total)).scalar_one()
    assert [tuple(r) for r in stored] == [(1, "gw-1"), (2, "gw-2")]
    assert total == 2
    assert count_rows(engine, telemetry_spool) == 1  # one spool row per transaction


def test_each_batch_of_a_group_keeps_its_own_telemetry_point(
    engine: Engine, ingestor: Ingestor, gw: GatewaySim
) -> None:
    other = GatewaySim(gateway_id="gw-2", site_id="site-2")
    other.register(engine)
    frames = [("gw-1", gw.frame([reading("dev-1", n, T0 + n * 1000, 4.0)])) for n in (1, 2, 3)]
    frames.append(("gw-2", other.frame([reading("dev-2", 1, T0, 4.0)])))
    assert {r.outcome for r in _many(ingestor, frames)} == {Outcome.ACCEPTED}
    with engine.connect() as conn:
        lines = conn.execute(select(telemetry_spool.c.lines)).scalar_one().splitlines()
    stamps = {
        (line.split(",", 2)[1], int(line.rsplit(" ", 1)[1]))
        for line in lines
        if line.startswith("ingest_batch,")
    }
    # Three batches of gw-1 in one transaction: three distinct (series, time) points, none overwritten.
    assert len(stamps) == 4
    gw1 = sorted(t for g, t in stamps if g == "gateway=gw-1")
    assert gw1 == [gw1[0], gw1[0] + 1, gw1[0] + 2]


def test_every_reject_reason_is_exported_from_the_start_so_its_first_reject_shows_as_a_rate() -> None:
    registry = CloudMetrics().registry
    for reason in IngestReject:
        assert registry.get_sample_value("coldtrace_cloud_rejects_total", {"reason": reason.value}) == 0
