"""The ``coldtrace`` command: one entry point, a subcommand group per role.

Each role's package owns its commands; this module mounts them, sets up logging and maps the errors
every command shares onto the exit codes in :mod:`coldtrace.exitcodes`.
"""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

# typer vendors click (0.29+); its groups take and return these classes, not the click package's.
from typer._click import Command, Context
from typer.core import TyperCommand, TyperGroup

from coldtrace import __version__
from coldtrace.exitcodes import ExitCode
from coldtrace.logs import LogFormat, configure_logging


@dataclass(frozen=True, slots=True)
class _Group:
    module: str
    """Where the group's Typer ``app`` lives."""
    extra: str
    """The install extra its dependencies come with."""
    help: str


#: The subcommand groups, imported only when used: ``coldtrace agent run`` then loads the agent's
#: libraries and not the cloud's (SQLAlchemy, aiohttp, InfluxDB client: about 50 MB of resident memory),
#: and a gateway installed with only the ``edge`` extra runs it.
_GROUPS: dict[str, _Group] = {
    "certs": _Group("certs.cli", "", "PKI: root and issuing CA, certificates, revocation, CRL."),
    "contract": _Group(
        "coldtrace.contract_cli", "", "The wire contract: JSON Schema, inspect and verify frames."
    ),
    "gateway": _Group(
        "gateway.cli", "edge", "Gateway host: enrollment (key, CSR, certificate), install, status."
    ),
    "agent": _Group(
        "edge_agent.cli", "edge", "Edge agent: ingest, normalise, bind, score, buffer, sign, forward."
    ),
    "model": _Group("edge_agent.scoring.cli", "edge", "Anomaly models: train, sign, verify."),
    "cloud": _Group(
        "cloud_ingest.cli", "cloud", "Cloud ingest: workers, API, gateway registration, API keys, migrations."
    ),
    "sim": _Group(
        "firmware_sim.cli", "sim", "Fleet simulator: devices with physics, faults and named scenarios."
    ),
}


class _LazyGroups(TyperGroup):
    """The root command: :data:`_GROUPS` are imported when named (``--help`` imports them all)."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*_GROUPS, *super().list_commands(ctx)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        group = _GROUPS.get(cmd_name)
        if group is None:
            return super().get_command(ctx, cmd_name)
        try:
            sub_app = importlib.import_module(group.module).app
        except ImportError as exc:
            return _not_installed(cmd_name, group, exc)
        # Mounted as add_typer mounts it: a group even when it has one command (``agent run``).
        mount = typer.Typer()
        mount.add_typer(sub_app, name=cmd_name, help=group.help)
        root = typer.main.get_command(mount)
        assert isinstance(root, TyperGroup)  # noqa: S101 - a Typer with a sub-Typer is a group
        return root.commands[cmd_name]


def _not_installed(name: str, group: _Group, exc: ImportError) -> Command:
    """A stand-in that says which extra to install (the package's dependencies are optional)."""

    def refuse() -> None:
        typer.secho(
            f"coldtrace {name} needs the {group.extra or 'base'} dependencies ({exc}): "
            f"pip install 'coldtrace[{group.extra or 'all'}]'",
            err=True, fg=typer.colors.RED,
        )  # fmt: skip
        raise typer.Exit(ExitCode.UNAVAILABLE)

    return TyperCommand(
        name, callback=refuse, help=f"{group.help} (not installed: coldtrace[{group.extra}])",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )  # fmt: skip


app = typer.Typer(
    name="coldtrace",
    cls=_LazyGroups,
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
