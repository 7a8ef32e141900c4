"""Outbox benchmark: append throughput (FULL vs NORMAL), form_batch time, thinning speed.

Run: ``python -m tests.edge_agent.bench_outbox [--rounds 5]``. Prints medians of several rounds and a
same-run baseline (raw SQLite inserts of equally sized rows) so noisy machines can be compared.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coldtrace.contract import Reading, canonical_bytes
from edge_agent.outbox import Outbox, Priority
from edge_agent.outbox.schema import Synchronous
from tests.edge_agent.outbox_helpers import GATEWAY, T0, reading, signer

DEVICES = 50
MESSAGE = 100  # readings per append: one device message of buffered readings


def _messages(count: int) -> list[list[tuple[Reading, Priority]]]:
    out = []
    seqs = [0] * DEVICES
    for i in range(count):
        device = i % DEVICES
        batch = []
        for _ in range(MESSAGE):
            batch.append((reading(f"dev-{device:04d}", seqs[device], t_ms=T0 + i), Priority.ROUTINE))
            seqs[device] += 1
        out.append(batch)
    return out


def bench_append(
    workdir: Path, synchronous: Synchronous, messages: list[list[tuple[Reading, Priority]]]
) -> float:
    """Readings per second appended in 100-reading transactions."""
    path = workdir / f"append-{synchronous}-{time.perf_counter_ns()}.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=1 << 40, synchronous=synchronous) as outbox:
        start = time.perf_counter()
        for message in messages:
            outbox.append(message)
        elapsed = time.perf_counter() - start
    return len(messages) * MESSAGE / elapsed


def bench_raw(
    workdir: Path, synchronous: Synchronous, messages: list[list[tuple[Reading, Priority]]]
) -> float:
    """Baseline: the same rows (pre-encoded) into a bare rowid table, same transactions."""
    path = workdir / f"raw-{synchronous}-{time.perf_counter_ns()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    encoded = [[(canonical_bytes(r),) for r, _ in m] for m in messages]
    start = time.perf_counter()
    for rows in encoded:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO r (body) VALUES (?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(messages) * MESSAGE / elapsed


def bench_form(workdir: Path, batches: int) -> tuple[float, float]:
    """Milliseconds per form_batch of 500 readings (median) and the frame size in KiB."""
    path = workdir / f"form-{time.perf_counter_ns()}.db"
    key = signer()
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=1 << 40) as outbox:
        for message in _messages(batches * 5):
            outbox.append(message)
        times = []
        size = 0
        for _ in range(batches):
            start = time.perf_counter()
            frame = outbox.form_batch(signer=key, max_readings=500, now_ms=T0)
            times.append(time.perf_counter() - start)
            assert frame is not None
            assert frame.reading_count == 500
            size = len(frame.frame)
    return statistics.median(times) * 1000, size / 1024


def bench_thin(workdir: Path, readings: int) -> tuple[float, int, int]:
    """Readings thinned per second bringing a full outbox down to half its size."""
    path = workdir / f"thin-{time.perf_counter_ns()}.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=1 << 40, synchronous="NORMAL") as outbox:
        for message in _messages(readings // MESSAGE):
            outbox.append(message)
    size = path.stat().st_size  # closed: the write-ahead log is folded in
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=size // 2) as outbox:
        start = time.perf_counter()
        thinned = outbox.enforce_budget()
        elapsed = time.perf_counter() - start
        after = outbox.stats().bytes_on_disk
    return thinned / elapsed, size, after


def _median(fn: Callable[[], float], rounds: int) -> float:
    return statistics.median(fn() for _ in range(rounds))


def main() -> None:
    """Run every benchmark and print a short table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    messages = _messages(args.messages)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        modes: tuple[Synchronous, ...] = ("FULL", "NORMAL")
        for sync in modes:
            ours = _median(functools.partial(bench_append, workdir, sync, messages), args.rounds)
            raw = _median(functools.partial(bench_raw, workdir, sync, messages), args.rounds)
            print(f"append {sync:6s}: {ours:>9,.0f} readings/s   (raw SQLite, same rows: {raw:,.0f} rows/s)")
        ms, kib = bench_form(workdir, 20)
        print(f"form_batch of 500 readings: {ms:.1f} ms median (frame {kib:.0f} KiB)")
        rate, before, after = bench_thin(workdir, 50_000)
        print(f"thinning: {rate:,.0f} readings/s ({before / 1e6:.1f} MB -> {after / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
