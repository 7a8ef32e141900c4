"""CPU per reading of the cloud ingest, in-process: ``Ingestor.check`` and ``Ingestor.store`` apart.

    python scripts/profile_ingest.py [--group 64] [--batch 500] [--per-gateway 10000] [--core 1]
    py-spy record --gil -r 400 -f raw -o ingest.txt -- python scripts/profile_ingest.py
    python scripts/profile_ingest.py --contract-decoder    # the same, without the fast decoder

For working on the worker's hot path without the broker and the time-series server in the way: the
frames of ``scripts/bench_cloud.py``'s backlog (20 gateways of 100 devices, signed and chained) go
through one ``Ingestor`` on a private, durable PostgreSQL in groups of ``--group`` frames, one
transaction each, as a worker stores a backlog (``--group 1 --batch 125`` is closer to live traffic).
Prints the CPU seconds of this process per reading for each phase and the wall time, which includes
the waits for PostgreSQL that a worker overlaps with checking the next group, and PostgreSQL's own
CPU and WAL per reading (its processes' CPU time over the run, ``pg_stat_wal``). Nothing is written to
BENCHMARKS.md: the figures of record come from ``scripts/bench_cloud.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine  # noqa: E402

from cloud_ingest import batch_decode  # noqa: E402
from cloud_ingest.db.engine import open_database  # noqa: E402
from cloud_ingest.ingest import Inbound, Ingestor, Outcome  # noqa: E402
from cloud_ingest.metrics import CloudMetrics  # noqa: E402
from cloud_ingest.settings import CloudSettings  # noqa: E402
from cloud_ingest.worker import tune_gc  # noqa: E402
from scripts.bench_cloud import PG_BIN, Fleet, backlog_frames, register, tree_cpu  # noqa: E402
from tests.harness.postgres import Postgres  # noqa: E402


def wal_stats(engine: Engine) -> tuple[int, int, int]:
    """The server's WAL records, full-page images and bytes so far (``pg_stat_wal``)."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").one()
    return int(row[0]), int(row[1]), int(row[2])


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--group", type=int, default=64, help="Frames per transaction (a worker's most).")
    parser.add_argument("--batch", type=int, default=500, help="Readings per frame.")
    parser.add_argument("--per-gateway", type=int, default=10_000, help="Readings per gateway (20 gateways).")
    parser.add_argument("--core", type=int, help="Pin this process (not PostgreSQL) to one CPU.")
    parser.add_argument(
        "--contract-decoder", action="store_true",
        help="Decode with the contract's decode_body, not cloud_ingest.batch_decode's fast path (A/B).",
    )  # fmt: skip
    args = parser.parse_args()
    if args.contract_decoder:
        batch_decode._enabled = False  # what its import-time self-check does when pydantic disagrees
    postgres = Postgres(PG_BIN, durable=True)
    postgres.start()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})  # after the server started: it keeps every core
    try:
        engine = open_database(postgres.dsn)
        fleet = Fleet(prefix="t", gateways=20, devices=100)
        sims = register(engine, fleet)
        rng = random.Random(7)  # noqa: S311 - test data, not secrets
        frames = backlog_frames(fleet, sims, per_gateway=args.per_gateway, batch=args.batch, rng=rng)
        # Round robin over the gateways, as their batches interleave on the broker.
        rounds = max(len(f) for f in frames.values())
        order = [Inbound(fs[i], gw, gw) for i in range(rounds) for gw, fs in frames.items() if i < len(fs)]
        settings = CloudSettings()
        ingestor = Ingestor(engine, settings, metrics=CloudMetrics())
        tune_gc(settings.gc_young_threshold)
        check_s = store_s = 0.0
        server_cpu = tree_cpu(postgres.process.pid)
        wal = wal_stats(engine)
        wall = time.perf_counter()
        for start in range(0, len(order), args.group):
            before = time.process_time()
            checked = ingestor.check(order[start : start + args.group])
            between = time.process_time()
            results = ingestor.store(checked, transport="mqtt")
            check_s += between - before
            store_s += time.process_time() - between
            if any(r.outcome is not Outcome.ACCEPTED for r in results):
                raise SystemExit(f"a frame was not accepted: {results}")
        wall = time.perf_counter() - wall
        server_cpu = tree_cpu(postgres.process.pid) - server_cpu
        records, fpi, wal_bytes = (a - b for a, b in zip(wal_stats(engine), wal, strict=True))
        n = 20 * args.per_gateway
        transactions = -(-len(order) // args.group)
        print(
            f"{n} readings, {transactions} transactions of up to {args.group} frames of {args.batch}: "
            f"check {check_s / n * 1e6:.2f} us/reading, store {store_s / n * 1e6:.2f}, "
            f"CPU {(check_s + store_s) / n * 1e6:.2f} ({(check_s + store_s) / transactions * 1e3:.2f} ms a "
            f"transaction), wall {wall / n * 1e6:.2f}; "
            f"PostgreSQL's CPU {server_cpu / n * 1e6:.2f} us/reading, WAL {wal_bytes / n:.0f} bytes/reading "
            f"in {records / n:.2f} records, {fpi} full-page images"
        )
        engine.dispose()
    finally:
        postgres.close()


if __name__ == "__main__":
    main()
