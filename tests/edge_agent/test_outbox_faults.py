"""Fault injection at the SQLite seam: abort every statement of an operation in turn.

Each operation must be all or nothing: after a failure at any statement the outbox - on disk and
in memory - is as before, and retrying gives exactly what a run without the fault gives (frames
byte-identical: Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Outbox, OutboxError, Priority
from tests.edge_agent.outbox_helpers import GATEWAY, T0, reading, rows, signer, waiting

BIG = 1 << 40


class Abort:
    """Interrupt the ``at``-th SQL statement executed on ``conn`` (counting from 1)."""

    def __init__(self, conn: sqlite3.Connection, at: int) -> None:
        self.at, self.seen, self.armed, self.fired = at, 0, False, False
        self.conn = conn
        conn.set_trace_callback(self._trace)
        conn.set_progress_handler(self._progress, 1)

    def _trace(self, _sql: str) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.armed = True

    def _progress(self) -> int:
        if self.armed:
            self.armed, self.fired = False, True
            return 1  # non-zero: SQLite interrupts the running statement
        return 0

    def remove(self) -> None:
        self.conn.set_trace_callback(None)
        self.conn.set_progress_handler(None, 1)


def _snapshot(box: Outbox, *, memory: bool = True) -> tuple[Any, ...]:
    """What the outbox holds; with ``memory`` also its in-memory caches (not rebuilt identically on
    reopen: the per-device heads then only reflect readings still stored, which is all they need).
    """
    conn = box._conn
    assert conn is not None
    s = box.stats()
    return (
        (s.readings, s.oldest_gateway_ms, s.frames_pending, s.thinned_total, s.next_batch_seq, s.head_hash),
        box.pending_frames(),
        waiting(box),
        conn.execute("SELECT device_id, seq_from, seq_to FROM seen ORDER BY 1, 2").fetchall(),
        conn.execute("SELECT kind, device_id, seq_from, seq_to, count FROM marker ORDER BY 2, 3").fetchall(),
        repr(sorted(box._seen.items(), key=lambda kv: kv[0])),
        sorted(box._heads.items()) if memory else None,
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outbox with waiting readings, a seen record, a pending frame and a waiting marker."""
    path = tmp_path_factory.mktemp("faults") / "outbox.db"
    key = signer()
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        box.append(rows("dev-a", range(40)) + rows("dev-b", range(20), Priority.EXCURSION))
        for _ in range(2):
            frame = box.form_batch(signer=key, max_readings=15, now_ms=T0)
            assert frame is not None
        box.acknowledge(1)
        box.append(rows("dev-c", range(200)))
        conn = box._conn
        assert conn is not None
        conn.execute(
            "INSERT INTO marker (kind, device_id, seq_from, seq_to, count, t_from_ms, t_to_ms)"
            " VALUES ('thinned', 'dev-z', 3, 9, 4, 0, 5)"
        )
    return path


OPERATIONS: dict[str, Callable[[Outbox], object]] = {
    "append": lambda box: box.append(
        rows("dev-a", range(38, 45))  # two already waiting
        + rows("dev-b", range(0, 3), Priority.EXCURSION)  # already sent
        + [(reading("dev-a", 100, t_ms=T0 - 5), Priority.ROUTINE), (reading("dev-a", 99), Priority.ANOMALOUS)]
        + rows("dev-d", range(5))
    ),
    "form": lambda box: box.form_batch(
        signer=signer(), max_readings=30, now_ms=T0 + 1, live_after_ms=T0 + 30_000
    ),
    "acknowledge": lambda box: box.acknowledge(2),
    "form several": lambda box: box.form_batches(
        signer=signer(), max_readings=12, now_ms=T0 + 1, live_after_ms=T0 + 30_000, count=3
    ),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_an_operation_failing_at_any_statement_changes_nothing(
    prepared: Path, tmp_path: Path, name: str
) -> None:
    op = OPERATIONS[name]
    reference_path = tmp_path / "reference.db"
    shutil.copy(prepared, reference_path)
    with Outbox(reference_path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        expected_result = op(box)
        expected = _snapshot(box)

    at = 0
    while True:
        at += 1
        path = tmp_path / f"{at}.db"
        shutil.copy(prepared, path)
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
            before = _snapshot(box)
            assert box._conn is not None
            fault = Abort(box._conn, at)
            try:
                result = op(box)
            except OutboxError:
                assert fault.fired
            fault.remove()
            if not fault.fired:
                assert (result, _snapshot(box)) == (expected_result, expected)
                break
            assert _snapshot(box) == before, f"{name}: state changed by a failure at statement {at}"
            assert op(box) == expected_result  # the retry does exactly what a clean run does
            assert _snapshot(box) == expected
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
            assert _snapshot(box, memory=False) == (*expected[:-1], None)  # and that is what is on disk
    assert at > 3, at


def test_thinning_failing_at_any_statement_keeps_every_reading_accounted_for(
    prepared: Path, tmp_path: Path
) -> None:
    at = 0
    fired = True
    while fired:
        at += 2  # every other statement keeps the test short; thinning runs many
        path = tmp_path / f"{at}.db"
        shutil.copy(prepared, path)
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=120 * 1024) as box:
            present = set(waiting(box))
            assert box._conn is not None
            fault = Abort(box._conn, at)
            try:
                box.enforce_budget()
            except OutboxError:
                assert fault.fired
            fault.remove()
            fired = fault.fired
            box.enforce_budget()
            after = set(waiting(box))
            assert box.stats().bytes_on_disk <= 120 * 1024
            conn = box._conn
            thinned = conn.execute("SELECT SUM(count) FROM marker WHERE device_id != 'dev-z'").fetchone()[0]
            assert after <= present
            assert box.stats().thinned_total == thinned == len(present - after)
            state = _snapshot(box, memory=False)
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=120 * 1024) as box:
            assert _snapshot(box, memory=False) == state
