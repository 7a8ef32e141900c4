"""The ``coldtrace`` command: help everywhere, version, exit codes, contract inspection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from coldtrace import __version__, cli
from coldtrace.cli import app
from coldtrace.contract import GENESIS_HASH, Batch, ClockQuality, Reading, SourceFormat, sign_batch
from coldtrace.exitcodes import ExitCode

runner = CliRunner()
KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))


def _frame() -> bytes:
    reading = Reading(
        bound=True, clock=ClockQuality.OK, device_id="reefer-7", lot_ids=("LOT-1",), seq=3, site_id="wh-1",
        source_format=SourceFormat.VENDOR_A_JSON, t_device_ms=1_795_000_000_000,
        t_gateway_ms=1_795_000_000_020, temperature_c=5.5,
    )  # fmt: skip
    batch = Batch(
        batch_seq=1, created_ms=1_795_000_000_100, gateway_id="gw-1", prev_hash=GENESIS_HASH,
        readings=(reading,), schema_version=1,
    )  # fmt: skip
    return sign_batch(batch, KEY)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"coldtrace {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["certs"],
        ["contract"],
        ["gateway"],
        ["agent"],
        ["cloud"],
        ["sim"],
        ["demo"],
        ["certs", "issue"],
        ["contract", "inspect"],
        ["agent", "run"],
        ["cloud", "worker"],
        ["cloud", "serve"],
        ["cloud", "keys", "create"],
        ["cloud", "gateways", "register"],
    ],
)
def test_help_everywhere(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_agent_command_loads_none_of_the_clouds_libraries() -> None:
    # Its own process: this one has imported everything already.
    program = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from coldtrace.cli import app\n"
        "assert CliRunner().invoke(app, ['agent', 'run', '--help']).exit_code == 0\n"
        "cloud = ('sqlalchemy', 'aiohttp', 'influxdb_client', 'fastapi', 'numba')\n"
        "print(sorted(m for m in cloud if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("group", ["agent", "cloud", "gateway"])
def test_a_group_with_one_command_or_many_takes_its_subcommand(group: str, tmp_path: Path) -> None:
    command = {"agent": "run", "cloud": "worker", "gateway": "status"}[group]
    result = runner.invoke(app, [group, command, "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code not in {0, ExitCode.USAGE}, result.output  # reached the command itself
    assert "missing.toml" in result.output


def test_a_group_whose_extra_is_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli._GROUPS, "cloud", cli._Group("no_such_module.cli", "cloud", "Cloud ingest."))
    result = runner.invoke(app, ["cloud", "worker"])
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "pip install 'coldtrace[cloud]'" in result.output
    assert "no_such_module" in result.output
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    assert "not installed" in listing.output


def test_unknown_command_is_a_usage_error() -> None:
    assert runner.invoke(app, ["teleport"]).exit_code == ExitCode.USAGE


def test_schema_is_json_schema_of_the_batch() -> None:
    result = runner.invoke(app, ["contract", "schema"])
    assert result.exit_code == 0
    document = orjson.loads(result.output)
    assert document["title"] == "Batch"
    assert set(document["required"]) >= {"batch_seq", "gateway_id", "prev_hash", "readings", "schema_version"}


def test_inspect_verifies_with_the_key(tmp_path: Path) -> None:
    frame_file = tmp_path / "batch.bin"
    frame_file.write_bytes(_frame())
    key_file = tmp_path / "gw.pub.pem"
    key_file.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    result = runner.invoke(app, ["contract", "inspect", str(frame_file), "--public-key", str(key_file)])
    assert result.exit_code == 0, result.output
    assert "signature verified" in result.output
    assert "readings 1 from 1 devices" in result.output
    unverified = runner.invoke(app, ["contract", "inspect", str(frame_file)])
    assert unverified.exit_code == 0
    assert "NOT verified" in unverified.output


def test_inspect_tampered_frame_exits_4_with_reason(tmp_path: Path) -> None:
    frame = bytearray(_frame())
    frame[-5] ^= 0x01
    frame_file = tmp_path / "batch.bin"
    frame_file.write_bytes(bytes(frame))
    key_file = tmp_path / "gw.pub.pem"
    key_file.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    result = runner.invoke(app, ["contract", "inspect", str(frame_file), "--public-key", str(key_file)])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "bad_signature" in result.output


def test_inspect_missing_file_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(app, ["contract", "inspect", str(tmp_path / "nope.bin")])
    assert result.exit_code == ExitCode.IO
    assert "cannot read" in result.output
