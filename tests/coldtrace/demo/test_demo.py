"""``coldtrace demo`` end to end, as a user runs it, checked against the simulator's ground truth.

The demo checks itself (its verdict); these tests check the demo: they recompute what must be held
from ``truth.jsonl`` and the simulator's bindings, and compare every figure of ``summary.json`` with
what the simulator says it sent.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cloud_ingest.settings import RuleSettings
from coldtrace.demo.scenario import demo_scenario
from coldtrace.exitcodes import ExitCode
from firmware_sim.fleet import Binding, Simulation
from firmware_sim.truth import TruthWriter

pytestmark = pytest.mark.timeout(300)
DEVICES, SEED = 32, 7
BUDGET_S = 120.0
ENV = {**os.environ, "COLUMNS": "200"}


def _command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "coldtrace", "demo", "--workdir", str(workdir), "--port", "0", *extra]


def _bindings(devices: int, seed: int) -> dict[str, Binding]:
    simulation = Simulation(demo_scenario(), devices=devices, seed=seed, start_ms=1_795_000_000_000,
                            truth=TruthWriter())  # fmt: skip
    return {b.device_id: b for b in simulation.bindings()}


def _subjects(binding: Binding) -> set[tuple[str, str]]:
    if binding.shipment_id is not None:
        return {("shipment", binding.shipment_id)}
    return {("lot", lot) for lot in binding.lot_ids}


def _truly_out_of_range(
    samples: Iterable[dict[str, Any]], bindings: dict[str, Binding]
) -> set[tuple[str, str]]:
    """Subjects with a device whose true temperature stayed out of range at least its profile's delay."""
    delays = {profile.value: seconds * 1000 for profile, seconds in RuleSettings().delay_s.items()}
    since: dict[str, int] = {}
    out: set[tuple[str, str]] = set()
    for s in sorted(samples, key=lambda s: s["t_sim_ms"]):
        device = s["device_id"]
        if not s["excursion"]:
            since.pop(device, None)
            continue
        start = since.setdefault(device, s["t_sim_ms"])
        if s["t_sim_ms"] - start >= delays[bindings[device].profile]:
            out |= _subjects(bindings[device])
    return out


def _read(workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = orjson.loads((workdir / "summary.json").read_bytes())
    truth = [orjson.loads(line) for line in (workdir / "truth.jsonl").read_bytes().splitlines() if line]
    return summary, truth


def _log_warnings(workdir: Path) -> str:
    """The demo log's warnings and errors: why a verdict failed, when the summary alone does not say."""
    log = workdir / "demo.log"
    if not log.exists():
        return ""
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln]
    return "\ndemo.log warnings:\n" + "\n".join(lines[-60:])


