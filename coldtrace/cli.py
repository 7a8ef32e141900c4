"""The ``coldtrace`` command: one entry point, a subcommand group per role.

Each role's package owns its commands; this module mounts them, sets up logging and maps the errors
every command shares onto the exit codes in :mod:`coldtrace.exitcodes`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from certs.cli import app as certs_app
from cloud_ingest.cli import app as cloud_app
from coldtrace import __version__
from coldtrace.contract_cli import app as contract_app
from coldtrace.exitcodes import ExitCode
from coldtrace.logs import LogFormat, configure_logging
from edge_agent.cli import app as agent_app
from edge_agent.scoring.cli import app as model_app
from firmware_sim.cli import app as sim_app
from gateway.cli import app as gateway_app

app = typer.Typer(
    name="coldtrace",
    help="Signed, durable edge-to-cloud telemetry for cold-chain logistics.",
    no_args_is_help=True,
    # Locals in a traceback could hold key material: never print them.
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"coldtrace {__version__}")
        raise typer.Exit(ExitCode.OK)


@app.callback()
def _root(
    version: Annotated[  # noqa: ARG001 - handled eagerly by its callback
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    log_level: Annotated[
        str, typer.Option(envvar="COLDTRACE_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    log_format: Annotated[
        LogFormat, typer.Option(envvar="COLDTRACE_LOG_FORMAT", help="Structured JSON lines or text.")
    ] = LogFormat.TEXT,
) -> None:
    """Signed, durable edge-to-cloud telemetry for cold-chain logistics."""
    configure_logging(level=log_level, fmt=log_format)


app.add_typer(certs_app, name="certs", help="PKI: root and issuing CA, certificates, revocation, CRL.")
app.add_typer(
    contract_app, name="contract", help="The wire contract: JSON Schema, inspect and verify frames."
)
app.add_typer(
    gateway_app, name="gateway", help="Gateway host: enrollment (key, CSR, certificate), install, status."
)
app.add_typer(
    agent_app, name="agent", help="Edge agent: ingest, normalise, bind, score, buffer, sign, forward."
)
app.add_typer(model_app, name="model", help="Anomaly models: train, sign, verify.")
app.add_typer(
    cloud_app, name="cloud", help="Cloud ingest: workers, API, gateway registration, API keys, migrations."
)
app.add_typer(sim_app, name="sim", help="Fleet simulator: devices with physics, faults and named scenarios.")


@app.command()
def demo(  # noqa: PLR0917 - typer reads options from the signature
    exit_after: Annotated[
        bool, typer.Option("--exit", help="Stop after the summary instead of leaving the API up.")
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="HTTPS port of the API (default 8443; 0 picks a free one).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address of the API (default 127.0.0.1).")] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep PKI, databases, logs and summary.json here (default: a temporary one)."),
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help="Simulated devices, a multiple of 8 (default 32).")
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(help="Simulated seconds per second (default 150: 2 simulated hours in ~50 s)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the fleet, its faults and ground truth (default 7).")
    ] = None,
    services: Annotated[
        bool,
        typer.Option(
            "--services",
            help="Run against Mosquitto (started by the demo), PostgreSQL and VictoriaMetrics or InfluxDB "
            "(named in COLDTRACE_DEMO_SERVICES__* or --config).",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="A TOML file of demo settings (e.g. a [services] table); the environment wins."),
    ] = None,
) -> None:
    """Run the whole path on embedded defaults: PKI, brokers, cloud, two gateways, a simulated fleet.

    A reefer failure, a door left open, a glitch storm and a 30-minute uplink partition at accelerated
    time; then a summary checked against the simulator's ground truth. Every option also reads
    COLDTRACE_DEMO_<OPTION> from the environment. With --services the same run uses real servers.
    """
    try:
        from pydantic import ValidationError  # noqa: PLC0415
        from rich.console import Console  # noqa: PLC0415

        from coldtrace.demo import DemoSettings, run_command  # noqa: PLC0415 - needs every extra
    except ImportError as exc:
        typer.secho(
            f"coldtrace demo needs the edge, cloud and sim extras ({exc}): pip install 'coldtrace[all]'",
            err=True, fg=typer.colors.RED,
        )  # fmt: skip
        raise typer.Exit(ExitCode.UNAVAILABLE) from exc
    given: dict[str, Any] = {
        "port": port, "host": host, "workdir": workdir, "devices": devices, "speed": speed, "seed": seed,
        "use_services": services or None,
    }  # fmt: skip
    if config is not None and not config.is_file():
        typer.secho(f"error: --config: {config} is not a file", err=True, fg=typer.colors.RED)
        raise typer.Exit(ExitCode.IO)
    try:
        loaded = DemoSettings.load(config).model_dump()
        settings = DemoSettings.model_validate(loaded | {k: v for k, v in given.items() if v is not None})
    except tomllib.TOMLDecodeError as exc:
        typer.secho(f"error: --config: {config} is not valid TOML ({exc})", err=True, fg=typer.colors.RED)
        raise typer.Exit(ExitCode.INVALID_INPUT) from exc
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = [str(part) for part in first["loc"]]
        # A nested setting has no option: name it as the file key and the environment variable.
        option = (
            f"--{loc[0]}"
            if len(loc) == 1
            else ".".join(loc) + " (COLDTRACE_DEMO_" + "__".join(loc).upper() + ")"
        )
        typer.secho(f"error: {option}: {first['msg']}", err=True, fg=typer.colors.RED)
        raise typer.Exit(ExitCode.USAGE) from exc
    raise typer.Exit(
        run_command(settings, hold_open=not exit_after, console=Console(), err=Console(stderr=True))
    )


def main() -> None:
    """Console-script entry point."""
    app()
