"""coldtrace benchmarks: measure, then write the figures into BENCHMARKS.md.

    python scripts/bench.py sim [--seconds 40] [--ladder 1000,2500,5000,10000]
                                [--modes multiplexed,per-device] [--quick]

Each step runs in a fresh child process (so peak memory is that step's own) against a private
Mosquitto over mutual TLS that this script starts and stops. Every step is measured twice in the same
run, one after the other on the same broker: the fleet simulator, then the baseline, a bare publisher
(``scripts/bare_publisher.py``) sending the same fleet's messages — generated beforehand, pre-encoded —
at the same moments over the same connections. Figures are measured, never edited by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certs.pki import Pki, Role  # noqa: E402
from coldtrace.mqtt import BrokerUrl, TlsFiles  # noqa: E402
from firmware_sim.fleet import Simulation  # noqa: E402
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet  # noqa: E402
from firmware_sim.scenario import Scenario, builtin_scenarios  # noqa: E402
from firmware_sim.truth import TruthWriter  # noqa: E402
from scripts.bare_publisher import publish_schedule, read_schedule, write_schedule  # noqa: E402
from scripts.benchdoc import machine, machine_lines, write_section  # noqa: E402

#: The target the simulator must meet at a given fleet size (issue #4).
LAG_P99_LIMIT_S = 1.0
#: Who publishes in a step: the fleet simulator, or the bare publisher replaying its messages.
PUBLISHERS = ("simulator", "bare")
SEED = 1


def _sim_step(args: argparse.Namespace) -> None:
    """One measurement in this (child) process: N devices for S seconds at one reading per 10 s."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pki = Pki.open(Path(args.pki))
    mode = ConnectionMode(args.mode)
    loadgen = None
    if mode is ConnectionMode.MULTIPLEXED:
        who = pki.identity(Role.SERVICE, "sim-loadgen")
        loadgen = TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)
    config = RunConfig(
        brokers=(BrokerUrl.parse(args.broker),), ca_file=pki.ca_bundle_path, mode=mode, loadgen=loadgen,
        device_certs=pki.directory / "issued" / "device", connections=4, speed=1.0, connect_concurrency=64,
    )  # fmt: skip
    if args.publisher == "bare":
        summary = asyncio.run(publish_schedule(read_schedule(Path(args.schedule)), config))
    else:
        simulation = Simulation(
            _scenario(args.seconds), devices=args.devices, seed=SEED, start_ms=int(time.time() * 1000),
            truth=TruthWriter(),
        )  # fmt: skip
        summary = asyncio.run(run_fleet(simulation, config))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "publisher": args.publisher,
                "devices": args.devices,
                "mode": mode.value,
                "published": summary.published,
                "acknowledged": summary.acknowledged,
                "refused_devices": len(summary.refused_devices),
                "connect_s": round(summary.connect_s, 2),
                "wall_s": round(summary.wall_s, 2),
                "rate_per_s": round(summary.acknowledged / summary.wall_s, 1) if summary.wall_s else 0.0,
                "lag_p50_ms": round((summary.lag_percentile(50) or 0.0) * 1000, 2),
                "lag_p99_ms": round((summary.lag_percentile(99) or 0.0) * 1000, 2),
                "lag_max_ms": round((summary.lag_percentile(100) or 0.0) * 1000, 2),
                "cpu_s": round(summary.cpu_s, 2),
                "peak_rss_mb": round(peak / 1024, 1),
            }
        )
    )


def _scenario(seconds: float) -> Scenario:
    """The fleet every step runs: ``normal-day`` for ``seconds``."""
    return builtin_scenarios()["normal-day"].model_copy(update={"duration_s": float(seconds)})


def _schedule(path: Path, devices: int, seconds: float) -> None:
    """Generate the fleet's messages (here, not in the measured process) for the bare publisher."""
    start_ms = int(time.time() * 1000)
    simulation = Simulation(
        _scenario(seconds), devices=devices, seed=SEED, start_ms=start_ms, truth=TruthWriter()
    )
    count = write_schedule(
        path, devices=[(d.device_id, d.gateway_at(start_ms)) for d in simulation.devices],
        emissions=simulation.emissions(), start_ms=start_ms,
    )  # fmt: skip
    print(f"bare publisher schedule: {devices} devices, {count} messages", file=sys.stderr)


