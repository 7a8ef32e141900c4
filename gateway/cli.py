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
def install() -> None:
    """Write the systemd unit, config and state directories (not built yet: issue #5)."""
    _not_built("install")


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
