"""``coldtrace sim …``: list the named scenarios, run one against real brokers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from certs.errors import PkiError
from certs.pki import Pki, Role
from coldtrace.exitcodes import ExitCode
from coldtrace.mqtt import BrokerUrl, MqttError, TlsFiles
from firmware_sim.errors import SimulatorError
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, RunSummary, run_fleet
from firmware_sim.scenario import builtin_scenarios, resolve_scenario
from firmware_sim.truth import TruthWriter

logger = logging.getLogger(__name__)
app = typer.Typer(
    no_args_is_help=True, help="Fleet simulator: devices with physics, faults and named scenarios."
)
_out = Console()
_err = Console(stderr=True)
LOADGEN_IDENTITY = "sim-loadgen"


@app.command("list")
def list_scenarios() -> None:
    """List the named scenarios with a one-line description."""
    table = Table(show_header=True, header_style="bold")
    for column in ("scenario", "device kinds", "duration", "description"):
        table.add_column(column)
    for name, scenario in builtin_scenarios().items():
        kinds = ", ".join(sorted({g.kind.value for g in scenario.fleet}))
        table.add_row(name, kinds, f"{scenario.duration_s / 3600:g} h", scenario.description)
    _out.print(table)


def _fail(message: str, code: ExitCode) -> typer.Exit:
    _err.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _identities(
    pki_dir: Path, mode: ConnectionMode, device_ids: list[str]
) -> tuple[Path, TlsFiles | None, Path | None]:
    """The CA bundle and the client identities a run needs, issuing what is missing."""
    pki = Pki.open(pki_dir)
    if mode is ConnectionMode.MULTIPLEXED:
        try:
            identity = pki.identity(Role.SERVICE, LOADGEN_IDENTITY)
        except PkiError:
            identity = pki.issue(Role.SERVICE, LOADGEN_IDENTITY)
        files = TlsFiles(ca_file=pki.ca_bundle_path, cert_file=identity.cert_path, key_file=identity.key_path)
        return pki.ca_bundle_path, files, None
    columns = (TextColumn("device certificates"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task("issue", total=len(device_ids))
        pki.ensure_issued(Role.DEVICE, device_ids, progress=lambda n: bar.update(task, completed=n))
    return pki.ca_bundle_path, None, pki.directory / "issued" / "device"


def _summary(summary: RunSummary, truth_path: Path | None) -> None:
    table = Table(title="simulation run", show_header=False)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.kinds.items()))
    table.add_row("published", f"{summary.published}  ({kinds})")
    table.add_row("acknowledged (PUBACK)", str(summary.acknowledged))
    table.add_row("refused publishes", str(summary.refused))
    table.add_row("refused devices", ", ".join(sorted(summary.refused_devices)) or "none")
    p50, p99 = summary.lag_percentile(50), summary.lag_percentile(99)
    if p50 is not None and p99 is not None:
        table.add_row("publish lag p50 / p99", f"{p50 * 1000:.1f} ms / {p99 * 1000:.1f} ms")
    table.add_row("simulated / wall time", f"{summary.sim_s:g} s / {summary.wall_s:.1f} s")
    if truth_path is not None:
        table.add_row("ground truth", str(truth_path))
    _out.print(table)


@app.command()
def run(
    *,
    scenario: Annotated[
        str, typer.Option(help="A scenario name (see `coldtrace sim list`) or a .toml file.")
    ],
    broker: Annotated[
        list[str], typer.Option(help="mqtts://host:port; repeat for several gateways' brokers.")
    ],
    devices: Annotated[int, typer.Option(min=1, help="Number of simulated devices.")] = 100,
    speed: Annotated[
        float, typer.Option(min=0.0, help="Simulated seconds per second; 0 = as fast as possible.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same run and ground truth.")] = 1,
    mode: Annotated[
        ConnectionMode, typer.Option(help="One MQTT connection per device, or a few shared.")
    ] = ConnectionMode.MULTIPLEXED,
    connections: Annotated[int, typer.Option(min=1, help="Connections per broker in multiplexed mode.")] = 4,
    pki_dir: Annotated[
        Path, typer.Option("--pki", envvar="COLDTRACE_PKI_DIR", help="PKI directory (coldtrace certs).")
    ] = Path("certs/dev"),
    truth: Annotated[Path | None, typer.Option(help="Write the ground truth (JSON lines) here.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Write the device -> shipment/lot bindings (JSON) here.")
    ] = None,
    start: Annotated[datetime | None, typer.Option(help="Simulated start time (UTC); default: now.")] = None,
) -> None:
    """Run a scenario against real brokers over mutual TLS, with progress and a summary."""
    try:
        chosen = resolve_scenario(scenario)
        brokers = tuple(BrokerUrl.parse(url) for url in broker)
    except (SimulatorError, ValueError) as exc:
        raise _fail(str(exc), ExitCode.INVALID_INPUT) from exc
    start_at = (start or datetime.now(UTC)).replace(tzinfo=(start.tzinfo if start and start.tzinfo else UTC))
    start_ms = int(start_at.timestamp() * 1000)
    writer = TruthWriter(truth)
    simulation = Simulation(chosen, devices=devices, seed=seed, start_ms=start_ms, truth=writer)
    if manifest is not None:
        bindings = [asdict(b) for b in simulation.bindings()]
        manifest.write_bytes(orjson.dumps(bindings, option=orjson.OPT_INDENT_2))
    try:
        ca_file, loadgen, device_certs = _identities(pki_dir, mode, [d.device_id for d in simulation.devices])
    except PkiError as exc:
        raise _fail(str(exc), ExitCode.USAGE) from exc
    config = RunConfig(
        brokers=brokers, ca_file=ca_file, mode=mode, loadgen=loadgen, device_certs=device_certs,
        connections=connections, speed=speed,
    )  # fmt: skip
    columns = (
        TextColumn(f"[bold]{chosen.name}[/] {devices} devices"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_err) as bar:
        task = bar.add_task("run", total=chosen.duration_s, status="connecting")

        def progress(sim_s: float, s: RunSummary) -> None:
            status = f"sim {sim_s / 60:.0f} min, published {s.published}, acked {s.acknowledged}"
            bar.update(task, completed=sim_s, status=status)

        try:
            summary = asyncio.run(run_fleet(simulation, config, on_progress=progress))
        except MqttError as exc:
            raise _fail(str(exc), ExitCode.FAILURE) from exc
        finally:
            writer.close()
    _summary(summary, truth)
    if summary.refused_devices or summary.refused:
        raise typer.Exit(ExitCode.FAILURE)
