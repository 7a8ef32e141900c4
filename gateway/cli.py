"""``coldtrace gateway status``: what the agent on this gateway is doing, from its health endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from coldtrace.exitcodes import ExitCode
from edge_agent.cli import load_settings
from gateway.install import UNIT_NAME, InstallError, InstallPlan
from gateway.install import install as install_agent

app = typer.Typer(no_args_is_help=True, help="Gateway host: enrollment, device registry, install, status.")
_out = Console()
_err = Console(stderr=True)


def _not_built(command: str) -> None:
    _err.print(f"`coldtrace gateway {command}` is not built yet (tracked in issue #5).", style="yellow")
    raise typer.Exit(ExitCode.UNAVAILABLE)


@app.command()
def enroll() -> None:
    """Create the gateway key and CSR and install its certificate (not built yet: issue #5)."""
    _not_built("enroll")


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
    force: Annotated[bool, typer.Option(help="Overwrite an existing agent.toml.")] = False,
) -> None:
    """Write the systemd unit, the config file and the state directories with their owners and modes."""
    plan = InstallPlan(root=root, user=user, group=user)
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
        f"next: put the TLS files in {plan.on_host(plan.config_dir / 'tls')}, then "
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
