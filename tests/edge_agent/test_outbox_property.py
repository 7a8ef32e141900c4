"""Property test: any interleaving of append / form / acknowledge / reopen / thin keeps every reading.

Every appended (device, seq) is, at every step, exactly one of: waiting, in one pending frame,
acknowledged, or thinned (and then counted by a marker). ``append`` stores exactly the readings it
has never seen, frames chain without gaps, and within a frame each device's seqs ascend.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coldtrace.contract import GENESIS_HASH, MarkerKind, frame_hash, verify_frame
from edge_agent.outbox import Outbox, Priority
from tests.edge_agent.outbox_helpers import GATEWAY, T0, reading, signer, waiting

DEVICES = ("dev-a", "dev-b", "dev-c")
BIG = 1 << 40
Key = tuple[str, int]


class OutboxMachine(RuleBasedStateMachine):
    """A model of where each reading is, checked against a real outbox after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-prop-"))
        self.path = self.dir / "outbox.db"
        self.key = signer()
        self.box = Outbox(self.path, gateway_id=GATEWAY, budget_bytes=BIG, synchronous="NORMAL")
        self.clock = T0
        self.appended: set[Key] = set()
        self.frames: dict[int, set[Key]] = {}  # pending, by batch_seq
        self.frame_bytes: dict[int, bytes] = {}
        self.acked: set[Key] = set()
        self.thinned: set[Key] = set()
        self.markers_sent = 0
        self.head = GENESIS_HASH
        self.next_seq = 1

    @initialize()
    def start(self) -> None:
        """Nothing to prepare beyond __init__; keeps the state machine's shape explicit."""

    @rule(
        device=st.sampled_from(DEVICES),
        seqs=st.lists(st.integers(0, 30), min_size=1, max_size=12),
        priority=st.sampled_from(Priority),
        late=st.booleans(),
    )
    def append(self, device: str, seqs: list[int], priority: Priority, late: bool) -> None:
        self.clock += 1000
        t = self.clock - 50_000 if late else self.clock  # device-buffered readings arrive "old"
        batch = [(reading(device, s, t_ms=t), priority) for s in seqs]
        new = {(device, s) for s in seqs} - self.appended
        assert self.box.append(batch) == len(new)
        self.appended |= new

    @rule(max_readings=st.integers(1, 20), live=st.booleans())
    def form(self, max_readings: int, live: bool) -> None:
        pending = self.box.form_batch(
            signer=self.key,
            max_readings=max_readings,
            now_ms=self.clock,
            live_after_ms=self.clock - 20_000 if live else None,
        )
        if pending is None:
            assert not waiting(self.box)
            return
        batch = verify_frame(pending.frame, self.key.public_key()).batch
        assert (batch.batch_seq, batch.prev_hash) == (self.next_seq, self.head)
        keys = [(r.device_id, r.seq) for r in batch.readings]
        for device in DEVICES:
            mine = [s for d, s in keys if d == device]
            assert mine == sorted(mine), f"{device} out of order within batch {batch.batch_seq}"
        assert len(keys) <= max_readings
        assert pending.reading_count == len(keys)
        self.markers_sent += sum(m.count for m in batch.markers if m.kind is MarkerKind.THINNED)
        self.frames[batch.batch_seq] = set(keys)
        self.frame_bytes[batch.batch_seq] = pending.frame
        self.head, self.next_seq = frame_hash(pending.frame), batch.batch_seq + 1

    @precondition(lambda self: self.frames)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.frames)))
        self.box.acknowledge(seq)
        self.acked |= self.frames.pop(seq)
        del self.frame_bytes[seq]

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Outbox(self.path, gateway_id=GATEWAY, budget_bytes=BIG, synchronous="NORMAL")
        assert {f.batch_seq: f.frame for f in self.box.pending_frames()} == self.frame_bytes

    @rule()
    def squeeze(self) -> None:
        """Reopen under a budget far too small: everything waiting is thinned."""
        before = set(waiting(self.box))
        self.box.close()
        self.box = Outbox(self.path, gateway_id=GATEWAY, budget_bytes=16 * 1024, synchronous="NORMAL")
        thinned = self.box.enforce_budget()
        self.thinned |= before - set(waiting(self.box))
        assert thinned == len(before - set(waiting(self.box)))
        self.box.close()
        self.box = Outbox(self.path, gateway_id=GATEWAY, budget_bytes=BIG, synchronous="NORMAL")

    @invariant()
    def every_reading_is_in_exactly_one_place(self) -> None:
        left = set(waiting(self.box))
        places = [left, self.acked, self.thinned, *self.frames.values()]
        assert sum(len(p) for p in places) == len(self.appended)
        assert set().union(*places) == self.appended
        assert [f.batch_seq for f in self.box.pending_frames()] == sorted(self.frames)
        stats = self.box.stats()
        assert stats.readings == len(left) + sum(len(f) for f in self.frames.values())
        assert (stats.next_batch_seq, stats.head_hash) == (self.next_seq, self.head)

    @invariant()
    def every_thinned_reading_is_counted_by_a_marker(self) -> None:
        conn = self.box._conn
        assert conn is not None
        waiting_markers = conn.execute("SELECT COALESCE(SUM(count), 0) FROM marker").fetchone()[0]
        assert self.markers_sent + waiting_markers == len(self.thinned) == self.box.stats().thinned_total

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OutboxMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxProperties = OutboxMachine.TestCase
