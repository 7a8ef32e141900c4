"""coldtrace benchmarks: measure, then write the figures into BENCHMARKS.md.

    python scripts/bench.py sim [--seconds 40] [--ladder 1000,2500,5000,10000]
                                [--modes multiplexed,per-device] [--quick]

Each step runs in a fresh child process (so peak memory is that step's own) against a private
Mosquitto over mutual TLS that this script starts and stops. Figures are measured, never edited by hand.
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
from firmware_sim.scenario import builtin_scenarios  # noqa: E402
from firmware_sim.truth import TruthWriter  # noqa: E402
from scripts.benchdoc import machine, machine_lines, write_section  # noqa: E402

#: The target the simulator must meet at a given fleet size (issue #4).
LAG_P99_LIMIT_S = 1.0


def _sim_step(args: argparse.Namespace) -> None:
    """One measurement in this (child) process: N devices for S seconds at one reading per 10 s."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    scenario = builtin_scenarios()["normal-day"].model_copy(update={"duration_s": float(args.seconds)})
    simulation = Simulation(
        scenario, devices=args.devices, seed=1, start_ms=int(time.time() * 1000), truth=TruthWriter()
    )
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
    summary = asyncio.run(run_fleet(simulation, config))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
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
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
        broker = Mosquitto(
            Path("/usr/sbin/mosquitto"), tls, service_acl=DEFAULT_SERVICE_ACL, log_every_message=False
        )
        broker.start()
        rows = []
        try:
            for mode in modes:
                for devices in ladder:
                    command = [
                        sys.executable, __file__, "_sim-step", "--devices", str(devices), "--mode", mode,
                        "--seconds", str(args.seconds), "--broker", f"mqtts://127.0.0.1:{broker.port}",
                        "--pki", str(pki.directory),
                    ]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        print(done.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"step {mode} {devices} failed")
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
    scenario = builtin_scenarios()["normal-day"].model_copy(update={"duration_s": 1.0})
    return [
        d.device_id for d in Simulation(scenario, devices=n, seed=1, start_ms=0, truth=TruthWriter()).devices
    ]


def _sim_report(rows: list[dict[str, object]], machine: dict[str, str], args: argparse.Namespace) -> str:
    lines = [
        "## Fleet simulator: devices one process sustains at one reading per 10 s",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python scripts/bench.py sim "
        f"--seconds {args.seconds} --ladder {args.ladder} --modes {args.modes}`.",
        "Each step: `normal-day` devices publishing QoS 1 over mutual TLS to a private Mosquitto on "
        "127.0.0.1, "
        f"for {args.seconds} s of real time; lag = broker PUBACK time minus scheduled publish time. "
        f"A step passes when every publish is acknowledged and lag p99 < {LAG_P99_LIMIT_S * 1000:.0f} ms. "
        "Peak RSS is the simulator process alone (connections are opened before the clock starts; "
        "`connect` is that time).",
        "",
        "| mode | devices | msgs/s | published | acked | lag p50 ms | lag p99 ms | lag max ms | CPU s "
        "| peak RSS MB | connect s | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best: dict[str, int] = {}
    for r in rows:
        ok = r["acknowledged"] == r["published"] and float(str(r["lag_p99_ms"])) < LAG_P99_LIMIT_S * 1000
        if ok:
            best[str(r["mode"])] = max(best.get(str(r["mode"]), 0), int(str(r["devices"])))
        lines.append(
            f"| {r['mode']} | {r['devices']} | {r['rate_per_s']} | {r['published']} | {r['acknowledged']} | "
            f"{r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['lag_max_ms']} | {r['cpu_s']} | "
            f"{r['peak_rss_mb']} | {r['connect_s']} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "Largest passing fleet: " + ", ".join(f"{m} {n} devices" for m, n in best.items()) + ".",
        "",
        "Baseline: none measured in this run, so no ratio; each step is judged against the target above "
        "(issue #4).",
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
    args = parser.parse_args()
    if getattr(args, "quick", False):
        args.seconds, args.ladder, args.modes = 3, "200", "multiplexed"
    {"sim": _sim, "_sim-step": _sim_step}[args.command](args)


if __name__ == "__main__":
    main()
