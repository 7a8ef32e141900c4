"""``scripts/bench_e2e.py --quick`` over the real stack: both paths measured, every excursion seen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts.quick import quick_run, require_cloud_servers

pytestmark = pytest.mark.services


def test_quick_run_times_every_excursion_on_both_paths(tmp_path: Path) -> None:
    require_cloud_servers()
    out = tmp_path / "results.json"
    quick_run("bench_e2e.py", "--out", str(out), timeout_s=150)
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