def test_the_demo_holds_what_it_must_loses_nothing_and_finishes_in_time(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    began = time.monotonic()
    result = subprocess.run(
        [*_command(workdir, "--devices", str(DEVICES), "--seed", str(SEED)), "--exit"],
        capture_output=True, text=True, timeout=240, check=False, env=ENV,
    )  # fmt: skip
    wall_s = time.monotonic() - began
    assert result.returncode == ExitCode.OK, result.stdout[-3000:] + result.stderr + _log_warnings(workdir)
    assert "Expected outcome met" in result.stdout
    summary, truth = _read(workdir)
    assert summary["ok"] is True
    assert [v["ok"] for v in summary["verdicts"]] == [True] * 6
    assert summary["elapsed_s"] < BUDGET_S
    assert wall_s < BUDGET_S  # the whole process, start-up and shut-down included
    assert f"{summary['elapsed_s']:.1f} s wall-clock" in result.stdout

    # Readings: each sample the devices sent in a well-formed message stored once, and one telemetry point.
    samples = [r for r in truth if r["type"] == "sample"]
    publications = [r for r in truth if r["type"] == "publish"]
    sent = sum(1 for s in samples if s["fate"] == "sent")
    assert sent > 20_000
    assert summary["samples_sent"] == summary["readings_stored"] == summary["telemetry_points"] == sent
    assert summary["messages_published"] == summary["messages_acknowledged"] == len(publications)
    assert sum(g["messages"] for g in summary["gateways"]) == len(publications)
    # Rejects and duplicates, by the simulator's transport faults.
    malformed = sum(1 for p in publications if p["kind"] == "malformed")
    resent = sum(len(p["seqs"]) for p in publications if p["kind"] in {"duplicate", "replay"})
    assert malformed > 0
    assert resent > 0
    assert sum(sum(g["rejects"].values()) for g in summary["gateways"]) == malformed
    assert sum(g["duplicates"] for g in summary["gateways"]) == resent
    assert summary["cloud_rejects"] == {}

    # Holds: the scenario's expectations and the ground truth, recomputed here.
    bindings = _bindings(DEVICES, SEED)
    events = {r["kind"]: r["devices"] for r in truth if r["type"] == "event"}
    held = {(h["subject_type"], h["subject_id"]) for h in summary["holds"]}
    failed = set().union(*(_subjects(bindings[d]) for d in events["compressor_failure"]))
    doors = set().union(*(_subjects(bindings[d]) for d in events["door_open"]))
    storm = set().union(*(_subjects(bindings[d]) for d in events["glitch_storm"]))
    assert {kind for kind, _ in failed} == {"shipment"}
    assert {kind for kind, _ in doors} == {"lot"}
    assert failed <= held
    assert doors <= held
    assert storm
    assert not storm & held
    assert held == _truly_out_of_range(samples, bindings)
    for hold in summary["holds"]:  # every hold names the lots it stops
        kind, name = hold["subject_type"], hold["subject_id"]
        expected_lots = {
            lot for b in bindings.values() if name in {b.shipment_id, *b.lot_ids} for lot in b.lot_ids
        }
        assert set(hold["lots"]) == (expected_lots if kind == "shipment" else {name})
    assert {
        (a["subject_type"], a["subject_id"]) for a in summary["alerts"] if a["rule_id"] == "temp_high"
    } >= failed

    # Chains: every batch of both gateways verified and chained; the partition left no gap.
    chains = {c["gateway_id"]: c for c in summary["chains"]}
    assert set(chains) == {"gw-0", "gw-1"}
    for chain in chains.values():
        assert chain["batches"] == chain["head_seq"] > 0
        assert chain["open_gaps"] == 0
        assert chain["head_hash"] == chain["agent_head_hash"]
    assert sum(c["readings"] for c in chains.values()) == sent
    assert {g["gateway_id"]: g["uplink_cuts"] for g in summary["gateways"]} == {"gw-0": 1, "gw-1": 0}
    assert sum(g["local_alerts"] for g in summary["gateways"]) >= 1

    # Secrets: key files private, never printed.
    keys = [*workdir.rglob("key.pem"), *workdir.rglob("*.key")]
    assert len(keys) >= 9  # 2 CAs, 7 identities, 2 signing keys
    assert all(k.stat().st_mode & 0o077 == 0 for k in keys)
    for text in (result.stdout, result.stderr, (workdir / "demo.log").read_text()):
        assert "PRIVATE KEY" not in text


def _lines_until(process: subprocess.Popen[str], marker: str, *, within_s: float) -> str:
    """Everything the process prints up to and including the line with ``marker`` (or fail)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            raise AssertionError("the demo ended before " + repr(marker) + ":\n" + "".join(seen[-40:]))
        seen.append(line)
        if marker in line:
            return "".join(seen)


def test_without_exit_the_api_stays_up_with_an_admin_key_until_interrupted(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    process = subprocess.Popen(
        _command(workdir, "--devices", "16", "--speed", "400"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )  # fmt: skip
    try:
        output = _lines_until(process, "Press Ctrl-C", within_s=180)
        url = re.search(r"The cloud API is up: (https://\S+)", output)
        key = re.search(r"Admin API key \(shown once\): (\S+)", output)
        assert url is not None, output
        assert key is not None, output
        trust = ssl.create_default_context(cafile=workdir / "pki" / "ca-bundle.pem")
        with httpx.Client(base_url=url.group(1), verify=trust, timeout=10.0) as api:
            listed = api.get("/v1/holds", headers={"Authorization": f"Bearer {key.group(1)}"})
            refused = api.get("/v1/holds")
        assert listed.status_code == 200, listed.text
        assert refused.status_code == 401
        summary, _ = _read(workdir)
        assert summary["ok"] is True
        served = {(h["subject_type"], h["subject_id"]) for h in listed.json()["items"]}
        assert served == {(h["subject_type"], h["subject_id"]) for h in summary["holds"]}
        assert served
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == ExitCode.OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
