"""The ``coldtrace`` command: one entry point, a subcommand group per role.

Each role's package owns its commands; this module mounts them, sets up logging and maps the errors
every command shares onto the exit codes in :mod:`coldtrace.exitcodes`.
"""

from __future__ import annotations

from typing import Annotated

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
def demo() -> None:
    """Run the whole path on embedded defaults and print a summary (not built yet: issue #7)."""
    typer.secho("`coldtrace demo` is not built yet (tracked in issue #7).", err=True, fg=typer.colors.YELLOW)
    raise typer.Exit(ExitCode.UNAVAILABLE)


def main() -> None:
    """Console-script entry point."""
    app()
