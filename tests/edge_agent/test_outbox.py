"""Outbox: append, batch forming, the hash chain, restarts, idempotence and send order."""

from __future__ import annotations

import logging
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldtrace.contract import GENESIS_HASH, Limits, MarkerKind, frame_hash, verify_frame
from edge_agent.outbox import (
    GatewayMismatch,
    Outbox,
    OutboxError,
    OutboxLocked,
    Priority,
    UnknownBatch,
    schema,
)
from tests.edge_agent.outbox_helpers import (
    GATEWAY,
    T0,
    drain,
    reading,
    rows,
    signer,
    verify_chain,
    waiting,
)

BIG = 1 << 40


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return signer()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        yield box


def _per_device_ascending(keys: list[tuple[str, int]]) -> bool:
    last: dict[str, int] = {}
    for device, seq in keys:
        if seq <= last.get(device, -1):
            return False
        last[device] = seq
    return True


def test_readings_round_trip_exactly_through_signed_chained_frames(
    outbox: Outbox, key: Ed25519PrivateKey
) -> None:
    appended = rows("dev-a", range(20)) + rows("dev-b", range(15), Priority.ANOMALOUS)
    assert outbox.append(appended) == 35

    frames = drain(outbox, key=key, max_readings=8)

    assert [f.batch_seq for f in frames] == [1, 2, 3, 4, 5]
    assert [f.reading_count for f in frames] == [8, 8, 8, 8, 3]
    drained = verify_chain([f.frame for f in frames], key=key)
    assert drained.batches[0].prev_hash == GENESIS_HASH
    assert all(b.gateway_id == GATEWAY and b.created_ms == T0 for b in drained.batches)
    sent = {(r.device_id, r.seq): r for b in drained.batches for r in b.readings}
    assert sent == {(r.device_id, r.seq): r for r, _ in appended}  # model equality: every field exact
    assert all(_per_device_ascending([(r.device_id, r.seq) for r in b.readings]) for b in drained.batches)
    assert outbox.pending_frames() == frames
    assert outbox.form_batch(signer=key, max_readings=8, now_ms=T0) is None


def test_chain_and_batch_seq_continue_across_reopen(path: Path, key: Ed25519PrivateKey) -> None:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        box.append(rows("dev-a", range(10)))
        first = drain(box, key=key, max_readings=5)
        for f in first:
            box.acknowledge(f.batch_seq)
        head = box.stats().head_hash
    assert head == frame_hash(first[-1].frame)

    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        assert box.stats().next_batch_seq == 3
        box.append(rows("dev-a", range(10, 13)))
        frame = box.form_batch(signer=key, max_readings=5, now_ms=T0)
    assert frame is not None
    assert frame.batch_seq == 3
    assert verify_frame(frame.frame, key.public_key()).batch.prev_hash == head


def test_restart_resends_pending_frames_byte_identical(path: Path, key: Ed25519PrivateKey) -> None:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        box.append(rows("dev-a", range(30)))
        formed = drain(box, key=key, max_readings=10)

    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        assert box.pending_frames() == formed  # same batch_seq, bytes and counts
        box.acknowledge(1)
        assert [f.batch_seq for f in box.pending_frames()] == [2, 3]
        box.append(rows("dev-a", range(30, 32)))
        nxt = box.form_batch(signer=key, max_readings=10, now_ms=T0)
        assert nxt is not None
        stats = box.stats()

    verify_chain([f.frame for f in formed] + [nxt.frame], key=key)
    assert stats.readings == 22
    assert stats.frames_pending == 3


