"""``scripts/bench_agent.py --quick`` and ``scripts/bench_drain.py --quick`` over real Mosquittos: each
measures the agent beside its baseline, writes nothing, and its section would pass ``bench_all``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scripts.quick import assert_passes_bench_all_check, quick_run, require_mosquitto

pytestmark = pytest.mark.services


def _row(text: str, name: str) -> list[str]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, text
    return [cell.strip() for cell in rows[0]]


def test_the_agent_is_measured_beside_a_bare_relay_and_live_at_half_its_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mosquitto()
    out = quick_run("bench_agent.py", timeout_s=300).stdout
    agent = _row(out, "agent")
    assert int(agent[1]) == 1000  # 20 devices x 50 readings, each once
    assert float(agent[3]) > 0
    for client in ("paho", "native"):
        relay = _row(out, f"relay ({client})")
        assert int(relay[1]) >= 1000  # the relay forwards every message, duplicates included
        assert float(relay[3]) > 0
    assert re.search(r"the relay is the baseline\): \d+\.\d\d against the paho relay, \d+\.\d\d against", out)
    latency = [line for line in out.splitlines() if re.fullmatch(r"\| \d+ \| \d+ \| \d+ \| \d+ \|", line)]
    assert len(latency) == 1, out
    readings, p50, p99, worst = (int(x) for x in latency[0].strip("| ").split(" | "))
    assert readings > 0
    assert 0 < p50 <= p99 <= worst
    assert_passes_bench_all_check("agent", out, tmp_path, monkeypatch)


def test_a_filled_outbox_is_drained_exactly_once_beside_a_bare_publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mosquitto()
    out = quick_run("bench_drain.py", timeout_s=300).stdout
    agent, bare = _row(out, "agent"), _row(out, "bare publisher")
    assert int(agent[1]) == int(bare[1]) == 100  # 50,000 readings in frames of 500, as many bare frames
    assert float(agent[3]) > 0
    assert float(bare[3]) > 0
    rss_start, rss_peak, rss_end = (float(x) for x in agent[4:7])
    assert 0 < rss_start <= rss_peak
    assert rss_end <= rss_peak
    assert "the publisher is the baseline" in out
    assert_passes_bench_all_check("agent-drain", out, tmp_path, monkeypatch)
