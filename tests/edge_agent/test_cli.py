"""``coldtrace agent run`` and ``coldtrace gateway status``: clear errors before anything starts."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from typer.testing import CliRunner

from coldtrace.cli import app
from coldtrace.exitcodes import ExitCode
from edge_agent.outbox import Outbox

runner = CliRunner()


def _config(tmp_path: Path, key: Path, state: Path, extra: str = "") -> Path:
    """An agent.toml whose brokers point at a closed port and whose TLS files are all ``key``."""
    broker = f'url = "mqtts://127.0.0.1:1"\nca_file = "{key}"\ncert_file = "{key}"\nkey_file = "{key}"\n'
    config = tmp_path / "agent.toml"
    config.write_text(
        f'gateway_id = "gw-1"\nsite_id = "s"\nstate_dir = "{state}"\nsigning_key = "{key}"\n{extra}'
        f"[local]\n{broker}[cloud]\n{broker}"
    )
    return config


def test_missing_config_file_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["agent", "run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == ExitCode.IO
    assert "not found" in result.output


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('gateway_id = "gw/1"\nsite_id = "s"\nstate_dir = "/tmp/x"\nsigning_key = "/k"\n')
    result = runner.invoke(app, ["agent", "run", "--config", str(config)], terminal_width=200)
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "gateway_id: String should match pattern" in result.output
    assert "local: Field required" in result.output


def test_config_that_is_not_toml_is_explained(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('gateway_id = "gw-1" site_id = "s"\n')
    result = runner.invoke(app, ["agent", "run", "--config", str(config)], terminal_width=200)
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "is not valid TOML" in result.output
    assert "Traceback" not in result.output


def test_world_readable_signing_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_text("not even a key")
    key.chmod(0o644)
    config = _config(tmp_path, key, tmp_path / "state")
    result = runner.invoke(app, ["agent", "run", "--config", str(config)], terminal_width=200)
    assert result.exit_code == ExitCode.USAGE
    assert f"chmod 600 {key}" in result.output


def test_status_without_a_running_agent_says_what_to_do(tmp_path: Path) -> None:
    key = tmp_path / "k"
    config = _config(tmp_path, key, tmp_path, extra="metrics_port = 1\n")
    result = runner.invoke(app, ["gateway", "status", "--config", str(config)], terminal_width=200)
    assert result.exit_code == ExitCode.FAILURE
    assert "is `coldtrace agent run` running?" in result.output


def test_second_agent_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    key.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir()
    config = _config(tmp_path, key, state, extra="metrics_port = 0\n")
    with Outbox(state / "outbox.db", gateway_id="gw-1", budget_bytes=10 * 1024 * 1024):
        result = runner.invoke(app, ["agent", "run", "--config", str(config)], terminal_width=200)
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.output
    assert "error:" in result.output
