"""``scripts/bench_cloud.py --quick`` over the real stack: hold latency beside its bare-transport baseline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scripts.quick import assert_passes_bench_all_check, quick_run, require_cloud_servers

pytestmark = pytest.mark.services


def test_quick_run_times_every_marker_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_cloud_servers()
    done = quick_run("bench_cloud.py", timeout_s=300)
    section = done.stdout[done.stdout.index("## Cloud ingest") :]
    paths = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[2] in {"worker → hold in API", "bare subscriber → received"}:
            paths[cells[2]] = cells
    assert set(paths) == {"worker → hold in API", "bare subscriber → received"}
    for cells in paths.values():
        assert cells[1] == "125"  # same batch size on both paths
        assert cells[6] == cells[7] == "5"  # every marker seen
        assert 0 < float(cells[8]) <= float(cells[9])  # p50 <= p99, in ms
    ratio = re.search(
        r"Hold latency / transport latency \(same run[^)]*\): at 2000/s p50 ([\d.]+), p99", section
    )
    assert ratio is not None, section
    # Throughput: two rounds (the quick run's), each with both consumers, and a ratio per round.
    drains = [
        (cells[0], cells[1])
        for line in section.splitlines()
        if len(cells := [c.strip() for c in line.strip("|").split("|")]) == 11 and cells[0] in {"1", "2"}
    ]
    consumers = [
        "worker, committed",
        "worker, spooled to VictoriaMetrics",
        "bare writer",
        "bare writer, measured values only",
    ]
    assert drains == [(n, c) for n in ("1", "2") for c in consumers]
    for baseline in (r"the bare writer is the baseline\)", "bare writer of measured values only"):
        assert re.search(baseline + r": [\d.]+, [\d.]+ in rounds 1-2, median [\d.]+ ", section), section
    assert_passes_bench_all_check("cloud", section, tmp_path, monkeypatch)
