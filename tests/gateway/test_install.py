"""``coldtrace gateway install``: the unit passes systemd-analyze, modes are right, config is kept."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coldtrace.cli import app
from edge_agent.settings import AgentSettings
from gateway.install import UNIT_NAME, InstallPlan, install, render_unit
from tests.harness.services import require_binary

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def plan(tmp_path: Path) -> InstallPlan:
    # root owns everything in a scratch root: the service account is the root group here.
    return InstallPlan(root=tmp_path / "root", user="root", group="root")


def test_install_writes_unit_config_and_dirs_with_modes(plan: InstallPlan) -> None:
    written = install(
        plan, gateway_id="gw-hamburg-1", site_id="wh-hamburg", local_url="mqtts://127.0.0.1:8883",
        cloud_url="mqtts://ingest.invalid:8883",
    )  # fmt: skip
    assert plan.unit_path in written
    assert _mode(plan.state_dir) == 0o700
    assert _mode(plan.config_dir) == 0o750
    assert _mode(plan.tls_dir) == 0o700  # keys: the agent's user's alone (see test_layout.py)
    assert _mode(plan.config_dir / "agent.toml") == 0o640
    assert _mode(plan.unit_path) == 0o644
    unit = plan.unit_path.read_text()
    assert "ReadWritePaths=/var/lib/coldtrace" in unit
    assert "agent run --config /etc/coldtrace/agent.toml" in unit
    # The config it writes is one the agent accepts.
    settings = AgentSettings.load(plan.config_dir / "agent.toml")
    assert settings.gateway_id == "gw-hamburg-1"
    assert settings.state_dir == Path("/var/lib/coldtrace")


def test_existing_config_is_kept_unless_forced(plan: InstallPlan) -> None:
    install(plan, gateway_id="gw-1", site_id="s", local_url="mqtts://a:1", cloud_url="mqtts://b:2")
    config = plan.config_dir / "agent.toml"
    config.write_text(config.read_text().replace('site_id = "s"', 'site_id = "edited"'))
    written = install(plan, gateway_id="gw-1", site_id="s", local_url="mqtts://a:1", cloud_url="mqtts://b:2")
    assert config not in written
    assert 'site_id = "edited"' in config.read_text()
    install(
        plan, gateway_id="gw-1", site_id="s", local_url="mqtts://a:1", cloud_url="mqtts://b:2", force=True
    )
    assert 'site_id = "s"' in config.read_text()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd-analyze", package="systemd")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(InstallPlan(root=tmp_path, user="root", group="root")))
    result = subprocess.run([str(analyze), "verify", str(unit)], capture_output=True, text=True, check=False)
    ours = [line for line in result.stderr.splitlines() if UNIT_NAME in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], ours


def test_cli_install_reports_what_it_wrote_and_next_steps(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "gateway",
            "install",
            "--gateway-id",
            "gw-1",
            "--site-id",
            "s",
            "--cloud-url",
            "mqtts://b:8883",
            "--root",
            str(tmp_path / "r"),
            "--user",
            "root",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'r'}/etc/systemd/system/{UNIT_NAME}" in result.output
    assert "systemctl enable --now" in result.output


def test_cli_install_unwritable_root_exits_3(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(
        app,
        [
            "gateway",
            "install",
            "--gateway-id",
            "g",
            "--site-id",
            "s",
            "--cloud-url",
            "mqtts://b:1",
            "--root",
            str(blocker),
            "--user",
            "root",
        ],
    )
    assert result.exit_code == 3
    assert "cannot write" in result.output
