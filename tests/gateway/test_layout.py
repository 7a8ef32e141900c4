"""``coldtrace gateway install`` + ``coldtrace gateway enroll``: a layout the agent accepts, keys its alone.

Whichever runs first, the private keys end up 0600 in a 0700 directory owned by the agent's user,
at the paths the installed ``agent.toml`` names; the config is 0640 root:<group>. The agent's key
loading accepts the signing key, the TLS key pairs with the certificate, and - run as root, by
switching the effective user - the agent's user can read everything it needs while another
unprivileged user cannot read the keys.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import ssl
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner, Result

from certs.pki import Pki
from coldtrace.cli import app
from edge_agent.agent import AgentError, load_signing_key
from edge_agent.settings import AgentSettings

GATEWAY = "gw-layout"
_runner = CliRunner()


@dataclass(frozen=True, slots=True)
class Account:
    """A user and group by name and number."""

    user: str
    group: str
    uid: int
    gid: int


def _account_of(uid: int) -> Account:
    entry = pwd.getpwuid(uid)
    return Account(entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def agent_account() -> Account:
    """As root an unprivileged account (``nobody``) so ownership is really handed over; else ourselves."""
    if os.geteuid() != 0:
        return _account_of(os.geteuid())
    try:
        return _account_of(pwd.getpwnam("nobody").pw_uid)
    except KeyError:
        pytest.skip("no 'nobody' account to install the agent for")


@pytest.fixture
def host_root() -> Iterator[Path]:
    """A scratch ``/`` that other users may traverse (pytest's own temp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="coldtrace-host-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _cli(argv: list[str]) -> Result:
    # The root command configures logging for the runner's stream; give the test its handlers back.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return _runner.invoke(app, argv, terminal_width=200)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _install(root: Path, account: Account) -> None:
    result = _cli(
        [
            "gateway", "install", "--gateway-id", GATEWAY, "--site-id", "wh-1", "--cloud-url",
            "mqtts://ingest.invalid:8883", "--root", str(root), "--user", account.user,
            "--group", account.group,
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def _enroll(root: Path, pki: Pki) -> Result:
    tls = root / "etc" / "coldtrace" / "tls"
    argv = ["gateway", "enroll", "--gateway-id", GATEWAY, "--dir", str(tls), "--offline", "--pki-dir"]
    result = _cli([*argv, str(pki.directory)])
    assert result.exit_code == 0, result.output
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


@contextlib.contextmanager
def _acting_as(account: Account) -> Iterator[None]:
    """Switch the effective user and group (root only); switch back on the way out."""
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(account.gid)
    os.seteuid(account.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def _another_account(agent: Account) -> Account | None:
    for entry in pwd.getpwall():
        if entry.pw_uid not in (0, agent.uid) and entry.pw_gid not in (0, agent.gid):
            return _account_of(entry.pw_uid)
    return None


@pytest.mark.parametrize("enrol_first", [False, True], ids=["install-then-enroll", "enroll-then-install"])
def test_install_and_enroll_leave_keys_the_agent_accepts_and_only_its_user_reads(
    host_root: Path, tmp_path: Path, agent_account: Account, enrol_first: bool
) -> None:
    pki = Pki.init(tmp_path / "pki")
    if enrol_first:
        enrolled = _enroll(host_root, pki)
        key = host_root / "etc" / "coldtrace" / "tls" / "signing.key"
        key.chmod(0o640)  # an operator's slip before installing: install makes it private again
        _install(host_root, agent_account)
    else:
        _install(host_root, agent_account)
        enrolled = _enroll(host_root, pki)
        assert f"belong to {agent_account.user}" in enrolled.output

    config = host_root / "etc" / "coldtrace" / "agent.toml"
    settings = AgentSettings.load(config)

    def here(path: Path) -> Path:  # where an on-host path of the config is in the scratch root
        return host_root / path.relative_to("/")

    agent_ids = (agent_account.uid, agent_account.gid)
    tls_dir = here(settings.signing_key).parent
    assert (_mode(tls_dir), _owner(tls_dir)) == (0o700, agent_ids)
    for private in (here(settings.signing_key), here(settings.cloud.key_file)):
        assert private.is_file(), f"agent.toml names {private}, enrollment did not write it"
        assert (_mode(private), _owner(private)) == (0o600, agent_ids), private
    for public in (here(settings.cloud.cert_file), here(settings.cloud.ca_file)):
        assert public.is_file(), f"agent.toml names {public}, enrollment did not write it"
        assert _owner(public) == agent_ids
    assert _mode(config) == 0o640
    assert _mode(config.parent) == 0o750
    if os.geteuid() == 0:
        assert _owner(config) == (0, agent_account.gid)  # root writes it, the agent's group reads it

    # The agent accepts the signing key, and it is the one enrollment registered.
    signer = load_signing_key(here(settings.signing_key))
    registered = (tls_dir / "signing.pub").read_bytes()
    assert signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) == registered
    # The TLS key pairs with the installed certificate (load_cert_chain refuses a mismatch).
    ssl.create_default_context().load_cert_chain(
        here(settings.cloud.cert_file), here(settings.cloud.key_file)
    )

    if os.geteuid() != 0:
        return  # ownership cannot change hands without root; the modes above are what counts then
    with _acting_as(agent_account):  # the agent's user reads its config and keys ...
        assert AgentSettings.load(config).gateway_id == GATEWAY
        load_signing_key(here(settings.signing_key))
        here(settings.cloud.key_file).read_bytes()
    stranger = _another_account(agent_account)
    if stranger is not None:
        with _acting_as(stranger), pytest.raises(AgentError, match="cannot read"):
            load_signing_key(here(settings.signing_key))  # ... nobody else does


def test_the_agent_refuses_a_signing_key_its_group_can_read(host_root: Path, tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    _enroll(host_root, pki)
    key = host_root / "etc" / "coldtrace" / "tls" / "signing.key"
    load_signing_key(key)
    key.chmod(0o640)
    with pytest.raises(AgentError, match="chmod 600"):
        load_signing_key(key)
