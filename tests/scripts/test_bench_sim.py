"""``scripts/bench.py sim --quick`` over a real Mosquitto: the simulator and its bare-publisher baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts.quick import assert_passes_bench_all_check, quick_run, require_mosquitto

pytestmark = pytest.mark.services


def test_quick_run_measures_the_simulator_beside_a_bare_publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mosquitto()
    section = quick_run("bench.py", "sim", timeout_s=180).stdout
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| multiplexed | 200 |")]
    assert [r[2] for r in rows[:2]] == ["simulator", "bare publisher"]
    assert len(rows) == 3  # the two steps, then their ratios (simulator / bare)
    assert float(rows[2][2]) > 0
    for step in rows[:2]:
        published, acked = int(step[4]), int(step[5])
        assert published == acked > 0  # both sent the same fleet's messages, all acknowledged
    assert rows[0][4] == rows[1][4]
    assert "Largest passing fleet, simulator / bare publisher" in section
    assert "multiplexed: simulator 200 / bare publisher 200 = 1.00" in section
    assert_passes_bench_all_check("sim", section, tmp_path, monkeypatch)
