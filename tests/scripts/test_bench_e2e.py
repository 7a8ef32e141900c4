"""``scripts/bench_e2e.py --quick`` over the real stack: both paths measured, every excursion seen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.services import require_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.services


def test_quick_run_times_every_excursion_on_both_paths(tmp_path: Path) -> None:
    require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    require_binary("PostgreSQL 15", "postgres", package="postgresql-15",
                   extra_dirs=[Path("/usr/lib/postgresql/15/bin")])  # fmt: skip
    require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.read_bytes() if benchmarks.exists() else None
    out = tmp_path / "results.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=150, check=False, cwd=ROOT,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_bytes())
    by_path = {r["path"]: r for r in report["results"]}
    assert set(by_path) == {"bare", "coldtrace"}
    for r in by_path.values():
        assert r["rate"] == 200
        assert len(r["latencies"]) == r["injected"] == 8  # every excursion seen (hold / receipt)
        assert all(0 < x < 60 for x in r["latencies"])
        assert r["offered_rate"] > 0
        assert r["delivered_rate"] > 0
        assert r["caught_up_s"] is not None  # everything published arrived
    bare, coldtrace = sorted(by_path["bare"]["latencies"]), sorted(by_path["coldtrace"]["latencies"])
    # The agent batches for up to 250 ms and the hold is polled: coldtrace cannot beat bare transport.
    assert coldtrace[len(coldtrace) // 2] > bare[len(bare) // 2]
    assert set(by_path["coldtrace"]["cpu"]) == {"agent", "worker", "API"}
    assert set(by_path["bare"]["cpu"]) == {"relay"}
    section = report["section"]
    assert "| 200 | bare transport (relay) |" in section
    assert "| 200 | coldtrace (agent, worker, API) |" in section
    assert "Latency ratio, coldtrace / bare transport (same run): at 200/s p50 " in section
    assert "with `python scripts/bench_e2e.py --rate 200 --excursions 8" in section
    # --quick writes nothing.
    assert (benchmarks.read_bytes() if benchmarks.exists() else None) == before
