"""``coldtrace gateway``: enrol the gateway, install the agent, and ask the agent how it is doing."""

from __future__ import annotations

import pwd
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from certs.cli import DEFAULT_DIR as DEFAULT_PKI_DIR
from certs.errors import PkiError
from coldtrace.exitcodes import ExitCode
from edge_agent.cli import load_settings
from gateway.enroll import (
    CloudEnrollment,
    EnrollError,
    GatewayFiles,
    LocalKeys,
    install_certificate,
    prepare,
    sign_offline,
)
from gateway.install import UNIT_NAME, InstallError, InstallPlan
from gateway.install import install as install_agent

app = typer.Typer(no_args_is_help=True, help="Gateway host: enrollment, device registry, install, status.")
_out = Console()
_err = Console(stderr=True)


EnrollDir = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="Where the keys, CSR and certificates go (made 0700; keys 0600). "
        "The agent.toml `coldtrace gateway install` writes expects /etc/coldtrace/tls.",
    ),
]


def _say(text: str) -> None:
    # markup=False: paths and TOML section names like "[cloud]" must print as they are.
    _out.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_fingerprints(keys: LocalKeys) -> None:
    _say(
        f"keys {'created' if keys.created else 'reused'} for gateway {keys.gateway_id}; "
        "the admin compares these with the enrollment before approving it:"
    )
    _say(f"  TLS key SHA-256: {keys.tls_key_sha256}")
    _say(f"  signing key id:  {keys.signing_key_id}")


def _print_next_steps(files: GatewayFiles, gateway_id: str) -> None:
    _say(f"enrolled gateway {gateway_id}: certificate installed in {files.directory}")
    _say(
        "next: agent.toml needs these (`coldtrace gateway install` writes them for --dir /etc/coldtrace/tls):"
    )
    _say(f'  gateway_id = "{gateway_id}"')
    _say(f'  signing_key = "{files.signing_key}"')
    _say("  [cloud]")
    _say(f'  ca_file = "{files.ca_bundle}"')
    _say(f'  cert_file = "{files.chain}"')
    _say(f'  key_file = "{files.tls_key}"')
    owner = _owner_name(files.directory)
    _say(
        f"the keys are 0600 and belong to {owner}, the owner of {files.directory}: the agent must run as "
        f"{owner} (`coldtrace gateway install` makes the directory the agent's user's); "
        "then run `systemctl restart coldtrace-agent`"
    )