def test_several_batches_are_acknowledged_at_once_or_none_if_one_was_never_formed(
    path: Path, key: Ed25519PrivateKey
) -> None:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        box.append(rows("dev-a", range(40)))
        drain(box, key=key, max_readings=10)
        with pytest.raises(UnknownBatch):
            box.acknowledge(2, 9)
        assert [f.batch_seq for f in box.pending_frames()] == [1, 2, 3, 4]  # nothing forgotten
        box.acknowledge(1, 3)
        box.acknowledge(3, 2)  # 3 again: harmless
        assert [f.batch_seq for f in box.pending_frames()] == [4]
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        assert [f.batch_seq for f in box.pending_frames()] == [4]  # the acknowledgements were stored


def test_the_same_readings_twice_are_stored_once(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    batch = rows("dev-a", range(10)) + rows("dev-b", range(3))
    assert outbox.append(batch) == 13
    assert outbox.append(batch) == 0
    assert outbox.append(batch + batch) == 0
    assert outbox.append([*batch, (reading("dev-a", 10), Priority.ROUTINE)]) == 1
    assert outbox.stats().readings == 14
    assert sorted(verify_chain([f.frame for f in drain(outbox, key=key)], key=key).keys) == sorted(
        [("dev-a", s) for s in range(11)] + [("dev-b", s) for s in range(3)]
    )


def test_a_reading_already_sent_and_acknowledged_is_not_sent_again(
    path: Path, key: Ed25519PrivateKey
) -> None:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        box.append(rows("dev-a", range(100)))
        for f in drain(box, key=key, max_readings=30):
            box.acknowledge(f.batch_seq)
        assert box.append(rows("dev-a", range(90, 100))) == 0  # the broker redelivers
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:  # also after a restart
        assert box.append(rows("dev-a", range(0, 101))) == 1
        frame = box.form_batch(signer=key, max_readings=30, now_ms=T0)
    assert frame is not None
    assert verify_chain([frame.frame], key=key, first_prev=None).keys == [("dev-a", 100)]


def test_the_sent_record_stays_one_interval_per_device(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    for start in range(0, 1000, 100):
        outbox.append(rows("dev-a", range(start, start + 100)) + rows("dev-b", range(start, start + 100)))
        for f in drain(outbox, key=key, max_readings=37):
            outbox.acknowledge(f.batch_seq)
    conn = outbox._conn
    assert conn is not None
    assert conn.execute("SELECT device_id, seq_from, seq_to FROM seen ORDER BY device_id").fetchall() == [
        ("dev-a", 0, 999),
        ("dev-b", 0, 999),
    ]


def test_a_redelivery_with_different_content_keeps_the_first(
    outbox: Outbox, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.append([(reading("dev-a", 1, temp=4.0), Priority.ROUTINE)])
    with caplog.at_level(logging.WARNING):
        assert outbox.append([(reading("dev-a", 1, temp=9.0), Priority.ROUTINE)]) == 0
    assert "different content" in caplog.text
    frame = outbox.form_batch(signer=key, max_readings=10, now_ms=T0)
    assert frame is not None
    assert verify_frame(frame.frame, key.public_key()).batch.readings[0].temperature_c == 4.0


def test_a_plain_broker_redelivery_is_dropped_without_a_warning(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    first = reading("dev-a", 1, temp=4.0)
    outbox.append([(first, Priority.ROUTINE)])
    # Same device payload, received again later: only what the gateway added differs.
    again = first.model_copy(update={"t_gateway_ms": first.t_gateway_ms + 5_000})
    with caplog.at_level(logging.WARNING):
        assert outbox.append([(again, Priority.ROUTINE)]) == 0
    assert "different content" not in caplog.text


def test_late_arrivals_are_sent_in_sequence_order(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    # dev-a's 5..9 arrive first, then 0..4 (later receive times), then 10..12; dev-b is steady.
    outbox.append(rows("dev-a", range(5, 10), t_ms=T0 + 50_000))
    outbox.append(rows("dev-b", range(0, 5), t_ms=T0 + 55_000))
    outbox.append(rows("dev-a", range(0, 5), t_ms=T0 + 60_000))
    outbox.append(rows("dev-a", range(10, 13), t_ms=T0 + 61_000) + rows("dev-a", range(2, 4)))  # dups too
    keys = verify_chain([f.frame for f in drain(outbox, key=key, max_readings=4)], key=key).keys
    assert sorted(keys) == sorted([("dev-a", s) for s in range(13)] + [("dev-b", s) for s in range(5)])
    assert _per_device_ascending(keys)


def test_live_readings_and_excursions_go_before_the_backfill(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    live_after = T0 + 3_600_000
    backlog = rows("dev-a", range(100), t_ms=T0) + rows("dev-b", range(100), t_ms=T0 + 1)
    backlog[50] = (backlog[50][0], Priority.EXCURSION)  # dev-a seq 50
    outbox.append(backlog)
    outbox.append(rows("dev-a", range(100, 110), t_ms=live_after + 5))
    outbox.append(rows("dev-c", range(0, 10), t_ms=live_after + 10))

    frames = drain(outbox, key=key, max_readings=25, live_after_ms=live_after)
    batches = verify_chain([f.frame for f in frames], key=key).batches
    first = {(r.device_id, r.seq) for r in batches[0].readings}
    assert first >= {
        ("dev-a", 50),
        *(("dev-a", s) for s in range(100, 110)),
        *(("dev-c", s) for s in range(10)),
    }

    keys = [(r.device_id, r.seq) for b in batches for r in b.readings]
    assert len(keys) == len(set(keys)) == 220
    backfill = [seq for device, seq in keys if device == "dev-a" and seq < 100 and seq != 50]
    assert backfill == sorted(backfill)  # the backfill stream keeps each device's order
    assert all(_per_device_ascending([(r.device_id, r.seq) for r in b.readings]) for b in batches)


def test_without_live_after_everything_goes_oldest_first(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    outbox.append(rows("dev-a", range(3), t_ms=T0 + 10))
    outbox.append(rows("dev-b", range(3), Priority.EXCURSION, t_ms=T0 + 20))
    outbox.append(rows("dev-c", range(3), t_ms=T0 + 5))
    frame = outbox.form_batch(signer=key, max_readings=3, now_ms=T0)
    assert frame is not None
    assert [(r.device_id, r.seq) for r in verify_frame(frame.frame, key.public_key()).batch.readings] == [
        ("dev-c", 0),
        ("dev-c", 1),
        ("dev-c", 2),
    ]


def test_frames_respect_the_size_limit(path: Path, key: Ed25519PrivateKey) -> None:
    limits = Limits(max_batch_bytes=16 * 1024)
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG, limits=limits) as box:
        box.append([(reading("dev-a", s, lots=30), Priority.ROUTINE) for s in range(60)])
        frames = drain(box, key=key, max_readings=1000)
    assert all(len(f.frame) <= limits.max_batch_bytes for f in frames)
    assert len(frames) >= 3
    assert sum(f.reading_count for f in frames) == 60
    assert max(len(f.frame) for f in frames) > limits.max_batch_bytes * 0.8  # frames are filled, not tiny
    verify_chain([f.frame for f in frames], key=key)


@pytest.mark.parametrize("bad", [0, 1001])
def test_max_readings_must_be_within_the_contract(outbox: Outbox, key: Ed25519PrivateKey, bad: int) -> None:
    with pytest.raises(ValueError, match="max_readings"):
        outbox.form_batch(signer=key, max_readings=bad, now_ms=T0)


def test_acknowledge_is_idempotent_and_refuses_unknown_batches(
    outbox: Outbox, key: Ed25519PrivateKey
) -> None:
    outbox.append(rows("dev-a", range(3)))
    frame = outbox.form_batch(signer=key, max_readings=10, now_ms=T0)
    assert frame is not None
    outbox.acknowledge(frame.batch_seq)
    outbox.acknowledge(frame.batch_seq)
    with pytest.raises(UnknownBatch):
        outbox.acknowledge(2)
    assert outbox.pending_frames() == []


def test_stats_count_waiting_and_framed_readings(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    empty = outbox.stats()
    assert (empty.readings, empty.oldest_gateway_ms, empty.frames_pending) == (0, None, 0)
    assert empty.next_batch_seq == 1
    assert empty.head_hash == GENESIS_HASH
    outbox.append(
        rows("dev-a", range(10), t_ms=T0 + 7) + rows("dev-b", range(5), Priority.EXCURSION, t_ms=T0 + 9)
    )
    outbox.form_batch(signer=key, max_readings=4, now_ms=T0)
    stats = outbox.stats()
    assert (stats.readings, stats.frames_pending, stats.next_batch_seq) == (15, 1, 2)
    assert stats.oldest_gateway_ms == T0 + 7
    assert stats.bytes_on_disk > 0


def test_damaged_stored_reading_is_quarantined_and_leaves_a_marker(
    outbox: Outbox, key: Ed25519PrivateKey
) -> None:
    outbox.append(rows("dev-a", range(5)))
    conn = outbox._conn
    assert conn is not None
    # Flip one digit of a stored temperature: valid JSON, but the CRC no longer matches.
    body = conn.execute("SELECT body FROM reading WHERE seq = 2").fetchone()[0]
    conn.execute(
        "UPDATE reading SET body = ? WHERE seq = 2",
        (body.replace(b'"temperature_c":4.', b'"temperature_c":5.'),),
    )

    frame = outbox.form_batch(signer=key, max_readings=10, now_ms=T0)
    assert frame is not None
    batch = verify_frame(frame.frame, key.public_key()).batch
    assert [r.seq for r in batch.readings] == [0, 1, 3, 4]
    assert [(m.kind, m.seq_from, m.seq_to, m.count) for m in batch.markers] == [(MarkerKind.MISSING, 2, 2, 1)]
    assert conn.execute("SELECT device_id, seq FROM quarantine").fetchall() == [("dev-a", 2)]
    assert outbox.append(rows("dev-a", [2])) == 0  # not taken again on redelivery


@pytest.mark.parametrize(
    ("device", "seq", "stolen"),
    [
        ("dev-a", 1, ("dev-a", 12)),  # "seq":1 is a prefix of "seq":12
        ("dev-a", 3, ("dev-ab", 3)),  # "dev-a" is a prefix of "dev-ab"
    ],
)
def test_a_stored_reading_filed_under_another_key_is_quarantined(
    outbox: Outbox, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture, device: str, seq: int,
    stolen: tuple[str, int],
) -> None:  # fmt: skip
    outbox.append(rows("dev-a", [1, 3, 12]) + rows("dev-ab", [3]))
    conn = outbox._conn
    assert conn is not None
    # Another reading's bytes with their own (valid) CRC: only the key check can tell.
    body, crc = conn.execute(
        "SELECT body, crc FROM reading WHERE device_id = ? AND seq = ?", stolen
    ).fetchone()
    conn.execute(
        "UPDATE reading SET body = ?, crc = ? WHERE device_id = ? AND seq = ?", (body, crc, device, seq)
    )

    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox.store"):
        frame = outbox.form_batch(signer=key, max_readings=10, now_ms=T0)
    assert frame is not None
    batch = verify_frame(frame.frame, key.public_key()).batch
    keys = {(r.device_id, r.seq) for r in batch.readings}
    assert keys == {("dev-a", 1), ("dev-a", 3), ("dev-a", 12), ("dev-ab", 3)} - {(device, seq)}
    assert [(m.kind, m.device_id, m.seq_from) for m in batch.markers] == [(MarkerKind.MISSING, device, seq)]
    assert conn.execute("SELECT device_id, seq, reason FROM quarantine").fetchall() == [
        (device, seq, "the stored reading does not match its key")
    ]
    assert "does not match its key" in caplog.text


def test_a_second_owner_is_refused(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.outbox.schema.LOCK_TIMEOUT_S", 0.01)
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG), pytest.raises(OutboxLocked):
        Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG)


def test_an_outbox_of_another_gateway_is_refused(path: Path) -> None:
    Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG).close()
    with pytest.raises(GatewayMismatch, match="belongs to gateway"):
        Outbox(path, gateway_id="gw-other", budget_bytes=BIG)


def test_a_closed_outbox_refuses_work(path: Path, key: Ed25519PrivateKey) -> None:
    box = Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG)
    box.close()
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append(rows("dev-a", [1]))
    with pytest.raises(OutboxError, match="closed"):
        box.stats()


def test_nothing_waiting_forms_nothing(outbox: Outbox, key: Ed25519PrivateKey) -> None:
    assert outbox.form_batch(signer=key, max_readings=10, now_ms=T0, live_after_ms=T0) is None
    assert outbox.append([]) == 0
    assert waiting(outbox) == []


def _layout(path: Path) -> tuple[int, str]:
    """The file's schema version and how its reading table is declared."""
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'reading'").fetchone()[0]
        return version, sql
    finally:
        conn.close()


def test_a_version_1_outbox_is_migrated_keeping_readings_frames_and_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    def fill(path: Path) -> None:
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
            box.append(rows("dev-a", range(300)) + rows("dev-c", range(5, 60), Priority.ANOMALOUS))
            box.append(
                [*rows("dev-b", range(40), Priority.EXCURSION), (reading("dev-a", 400), Priority.ROUTINE)]
            )
            box.append(rows("dev-a", range(300, 320)))  # late: slotted between stored neighbours
            box.form_batch(signer=key, max_readings=50, now_ms=T0)

    def damage(path: Path, *, version_1: bool) -> None:
        conn = sqlite3.connect(path)
        if version_1:  # version 1 stored a body's plain CRC-32 and checked its key separately
            conn.create_function("crc32", 1, zlib.crc32)
            conn.execute("UPDATE reading SET crc = crc32(body)")
        # One reading's bytes changed; another's replaced by a third reading's bytes and CRC.
        conn.execute(
            "UPDATE reading SET body = CAST(replace(body, '\"temperature_c\":', '\"temperature_c\":1')"
            " AS BLOB) WHERE device_id = 'dev-a' AND seq = 310"
        )
        conn.execute(
            "UPDATE reading SET (body, crc) ="
            " (SELECT body, crc FROM reading WHERE device_id = 'dev-c' AND seq = 51)"
            " WHERE device_id = 'dev-c' AND seq = 50"
        )
        conn.commit()
        conn.close()

    old, new = tmp_path / "v1.db", tmp_path / "v2.db"
    with (
        mock.patch.object(schema, "SCHEMA_VERSION", 1),
        mock.patch.object(schema, "MIGRATIONS", schema.MIGRATIONS[:1]),
    ):
        fill(old)
    damage(old, version_1=True)
    fill(new)
    damage(new, version_1=False)
    version, sql = _layout(old)
    assert version == 1
    assert "WITHOUT ROWID" not in sql

    with (
        Outbox(old, gateway_id=GATEWAY, budget_bytes=BIG) as migrated,
        Outbox(new, gateway_id=GATEWAY, budget_bytes=BIG) as fresh,
    ):
        assert migrated.pending_frames() == fresh.pending_frames()
        assert waiting(migrated) == waiting(fresh)
        # Everything but the size on disk, which holds the migration's write-ahead log for now.
        assert replace(migrated.stats(), bytes_on_disk=0) == replace(fresh.stats(), bytes_on_disk=0)
        # The same frames, byte for byte, continuing the same chain, in the same send order; the
        # damaged readings quarantined alike, each leaving a MISSING marker.
        frames = [f.frame for f in drain(migrated, key=key, live_after_ms=T0 + 50_000)]
        assert frames == [f.frame for f in drain(fresh, key=key, live_after_ms=T0 + 50_000)]
        markers = [m for f in frames for m in verify_frame(f, key.public_key()).batch.markers]
        assert {(m.kind, m.device_id, m.seq_from) for m in markers} == {
            (MarkerKind.MISSING, "dev-a", 310), (MarkerKind.MISSING, "dev-c", 50)
        }  # fmt: skip
        quarantined = "SELECT device_id, seq, reason FROM quarantine ORDER BY device_id"
        assert migrated._conn is not None
        assert fresh._conn is not None
        assert migrated._conn.execute(quarantined).fetchall() == fresh._conn.execute(quarantined).fetchall()
    version, sql = _layout(old)
    assert version == schema.SCHEMA_VERSION == 2
    assert "WITHOUT ROWID" in sql
    # The old table's pages went back to the disk: the file is the size of one created at version 2.
    assert old.stat().st_size <= new.stat().st_size * 1.1


def test_deleted_rows_are_zeroed_only_on_pages_written_anyway(outbox: Outbox) -> None:
    # Debian's SQLite defaults to secure_delete = 1, which rewrote every freed page during a drain.
    assert outbox._conn is not None
    assert outbox._conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST


def test_an_acknowledgement_is_committed_without_a_sync_and_the_next_batch_with_one(
    path: Path, key: Ed25519PrivateKey
) -> None:
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        conn = box._conn
        assert conn is not None
        box.append(rows("dev-a", range(9)))
        first = box.form_batch(signer=key, max_readings=3, now_ms=T0)
        second = box.form_batch(signer=key, max_readings=3, now_ms=T0)
        assert first is not None
        assert second is not None
        box.acknowledge(first.batch_seq)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: not waited for
        assert box.form_batch(signer=key, max_readings=3, now_ms=T0) is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: frames are durable when sent
        pending = [f.batch_seq for f in box.pending_frames()]
        assert pending == [second.batch_seq, second.batch_seq + 1]
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:  # the acknowledgement was committed
        assert [f.batch_seq for f in box.pending_frames()] == pending


def test_batches_formed_together_are_the_batches_formed_one_by_one(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    appended = rows("dev-a", range(40)) + rows("dev-b", range(25), Priority.EXCURSION, t_ms=T0 + 3)
    frames: dict[str, list[bytes]] = {}
    for how in ("together", "one by one"):
        with Outbox(tmp_path / f"{how}.db", gateway_id=GATEWAY, budget_bytes=BIG) as box:
            box.append(appended)
            if how == "together":
                formed = box.form_batches(signer=key, max_readings=10, now_ms=T0, live_after_ms=T0, count=4)
                formed += box.form_batches(signer=key, max_readings=10, now_ms=T0, live_after_ms=T0, count=9)
            else:
                formed = []
                while frame := box.form_batch(signer=key, max_readings=10, now_ms=T0, live_after_ms=T0):
                    formed.append(frame)
            assert box.waiting == 0
            assert [f.batch_seq for f in box.pending_frames()] == list(range(1, 8))
        frames[how] = [f.frame for f in formed]
        with Outbox(tmp_path / f"{how}.db", gateway_id=GATEWAY, budget_bytes=BIG) as box:  # and on disk
            assert [f.frame for f in box.pending_frames()] == frames[how]
            assert box.stats().head_hash == frame_hash(frames[how][-1])
            # The sent-record is written once per transaction: still one interval per device, and
            # what the frames carry is not stored again.
            assert box._conn is not None
            assert box._conn.execute("SELECT * FROM seen ORDER BY device_id").fetchall() == [
                ("dev-a", 0, 39),
                ("dev-b", 0, 24),
            ]
            assert box.append(appended) == 0
    assert len(frames["together"]) == 7  # 65 readings by 10; the second call stopped when none waited
    assert frames["together"] == frames["one by one"]  # byte for byte: Ed25519 signatures are deterministic
    verify_chain(frames["together"], key=key)
