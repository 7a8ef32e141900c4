"""Outbox disk budget: what is thinned, in which order, and the markers that account for it."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest

from coldtrace.contract import Marker, MarkerKind
from edge_agent.outbox import Outbox, Priority, tables
from tests.edge_agent.outbox_helpers import GATEWAY, drain, reading, signer, verify_chain, waiting

BIG = 1 << 40


def _fill(
    box: Outbox, devices: int, per_device: int, priority_of: dict[int, Priority] | None = None
) -> dict[tuple[str, int], Priority]:
    """Append ``per_device`` readings for each device in 100-reading messages, interleaved in time."""
    appended: dict[tuple[str, int], Priority] = {}
    for start in range(0, per_device, 100):
        for d in range(devices):
            message = []
            for seq in range(start, min(start + 100, per_device)):
                p = (priority_of or {}).get(seq % 10, Priority.ROUTINE)
                message.append((reading(f"dev-{d}", seq), p))
                appended[(f"dev-{d}", seq)] = p
            box.append(message)
    return appended


def _marker_accounting(markers: list[Marker], thinned: set[tuple[str, int]]) -> None:
    """Each marker's count is exactly the thinned readings in its range; together they cover all."""
    covered: set[tuple[str, int]] = set()
    for m in markers:
        assert m.kind is MarkerKind.THINNED
        inside = {(d, s) for d, s in thinned if d == m.device_id and m.seq_from <= s <= m.seq_to}
        assert m.count == len(inside), f"marker {m} counts {m.count}, {len(inside)} were thinned"
        assert not inside & covered, "two markers claim the same reading"
        covered |= inside
    assert covered == thinned


