"""CLI tests for ``coldtrace certs``: exit codes, output, no tracebacks, no key material."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import typer
from cryptography import x509
from typer.testing import CliRunner, Result

from certs.cli import Reason, app
from certs.pki import REVOCATION_REASONS, Pki, Role

COMMANDS = ["init", "issue", "revoke", "crl", "show"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    return tmp_path / "pki"


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own COLDTRACE_PKI_DIR must not leak into the tests.
    monkeypatch.delenv("COLDTRACE_PKI_DIR", raising=False)


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def run_in(runner: CliRunner, pki_dir: Path, *args: str) -> Result:
    return runner.invoke(app, [*args, "--dir", str(pki_dir)])


def assert_clean_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "error:" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.stderr


def key_material(paths: Sequence[Path]) -> list[str]:
    """Base64 body lines of every private key file, to prove none of them is ever printed."""
    lines = []
    for path in paths:
        lines += [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    return lines


@pytest.mark.parametrize("args", [["--help"], *[[command, "--help"] for command in COMMANDS]])
def test_help_works_for_every_command(runner: CliRunner, args: list[str]) -> None:
    result = run(runner, *args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if args[0] != "--help":
        assert "--dir" in result.output
        assert "COLDTRACE_PKI_DIR" in result.output


def test_init_refuses_existing_pki_without_force(runner: CliRunner, pki_dir: Path) -> None:
    first = run_in(runner, pki_dir, "init", "--org", "Acme")
    assert first.exit_code == 0, first.output
    assert str(pki_dir / "ca-bundle.pem") in first.stdout
    root = (pki_dir / "root" / "ca.pem").read_bytes()

    assert_clean_error(run_in(runner, pki_dir, "init"), 2, "--force")
    assert (pki_dir / "root" / "ca.pem").read_bytes() == root

    forced = run_in(runner, pki_dir, "init", "--force")
    assert forced.exit_code == 0, forced.output
    assert (pki_dir / "root" / "ca.pem").read_bytes() != root


def test_dir_defaults_to_certs_dev_in_cwd(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(runner, "init")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "certs" / "dev" / "index.json").is_file()


def test_dir_defaults_to_env_var(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLDTRACE_PKI_DIR", str(tmp_path / "from-env"))
    assert run(runner, "init").exit_code == 0
    assert run(runner, "issue", "device", "d1").exit_code == 0
    assert (tmp_path / "from-env" / "issued" / "device" / "d1" / "cert.pem").is_file()
    assert not (tmp_path / "certs").exists()


@pytest.mark.parametrize(
    "args",
    [["issue", "device", "d1"], ["revoke", "device", "d1"], ["crl"], ["show"], ["show", "device", "d1"]],
)
def test_commands_need_an_initialised_pki(runner: CliRunner, pki_dir: Path, args: list[str]) -> None:
    assert_clean_error(run_in(runner, pki_dir, *args), 2, "coldtrace certs init --dir")


def test_unusable_directory_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert_clean_error(run_in(runner, tmp_path / "file" / "pki", "init"), 3, "cannot")


def test_issue_prints_paths_and_never_key_material(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    result = run_in(runner, pki_dir, "issue", "server", "broker", "--dns", "localhost", "--ip", "127.0.0.1")
    assert result.exit_code == 0, result.output
    identity = Pki.open(pki_dir).identity(Role.SERVER, "broker")
    assert str(identity.key_path) in result.stdout
    assert str(identity.chain_path) in result.stdout
    assert f"{identity.serial:X}" in result.stdout
    assert "PRIVATE KEY" not in result.output
    assert not [line for line in key_material([identity.key_path]) if line in result.output]
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_issue_errors_exit_2(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert_clean_error(run_in(runner, pki_dir, "issue", "device", "a/b"), 2, "1-64 ASCII")
    assert run_in(runner, pki_dir, "issue", "gateway", "gw-1").exit_code == 0
    assert_clean_error(run_in(runner, pki_dir, "issue", "device", "gw-1"), 2, "only one role")
    assert_clean_error(run_in(runner, pki_dir, "issue", "gateway", "gw-1"), 2, "--force")
    assert_clean_error(run_in(runner, pki_dir, "issue", "server", "s", "--ip", "nope"), 2, "invalid IP")
    forced = run_in(runner, pki_dir, "issue", "GATEWAY", "gw-1", "--force")  # roles are case-insensitive
    assert forced.exit_code == 0, forced.output
    bad_role = run_in(runner, pki_dir, "issue", "admin", "x")
    assert bad_role.exit_code == 2
    assert "Traceback" not in bad_role.output


def test_show_lists_everything_without_key_material(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert (
        run_in(
            runner, pki_dir, "issue", "server", "broker", "--dns", "localhost", "--ip", "127.0.0.1"
        ).exit_code
        == 0
    )
    assert run_in(runner, pki_dir, "issue", "device", "d1").exit_code == 0
    assert run_in(runner, pki_dir, "revoke", "device", "d1", "--reason", "key_compromise").exit_code == 0

    result = run_in(runner, pki_dir, "show")
    assert result.exit_code == 0, result.output
    pki = Pki.open(pki_dir)
    for info in [*pki.ca_certificates(), *pki.list()]:
        row = next(line for line in result.stdout.splitlines() if info.serial_hex in line)
        assert info.subject_cn in row
        assert f"{info.not_after:%Y-%m-%d %H:%M}" in row
        assert f" {info.days_left()} " in row
    broker_row = next(line for line in result.stdout.splitlines() if " broker " in line)
    for fragment in ("server", "urn:coldtrace:server:broker", "localhost", "127.0.0.1", "│ no"):
        assert fragment in broker_row
    d1_row = next(line for line in result.stdout.splitlines() if "urn:coldtrace:device:d1" in line)
    assert "key_compromise" in d1_row
    assert "root CA" in result.stdout
    assert "issuing CA" in result.stdout
    assert "WARNING" not in result.output  # nothing expires within 30 days

    keys = [p for p in pki_dir.rglob("*") if p.name in {"key.pem", "ca.key"}]
    assert len(keys) == 4
    assert "PRIVATE KEY" not in result.output
    assert not [line for line in key_material(keys) if line in result.output]


def test_show_one_identity(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert run_in(runner, pki_dir, "issue", "device", "d1").exit_code == 0
    assert run_in(runner, pki_dir, "issue", "device", "d2").exit_code == 0
    result = run_in(runner, pki_dir, "show", "device", "d1")
    assert result.exit_code == 0, result.output
    assert "urn:coldtrace:device:d1" in result.stdout
    assert "urn:coldtrace:device:d2" not in result.stdout
    assert "coldtrace Root CA" in result.stdout

    assert_clean_error(run_in(runner, pki_dir, "show", "device", "d3"), 2, "coldtrace certs issue device d3")
    only_role = run_in(runner, pki_dir, "show", "device")
    assert only_role.exit_code == 2
    assert "Traceback" not in only_role.output


def test_show_warns_about_expiring_certificates(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert run_in(runner, pki_dir, "issue", "device", "short", "--days", "10").exit_code == 0
    assert run_in(runner, pki_dir, "issue", "device", "long").exit_code == 0

    result = run_in(runner, pki_dir, "show")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert re.search(r"device short expires in (9|10) day", warnings[0])

    quiet = run_in(runner, pki_dir, "show", "--warn-days", "5")
    assert quiet.exit_code == 0
    assert "WARNING" not in quiet.output

    loud = run_in(runner, pki_dir, "show", "--warn-days", "4000")
    assert loud.exit_code == 0
    assert {"root CA", "issuing CA", "device short", "device long"} <= {
        m.group(1) for m in re.finditer(r"WARNING: (.+?) expires", loud.stderr)
    }


def test_show_warns_about_a_stale_crl(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert run_in(runner, pki_dir, "crl", "--days", "1").exit_code == 0
    result = run_in(runner, pki_dir, "show")
    assert result.exit_code == 0
    assert "coldtrace certs crl" in result.stderr


def test_revoke_and_crl(runner: CliRunner, pki_dir: Path) -> None:
    assert run_in(runner, pki_dir, "init").exit_code == 0
    assert run_in(runner, pki_dir, "issue", "service", "ingest").exit_code == 0
    serial = Pki.open(pki_dir).identity(Role.SERVICE, "ingest").serial

    result = run_in(runner, pki_dir, "revoke", "service", "ingest", "--reason", "superseded")
    assert result.exit_code == 0, result.output
    assert "CRL #2" in result.stdout
    crl = x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded
    )

    assert_clean_error(run_in(runner, pki_dir, "revoke", "service", "ingest"), 2, "already revoked")
    assert_clean_error(run_in(runner, pki_dir, "revoke", "device", "ghost"), 2)
    bad_reason = run_in(runner, pki_dir, "revoke", "service", "ingest", "--reason", "bored")
    assert bad_reason.exit_code == 2

    regenerated = run_in(runner, pki_dir, "crl", "--days", "3")
    assert regenerated.exit_code == 0, regenerated.output
    assert str(pki_dir / "crl.pem") in regenerated.stdout
    assert re.search(r"number:\s+3\b", regenerated.stdout)
    crl = x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    assert f"{crl.next_update_utc:%Y-%m-%d %H:%M}" in regenerated.stdout
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_cli_reasons_match_the_library() -> None:
    assert [r.value for r in Reason] == list(REVOCATION_REASONS)


def test_works_mounted_under_a_root_app(runner: CliRunner, pki_dir: Path) -> None:
    # How the lead mounts it: root_app.add_typer(certs.cli.app, name="certs").
    root_app = typer.Typer()

    @root_app.command()
    def version() -> None:
        """Placeholder sibling command, so "certs" is a real sub-group."""

    root_app.add_typer(app, name="certs")
    help_result = runner.invoke(root_app, ["certs", "--help"])
    assert help_result.exit_code == 0
    assert all(command in help_result.output for command in COMMANDS)
    assert runner.invoke(root_app, ["certs", "init", "--dir", str(pki_dir)]).exit_code == 0
    issued = runner.invoke(root_app, ["certs", "issue", "gateway", "gw-1", "--dir", str(pki_dir)])
    assert issued.exit_code == 0, issued.output
    clash = runner.invoke(root_app, ["certs", "issue", "device", "gw-1", "--dir", str(pki_dir)])
    assert clash.exit_code == 2
    assert "error:" in clash.stderr
