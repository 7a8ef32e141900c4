"""``coldtrace model keygen | verify | train`` through typer's runner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coldtrace.exitcodes import ExitCode
from edge_agent.scoring.cli import app
from edge_agent.scoring.keys import load_private_key, load_public_key
from tests.edge_agent.scoring.conftest import MODELS_DIR, SHIPPED_KEY

runner = CliRunner()


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path: Path) -> None:
    key = tmp_path / "signing.pem"
    result = runner.invoke(app, ["keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = tmp_path / "signing.pub.pem"
    assert load_public_key(public) == load_private_key(key).public_key()
    again = runner.invoke(app, ["keygen", "--out", str(key)])
    assert again.exit_code == ExitCode.USAGE
    assert runner.invoke(app, ["keygen", "--out", str(key), "--force"]).exit_code == 0


def test_verify_the_shipped_model() -> None:
    result = runner.invoke(app, ["verify", str(MODELS_DIR), "--public-key", str(SHIPPED_KEY)])
    assert result.exit_code == 0, result.output
    assert "glitch-iforest@" in result.output


def test_verify_refuses_with_a_wrong_key(tmp_path: Path) -> None:
    runner.invoke(app, ["keygen", "--out", str(tmp_path / "other.pem")])
    result = runner.invoke(app, ["verify", str(MODELS_DIR), "--public-key", str(tmp_path / "other.pub.pem")])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "bad_signature" in result.output


def test_verify_with_an_unreadable_key(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(MODELS_DIR), "--public-key", str(tmp_path / "missing.pem")])
    assert result.exit_code == ExitCode.IO


def test_train_writes_a_package_that_verifies(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    key = tmp_path / "k.pem"
    runner.invoke(app, ["keygen", "--out", str(key)])
    out = tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "train", "--out", str(out), "--key", str(key), "--devices", "3", "--hours", "0.3",
            "--eval-devices", "3", "--trees", "10", "--no-check-export",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out evaluation" in result.output
    assert {p.name for p in out.iterdir()} == {"default.onnx", "default.json", "default.sig"}
    verified = runner.invoke(app, ["verify", str(out), "--public-key", str(tmp_path / "k.pub.pem")])
    assert verified.exit_code == 0, verified.output
