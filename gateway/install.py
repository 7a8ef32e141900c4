"""Install the edge agent on a gateway host: systemd unit, config file, directories with owners and modes.

Layout under ``root`` (``/`` on a real host; a scratch directory in tests and image builds)::

    etc/coldtrace/                             0750 root:<group>   readable by the agent, writable by root
    etc/coldtrace/agent.toml                   0640 root:<group>   the agent's settings (no secrets inline)
    etc/coldtrace/tls/                         0700 <user>:<group> certificates and keys (keys 0600)
    var/lib/coldtrace/                         0700 <user>:<group> outbox, registry, dead letters
    etc/systemd/system/coldtrace-agent.service 0644 root:root      the service

Private keys belong to the agent's user alone (0600 in a 0700 directory it owns): the agent refuses
a key that its group or others may read. ``coldtrace gateway enroll --dir /etc/coldtrace/tls`` writes
its keys into that directory with the directory's owner, so enrolling before or after installing
gives the same layout; files already in ``tls/`` are handed to the agent's user here, and keys that
others could read are made private.

An existing config is kept unless ``force``: an operator's edits are never overwritten silently.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "coldtrace-agent.service"


class InstallError(Exception):
    """The install cannot proceed; the message says what to change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallPlan:
    """Where the agent goes and as whom it runs."""

    root: Path = Path("/")
    user: str = "coldtrace"
    group: str = "coldtrace"
    command: tuple[str, ...] = (sys.executable, "-m", "coldtrace")
    """How to start coldtrace (the interpreter of this install by default)."""

    @property
    def config_dir(self) -> Path:
        """Settings and TLS material."""
        return self.root / "etc" / "coldtrace"

    @property
    def tls_dir(self) -> Path:
        """Certificates and private keys, the agent's user's alone."""
        return self.config_dir / "tls"

    @property
    def state_dir(self) -> Path:
        """The agent's durable state."""
        return self.root / "var" / "lib" / "coldtrace"

    @property
    def unit_path(self) -> Path:
        """The systemd unit."""
        return self.root / "etc" / "systemd" / "system" / UNIT_NAME

    def on_host(self, path: Path) -> Path:
        """Where ``path`` will be on the running host (the unit and config refer to these)."""
        return Path("/") / path.relative_to(self.root)


def render_unit(plan: InstallPlan) -> str:
    """The systemd unit: restart on failure, SIGTERM to stop cleanly, a sandbox that writes only its state."""
    config = plan.on_host(plan.config_dir / "agent.toml")
    start = shlex.join([*plan.command, "--log-format", "json", "agent", "run", "--config", str(config)])
    return f"""[Unit]
Description=coldtrace edge agent (ingest, score, buffer, sign, forward)
After=network-online.target mosquitto.service
Wants=network-online.target

[Service]
Type=exec
User={plan.user}
Group={plan.group}
ExecStart={start}
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
UMask=0077
ReadWritePaths={plan.on_host(plan.state_dir)}

[Install]
WantedBy=multi-user.target
"""


def render_config(plan: InstallPlan, *, gateway_id: str, site_id: str, local_url: str, cloud_url: str) -> str:
    """A starting agent.toml pointing at the installed directories."""
    tls = plan.on_host(plan.tls_dir)
    return f"""# coldtrace edge agent. Every key can be overridden with COLDTRACE_AGENT_<KEY> (nested: __).
gateway_id = "{gateway_id}"
site_id = "{site_id}"
state_dir = "{plan.on_host(plan.state_dir)}"
signing_key = "{tls}/signing.key"

[local]
url = "{local_url}"
ca_file = "{tls}/ca-bundle.pem"
cert_file = "{tls}/agent.pem"
key_file = "{tls}/agent.key"

[cloud]
url = "{cloud_url}"
ca_file = "{tls}/ca-bundle.pem"
cert_file = "{tls}/gateway-chain.pem"
key_file = "{tls}/gateway.key"
"""


def _ids(plan: InstallPlan) -> tuple[int, int] | None:
    """(uid, gid) of the service account, or None when not running as root (no chown possible)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(plan.user).pw_uid, grp.getgrnam(plan.group).gr_gid
    except KeyError as exc:
        raise InstallError(
            f"user or group {plan.user}:{plan.group} does not exist; create it first: "
            f"useradd --system --home-dir /var/lib/coldtrace --shell /usr/sbin/nologin {plan.user}"
        ) from exc


def _adopt_tls_files(tls_dir: Path, owner: tuple[int, int] | None) -> None:
    """Give what is already in ``tls_dir`` to the agent's user; make private keys 0600."""
    for path in sorted(tls_dir.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue  # only regular files we may have written; a link's target is not ours to change
        if path.suffix == ".key":
            path.chmod(0o600)
        if owner is not None:
            os.chown(path, *owner)


def install(
    plan: InstallPlan, *, gateway_id: str, site_id: str, local_url: str, cloud_url: str, force: bool = False
) -> list[Path]:
    """Create the directories, the config (unless present) and the unit; return what was written."""
    ids = _ids(plan)
    written: list[Path] = []

    def place(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
        path.chmod(mode)
        if owner is not None:
            os.chown(path, *owner)

    root_group = None if ids is None else (0, ids[1])
    try:
        for directory, mode, owner in (
            (plan.config_dir, 0o750, root_group),
            (plan.tls_dir, 0o700, ids),
            (plan.state_dir, 0o700, ids),
            (plan.unit_path.parent, 0o755, None),
        ):
            directory.mkdir(parents=True, exist_ok=True)
            place(directory, mode, owner)
        _adopt_tls_files(plan.tls_dir, ids)
        config = plan.config_dir / "agent.toml"
        if force or not config.exists():
            config.write_text(
                render_config(
                    plan, gateway_id=gateway_id, site_id=site_id, local_url=local_url, cloud_url=cloud_url
                ),
                encoding="utf-8",
            )
            place(config, 0o640, root_group)
            written.append(config)
        plan.unit_path.write_text(render_unit(plan), encoding="utf-8")
        place(plan.unit_path, 0o644, None)
        written.append(plan.unit_path)
    except OSError as exc:
        raise InstallError(f"cannot write under {plan.root}: {exc.strerror} ({exc.filename})") from exc
    return written
