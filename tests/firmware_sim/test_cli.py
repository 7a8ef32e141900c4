"""``coldtrace sim``: list, run against the real broker, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from certs.pki import Pki
from coldtrace.cli import app
from coldtrace.exitcodes import ExitCode
from firmware_sim.truth import read_truth
from tests.harness.mosquitto import Mosquitto

runner = CliRunner()


def test_list_shows_every_scenario_with_its_description() -> None:
    result = runner.invoke(app, ["sim", "list"], terminal_width=250)
    assert result.exit_code == 0
    for name in ("normal-day", "reefer-failure", "door-left-open", "glitch-storm", "network-partition",
                 "gateway-reboot", "shipment-transfer", "mixed-fleet"):  # fmt: skip
        assert name in result.output
    assert "loses its compressor" in result.output


@pytest.mark.services
def test_run_publishes_writes_truth_and_manifest(mosquitto_tls: Mosquitto, pki: Pki, tmp_path: Path) -> None:
    truth, manifest = tmp_path / "truth.jsonl", tmp_path / "manifest.json"
    result = runner.invoke(
        app,
        [
            "sim",
            "run",
            "--scenario",
            "door-left-open",
            "--devices",
            "6",
            "--speed",
            "0",
            "--seed",
            "4",
            "--broker",
            f"mqtts://127.0.0.1:{mosquitto_tls.port}",
            "--pki",
            str(pki.directory),
            "--truth",
            str(truth),
            "--manifest",
            str(manifest),
            "--start",
            "2026-11-02T08:00:00",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "acknowledged" in result.output
    records = read_truth(truth)
    samples = [r for r in records if r["type"] == "sample"]
    assert len(samples) == 6 * 1440  # 4 h at one sample per 10 s
    bindings = orjson.loads(manifest.read_bytes())
    assert {b["device_id"] for b in bindings} == {s["device_id"] for s in samples}


def test_bad_scenario_file_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "d"\nduration_s = 60\n[[fleet]]\nshare = 1.0\nkind = "igloo"\n')
    result = runner.invoke(app, ["sim", "run", "--scenario", str(bad), "--broker", "mqtts://127.0.0.1:1"])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "bad.toml: fleet[0].kind:" in result.output
    assert "Traceback" not in result.output


def test_bad_broker_url_is_explained() -> None:
    result = runner.invoke(app, ["sim", "run", "--scenario", "normal-day", "--broker", "http://x"])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "mqtts://127.0.0.1:8883" in result.output