def _sim(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles  # noqa: PLC0415

    versions = machine()
    ladder = [int(n) for n in args.ladder.split(",")]
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki.init(Path(tmp) / "pki")
        server = pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        pki.issue(Role.SERVICE, "sim-loadgen")
        if "per-device" in modes:
            started = time.perf_counter()
            # Device ids depend on the fleet size (group shares), so enrol every step's fleet.
            needed = sorted(set().union(*(_device_ids(n) for n in ladder)))
            pki.ensure_issued(Role.DEVICE, needed)
            print(
                f"issued {len(needed)} device certificates in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
        tls = MosquittoTlsFiles(
            cafile=pki.ca_bundle_path,
            certfile=server.chain_path,
            keyfile=server.key_path,
            crlfile=pki.crl_path,
        )
        schedules = {n: Path(tmp) / f"schedule-{n}.bin" for n in ladder}
        for n, path in schedules.items():
            _schedule(path, n, args.seconds)
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
        broker = Mosquitto(
            Path("/usr/sbin/mosquitto"), tls, service_acl=DEFAULT_SERVICE_ACL, log_every_message=False
        )
        broker.start()
        rows = []
        try:
            for mode in modes:
                for devices in ladder:
                    for publisher in PUBLISHERS:
                        command = [
                            sys.executable, __file__, "_sim-step", "--devices", str(devices), "--mode", mode,
                            "--seconds", str(args.seconds), "--broker", f"mqtts://127.0.0.1:{broker.port}",
                            "--pki", str(pki.directory), "--publisher", publisher,
                            "--schedule", str(schedules[devices]),
                        ]  # fmt: skip
                        done = subprocess.run(command, capture_output=True, text=True, check=False)
                        if done.returncode != 0:
                            print(done.stderr[-2000:], file=sys.stderr)
                            raise SystemExit(f"step {mode} {devices} {publisher} failed")
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                        print(json.dumps(row), file=sys.stderr)
                        rows.append(row)
        finally:
            broker.close()
    section = _sim_report(rows, versions, args)
    if args.quick:
        print(section)
    else:
        write_section("sim", section)


def _device_ids(n: int) -> list[str]:
    simulation = Simulation(_scenario(1.0), devices=n, seed=SEED, start_ms=0, truth=TruthWriter())
    return [d.device_id for d in simulation.devices]


def _passed(row: dict[str, object]) -> bool:
    """Every publish acknowledged and lag p99 under the limit."""
    return row["acknowledged"] == row["published"] and _num(row["lag_p99_ms"]) < LAG_P99_LIMIT_S * 1000


def _num(value: object) -> float:
    return float(str(value))


def _ratio(a: object, b: object, digits: int = 2) -> str:
    return f"{_num(a) / _num(b):.{digits}f}" if _num(b) else "-"


def _sim_report(rows: list[dict[str, object]], machine: dict[str, str], args: argparse.Namespace) -> str:
    label = {"simulator": "simulator", "bare": "bare publisher"}
    lines = [
        "## Fleet simulator: devices one process sustains at one reading per 10 s, against a bare publisher",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python scripts/bench.py sim "
        f"--seconds {args.seconds} --ladder {args.ladder} --modes {args.modes}`.",
        "Each step: `normal-day` devices publishing QoS 1 over mutual TLS to a private Mosquitto on "
        "127.0.0.1, "
        f"for {args.seconds} s of real time; lag = broker PUBACK time minus scheduled publish time. "
        f"A step passes when every publish is acknowledged and lag p99 < {LAG_P99_LIMIT_S * 1000:.0f} ms. "
        "Peak RSS is the publishing process alone (connections are opened before the clock starts; "
        "`connect` is that time).",
        "",
        "Baseline, measured in the same run right after each simulator step, on the same broker: a bare "
        "publisher (`scripts/bare_publisher.py`) in a fresh process of its own. The same fleet's messages "
        "are generated beforehand in another process and handed to it pre-encoded with their scheduled "
        "offsets; it opens the same connections as the simulator (same client library, identities, client "
        "ids, persistent sessions; 4 load-generator connections in `multiplexed` mode, one per device "
        "with its own certificate in `per-device` mode) and publishes the same payloads, to the same "
        "topics, at the same moments, QoS 1, timed the same way — no physics, no fleet model, no "
        "vendor-format encoding.",
        "",
        "| mode | devices | publisher | msgs/s | published | acked | lag p50 ms | lag p99 ms | lag max ms "
        "| CPU s | peak RSS MB | connect s | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best: dict[tuple[str, str], int] = {}
    steps: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    for r in rows:
        mode, devices, publisher = str(r["mode"]), int(str(r["devices"])), str(r["publisher"])
        ok = _passed(r)
        if ok:
            best[mode, publisher] = max(best.get((mode, publisher), 0), devices)
        steps.setdefault((mode, devices), {})[publisher] = r
        lines.append(
            f"| {mode} | {devices} | {label[publisher]} | {r['rate_per_s']} | {r['published']} "
            f"| {r['acknowledged']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['lag_max_ms']} "
            f"| {r['cpu_s']} | {r['peak_rss_mb']} | {r['connect_s']} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "Simulator / bare publisher, step by step (same run):",
        "",
        "| mode | devices | msgs/s | lag p99 | CPU s | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for (mode, devices), pair in steps.items():
        sim, bare = pair.get("simulator"), pair.get("bare")
        if sim is None or bare is None:
            continue
        lines.append(
            f"| {mode} | {devices} | {_ratio(sim['rate_per_s'], bare['rate_per_s'])} "
            f"| {_ratio(sim['lag_p99_ms'], bare['lag_p99_ms'])} | {_ratio(sim['cpu_s'], bare['cpu_s'])} "
            f"| {_ratio(sim['peak_rss_mb'], bare['peak_rss_mb'])} |"
        )
    largest = max(int(n) for n in args.ladder.split(","))
    summary = []
    for mode in args.modes.split(","):
        sim_best, bare_best = best.get((mode, "simulator")), best.get((mode, "bare"))
        if bare_best is None:
            summary.append(
                f"{mode}: simulator {sim_best or 'no'} devices, bare publisher passed no step, so no ratio"
            )
            continue
        sim_n = sim_best or 0
        text = f"{mode}: simulator {sim_n} / bare publisher {bare_best} = {sim_n / bare_best:.2f}"
        if sim_best == bare_best == largest:
            text += " (both passed the largest step tried: the ladder, not either publisher, bounds this)"
        summary.append(text)
    lines += [
        "",
        "Largest passing fleet, simulator / bare publisher (the sustained figure against its same-run "
        "baseline): " + "; ".join(summary) + ".",
        "",
    ]
    lines += machine_lines(machine)
    return "\n".join(lines)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="fleet simulator: devices sustained per process, both connection modes")
    sim.add_argument("--seconds", type=int, default=40)
    sim.add_argument("--ladder", default="1000,2500,5000,10000")
    sim.add_argument("--modes", default="multiplexed,per-device")
    sim.add_argument("--quick", action="store_true", help="A smoke run of seconds; prints, writes nothing.")
    step = sub.add_parser("_sim-step")
    step.add_argument("--devices", type=int, required=True)
    step.add_argument("--mode", required=True)
    step.add_argument("--seconds", type=int, required=True)
    step.add_argument("--broker", required=True)
    step.add_argument("--pki", required=True)
    step.add_argument("--publisher", choices=PUBLISHERS, default="simulator")
    step.add_argument("--schedule", help="The bare publisher's messages (written by the parent).")
    args = parser.parse_args()
    if getattr(args, "quick", False):
        args.seconds, args.ladder, args.modes = 3, "200", "multiplexed"
    {"sim": _sim, "_sim-step": _sim_step}[args.command](args)


if __name__ == "__main__":
    main()