def _owner_name(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _enroll_with_cloud(
    files: GatewayFiles,
    gateway_id: str,
    cloud: CloudEnrollment,
    *,
    force: bool,
    wait: bool,
    timeout: float,
    poll_interval: float,
) -> bool:
    """Submit, and with ``wait`` install once approved; True when a certificate was installed."""  # fmt: skip
    keys = prepare(files, gateway_id, force=force)
    _print_fingerprints(keys)
    answer = cloud.submit(keys)
    _say(f"CSR and signing key submitted to enrollment {cloud.enrollment_id} (status {answer.get('status')})")
    if not wait:
        _say("once an admin approved it, run this command again with --wait to install the certificate")
        return False
    _say(f"waiting up to {timeout:g} s for an admin's approval ...")
    delivered = cloud.wait(timeout_s=timeout, poll_interval_s=poll_interval)
    install_certificate(files, keys, chain_pem=delivered.chain_pem, ca_bundle_pem=delivered.ca_bundle_pem)
    return True


def _enroll_offline(files: GatewayFiles, gateway_id: str, *, pki_dir: Path, force: bool) -> None:
    keys = prepare(files, gateway_id, force=force)
    _print_fingerprints(keys)
    sign_offline(files, keys, pki_dir=pki_dir, force=force)
    _say(
        "the cloud must know the signing key before it accepts batches: "
        f"`coldtrace cloud gateways register {gateway_id} {files.signing_pub}`"
    )


@app.command()
def enroll(
    *,
    gateway_id: Annotated[
        str, typer.Option(help="This gateway's id: its certificate CN and broker username.")
    ],
    directory: EnrollDir = Path("/etc/coldtrace/tls"),
    cloud_url: Annotated[
        str | None,
        typer.Option(help="The cloud API, https://host[:port]; submit there for an admin to approve."),
    ] = None,
    enrollment_id: Annotated[
        int | None, typer.Option(help="The enrollment an admin opened (cloud mode).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="COLDTRACE_ENROLL_TOKEN",
            show_envvar=True,
            help="The enrollment's one-time token; prefer the environment variable (arguments show in ps). "
            "Asked for when missing.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA bundle to trust the cloud API's HTTPS by (default: the system's).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="After submitting, wait for approval and install.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds --wait waits for approval.")] = 600.0,
    poll_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between --wait's checks.")] = 5.0,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Sign with a local PKI (`coldtrace certs`) instead of the cloud."),
    ] = False,
    pki_dir: Annotated[
        Path,
        typer.Option(
            envvar="COLDTRACE_PKI_DIR", show_envvar=True, help="The PKI directory --offline signs with."
        ),
    ] = DEFAULT_PKI_DIR,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Create new keys even if some exist (the agent cannot connect until the new certificate "
            "is installed); offline, also supersede the gateway's live certificate.",
        ),
    ] = False,
) -> None:
    """Create this gateway's TLS and batch-signing keys here, get its certificate signed, install it.

    Cloud: an admin opens an enrollment and hands over its id and token; this submits the CSR and keys.

    With --wait it installs the certificate once approved; without, run it again with --wait later.

    Offline: --offline --pki-dir DIR signs with a PKI on this host (see `coldtrace certs`).

    The private keys never leave --dir and are never printed.
    """
    if offline == (cloud_url is not None):
        raise typer.BadParameter("choose one: --cloud-url URL --enrollment-id N, or --offline --pki-dir DIR")
    if cloud_url is not None and enrollment_id is None:
        raise typer.BadParameter("--cloud-url needs --enrollment-id (the id the admin gave with the token)")
    files = GatewayFiles(directory)
    try:
        if cloud_url is not None and enrollment_id is not None:
            token = token or typer.prompt("enrollment token", hide_input=True)
            # Built before any key exists: a refused URL must not leave keys behind.
            cloud = CloudEnrollment(
                base_url=cloud_url, enrollment_id=enrollment_id, token=token, ca_file=ca_file
            )
            installed = _enroll_with_cloud(
                files, gateway_id, cloud, force=force, wait=wait, timeout=timeout, poll_interval=poll_interval
            )
        else:
            _enroll_offline(files, gateway_id, pki_dir=pki_dir, force=force)
            installed = True
    except (EnrollError, PkiError) as exc:
        _err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    if installed:
        _print_next_steps(files, gateway_id)


@app.command()
def install(
    *,
    gateway_id: Annotated[str, typer.Option(help="This gateway's id (its certificate's name).")],
    site_id: Annotated[str, typer.Option(help="The warehouse or site it serves.")],
    local_url: Annotated[
        str, typer.Option(help="The gateway broker, mqtts://host:port.")
    ] = "mqtts://127.0.0.1:8883",
    cloud_url: Annotated[str, typer.Option(help="The cloud broker, mqtts://host:port.")],
    root: Annotated[
        Path, typer.Option(help="Install under this root (/ on the host; a scratch dir for images).")
    ] = Path("/"),
    user: Annotated[str, typer.Option(help="Service account the agent runs as.")] = "coldtrace",
    group: Annotated[
        str | None, typer.Option(help="The agent's group (default: the same name as --user).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing agent.toml.")] = False,
) -> None:
    """Write the systemd unit, the config file and the state directories with their owners and modes.

    Private keys end up 0600 in a 0700 directory owned by --user; enrol into that directory with
    `coldtrace gateway enroll --dir /etc/coldtrace/tls` (before or after this command).
    """
    plan = InstallPlan(root=root, user=user, group=group or user)
    try:
        written = install_agent(
            plan,
            gateway_id=gateway_id,
            site_id=site_id,
            local_url=local_url,
            cloud_url=cloud_url,
            force=force,
        )
    except InstallError as exc:
        _err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.IO) from exc
    for path in written:
        _out.print(f"wrote {path}", soft_wrap=True, highlight=False)
    _out.print(
        f"next: `coldtrace gateway enroll --dir {plan.on_host(plan.tls_dir)}` (and the local broker's "
        "agent.pem/agent.key there), then "
        f"`systemctl daemon-reload && systemctl enable --now {UNIT_NAME}`",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def status(
    config: Annotated[Path | None, typer.Option(help="The agent's TOML file.")] = None,
) -> None:
    """Print the agent's health: uplink, outbox depth and age, drain ETA, model, manifest."""
    settings = load_settings(config)
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # our own http endpoint
            health = orjson.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        _err.print(
            f"[red]error:[/] no agent answers at {url} ({exc}); is `coldtrace agent run` running?",
            soft_wrap=True,
        )
        raise typer.Exit(ExitCode.FAILURE) from exc
    table = Table(title=f"gateway {health.get('gateway_id')}", show_header=False)
    outbox = health.get("outbox") or {}
    table.add_row(
        "uplink",
        "connected" if health.get("uplink_connected") else f"down {health.get('cloud_unreachable_s')} s",
    )
    table.add_row("local fallback", "ACTIVE" if health.get("local_fallback") else "off")
    table.add_row("outbox readings", str(outbox.get("readings")))
    table.add_row("outbox bytes", str(outbox.get("bytes")))
    table.add_row("batches pending", str(outbox.get("frames_pending")))
    table.add_row("drain ETA", f"{health.get('drain_eta_s')} s")
    table.add_row("model", f"{health.get('model')}{' (rules only)' if health.get('rules_only') else ''}")
    table.add_row("manifest version", str(health.get("manifest_version")))
    _out.print(table)