def test_over_budget_only_routine_readings_are_thinned_and_every_gap_is_marked(tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        appended = _fill(box, devices=4, per_device=1500, priority_of={7: Priority.EXCURSION})
    full = path.stat().st_size  # closed: the write-ahead log is folded in
    budget = int(full * 0.45)

    with Outbox(path, gateway_id=GATEWAY, budget_bytes=budget) as box:
        thinned_count = box.enforce_budget()
        stats = box.stats()
        kept = set(waiting(box))
        frames = drain(box, key=key, max_readings=1000)
    assert stats.bytes_on_disk <= budget
    assert path.stat().st_size <= budget  # the file itself shrank
    assert stats.thinned_total == thinned_count == len(appended) - len(kept)

    thinned = set(appended) - kept
    assert {appended[k] for k in thinned} == {Priority.ROUTINE}
    assert all(k in kept for k, p in appended.items() if p is Priority.EXCURSION)
    for d in range(4):  # oldest first, and each series keeps its shape: its first reading stays
        assert (f"dev-{d}", 0) in kept
        lost = [s for dev, s in thinned if dev == f"dev-{d}"]
        stayed = [s for dev, s in kept if dev == f"dev-{d}" and appended[(dev, s)] is Priority.ROUTINE]
        assert sum(lost) / len(lost) < sum(stayed) / len(stayed)
        assert max(lost) - min(lost) > len(lost)  # thinned by halving, not cut out as one block

    batches = verify_chain([f.frame for f in frames], key=key).batches
    assert set(verify_chain([f.frame for f in frames], key=key).keys) == kept
    markers = [m for b in batches for m in b.markers]
    assert markers
    assert markers == list(batches[0].markers)  # they go out in the very next batch
    _marker_accounting(markers, thinned)


def test_anomalous_readings_are_thinned_only_when_no_routine_is_left(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    levels = {0: Priority.ROUTINE, 1: Priority.EXCURSION} | dict.fromkeys(range(2, 10), Priority.ANOMALOUS)
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        appended = _fill(box, devices=2, per_device=1500, priority_of=levels)
    full = path.stat().st_size  # closed: the write-ahead log is folded in
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=int(full * 0.6)) as box:
        box.enforce_budget()
        kept = set(waiting(box))
        assert box.stats().bytes_on_disk <= int(full * 0.6)
    thinned = set(appended) - kept
    assert any(appended[k] is Priority.ANOMALOUS for k in thinned)
    assert not [k for k in kept if appended[k] is Priority.ROUTINE]
    assert all(k in kept for k, p in appended.items() if p is Priority.EXCURSION)


def test_excursions_go_only_when_nothing_else_is_left_and_oldest_first(tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        appended = _fill(
            box, devices=1, per_device=3000, priority_of=dict.fromkeys(range(10), Priority.EXCURSION)
        )
    full = path.stat().st_size  # closed: the write-ahead log is folded in
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=full // 2) as box:
        assert box.enforce_budget() > 0
        kept = sorted(s for _, s in waiting(box))
        frames = drain(box, key=key, max_readings=1000)
    assert kept == list(range(kept[0], 3000))  # the newest survive, whole
    markers = [m for b in verify_chain([f.frame for f in frames], key=key).batches for m in b.markers]
    assert [(m.seq_from, m.seq_to, m.count) for m in markers] == [(0, kept[0] - 1, kept[0])]
    _marker_accounting(markers, set(appended) - {("dev-0", s) for s in kept})


def test_readings_in_formed_frames_are_never_thinned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = signer()
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        _fill(box, devices=2, per_device=600)
        formed = drain(box, key=key, max_readings=500)[:1]  # a frame in flight ...
        for f in box.pending_frames()[1:]:
            box.acknowledge(f.batch_seq)
        box.append([(reading("dev-9", s), Priority.ROUTINE) for s in range(400)])  # ... and new readings
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=64 * 1024) as box, caplog.at_level(logging.WARNING):
        assert box.enforce_budget() == 400
        assert box.pending_frames() == formed
        assert "nothing left to thin" in caplog.text
        assert box.enforce_budget() == 0


def test_within_budget_nothing_is_thinned(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", gateway_id=GATEWAY, budget_bytes=BIG) as box:
        _fill(box, devices=2, per_device=300)
        assert box.enforce_budget() == 0
        assert box.stats().thinned_total == 0


def test_a_thinned_reading_delivered_again_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        appended = _fill(box, devices=1, per_device=2000)
    full = path.stat().st_size  # closed: the write-ahead log is folded in
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=full // 2) as box:
        box.enforce_budget()
        thinned = sorted(set(appended) - set(waiting(box)))
        assert thinned
        assert box.append([(reading(d, s), Priority.ROUTINE) for d, s in thinned]) == 0
        conn = box._conn
        assert conn is not None
        intervals = conn.execute("SELECT seq_from, seq_to FROM seen").fetchall()
    assert len(intervals) <= 2  # thinned-around readings still waiting keep the record compact


def test_repeated_thinning_merges_markers_per_device(tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        appended = _fill(box, devices=1, per_device=2000)
    full = path.stat().st_size  # closed: the write-ahead log is folded in
    kept_before: set[tuple[str, int]] = set(appended)
    for fraction in (0.8, 0.6, 0.4):  # three separate calls, each thinning further
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=int(full * fraction)) as box:
            box.enforce_budget()
            kept_before = set(waiting(box))
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        frames = drain(box, key=key, max_readings=1000)
    markers = [m for b in verify_chain([f.frame for f in frames], key=key).batches for m in b.markers]
    by_device: dict[str, int] = defaultdict(int)
    for m in markers:
        by_device[m.device_id] += 1
    assert by_device == {"dev-0": 1}
    _marker_accounting(markers, set(appended) - kept_before)


def test_thinned_regions_are_packed_so_fewer_readings_are_thinned(tmp_path: Path) -> None:
    # Halving leaves pages half full, which SQLite does not give back; packing rewrites the survivors
    # densely, so the budget is met with fewer readings thinned than without it.
    def thinned(packed: bool) -> int:
        path = tmp_path / f"outbox-{packed}.db"
        with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
            _fill(box, devices=4, per_device=1500)
        budget = int(path.stat().st_size * 0.45)
        no_pack = contextlib.nullcontext() if packed else mock.patch.object(tables, "pack", return_value=None)
        with no_pack, Outbox(path, gateway_id=GATEWAY, budget_bytes=budget) as box:
            count = box.enforce_budget()
            assert box.stats().bytes_on_disk <= budget
            return count

    assert thinned(packed=True) < 0.97 * thinned(packed=False)
