"""The bare writer used as the cloud benchmark's baseline: MQTT → line protocol → VictoriaMetrics.

    python scripts/bare_writer.py --broker mqtts://127.0.0.1:PORT --ca CA --cert CERT --key KEY \\
        --client-id svc-bare-1 --share-group bare --vm http://127.0.0.1:PORT --expected N --out result.json

Subscribes like a worker (shared subscription, persistent session, QoS 1, manual acknowledgement,
the same ``coldtrace.mqtt.MqttClient``) but verifies nothing: no signature, no schema, no chain, no
SQL. Each frame's JSON body is parsed with orjson and its readings become line protocol through
f-strings; whatever messages are at hand (up to ``--chunk-points`` readings) go to ``/api/v2/write``
in one POST, and those messages are acknowledged once the server answers 204. Up to ``--in-flight``
POSTs (2) are under way at once, so the next chunk is built while the server takes the last one;
they are acknowledged in the order they arrived. Exits after ``--expected`` readings, writing its
timings to ``--out``.

``--fields worker`` (the default) writes the fields a worker's ``reading`` line has (see
``cloud_ingest.telemetry.lineproto``), as measurement ``bare_reading``: the five measured values,
``seq``, ``skew_ms``, ``glitch`` and ``backfill``, which are all functions of the reading alone, with
the worker's timestamps. Its tags are the worker's but ``profile``, which needs the cloud's SQL
state (``tests/scripts/test_bare_writer.py`` holds the two to the same lines). ``--fields measured``
leaves out ``skew_ms``, ``glitch`` and ``backfill`` (measurement ``bare_measured_reading``), as
the benchmark's baseline did before 2026-11-25 (with one POST at a time): it asks a third less of
VictoriaMetrics than a worker does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from coldtrace.contract.batch import HEADER_BYTES  # noqa: E402
from coldtrace.mqtt import BrokerUrl, Message, MqttClient, TlsFiles  # noqa: E402

#: ``--fields`` → the measurement written.
MEASUREMENTS = {"worker": "bare_reading", "measured": "bare_measured_reading"}


def core_busy_s(core: int | None) -> float:
    """Seconds CPU ``core`` has been busy since boot (every process on it, ours or not; 0 for None)."""
    if core is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{core}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
            return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def frame_lines(payload: bytes, gateway_id: str, *, fields: str) -> list[str]:
    """Line protocol for the readings of one frame (no validation, no escaping: trusted input)."""
    readings: list[dict[str, Any]] = orjson.loads(payload[HEADER_BYTES:])["readings"]
    measurement = MEASUREMENTS[fields]
    derived = fields == "worker"
    lines = []
    for r in readings:
        tags = f"{measurement},clock={r['clock']},device={r['device_id']},gateway={gateway_id}"
        if r["lot_ids"]:
            tags += ",lots=" + "\\,".join(r["lot_ids"])
        if r["shipment_id"] is not None:
            tags += f",shipment={r['shipment_id']}"
        values = ""
        for name in ("temperature_c", "humidity_pct", "shock_g", "battery_v", "lat", "lon", "anomaly_score"):
            if (value := r.get(name)) is not None:
                values += f"{name}={value!r},"
        values += f"seq={r['seq']}i"
        t_ms = r["t_device_ms"]
        if derived:
            flags = r["flags"]
            values += (
                f",skew_ms={r['t_gateway_ms'] - t_ms}i,glitch={int('glitch' in flags)}i,"
                f"backfill={int('backfill' in flags)}i"
            )
            if r["clock"] == "unset":
                t_ms = r["t_gateway_ms"]
        lines.append(f"{tags},site={r['site_id']} {values} {t_ms}")
    return lines


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Drain ``args.expected`` readings; returns the timings."""
    client = MqttClient(
        client_id=args.client_id, broker=BrokerUrl.parse(args.broker), clean_start=False,
        session_expiry_s=3600, manual_ack=True,
        tls=TlsFiles(ca_file=Path(args.ca), cert_file=Path(args.cert), key_file=Path(args.key)),
    )  # fmt: skip
    url = f"{args.vm}/api/v2/write"
    params = {"precision": "ms", "org": "coldtrace", "bucket": "coldtrace"}
    received = written = chunks = 0
    first = cpu_first = busy_first = 0.0
    # POSTs in flight, oldest first: each is awaited, and its messages acknowledged, in this order.
    pending: deque[tuple[asyncio.Task[None], list[Message], int]] = deque()

    async def post(http: aiohttp.ClientSession, body: bytes) -> None:
        async with http.post(url, params=params, data=body) as response:
            if response.status != 204:
                raise RuntimeError(f"VictoriaMetrics answered {response.status}: {await response.text()}")

    async def settle_oldest() -> int:
        task, taken, points = pending.popleft()
        await task
        for message in taken:
            message.ack()
        return points

    async with aiohttp.ClientSession() as http:
        await client.connect()
        await client.subscribe(f"$share/{args.share_group}/ct/v1/gw/+/batch", qos=1)
        while received < args.expected:
            if pending and client.messages.empty():
                # Nothing to build the next chunk from: the broker may be waiting for our acks.
                written += await settle_oldest()
                continue
            taken: list[Message] = [await client.messages.get()]
            if not first:
                first, cpu_first, busy_first = time.monotonic(), time.process_time(), core_busy_s(args.core)
            lines = frame_lines(taken[0].payload, taken[0].topic.split("/")[3], fields=args.fields)
            while len(lines) < args.chunk_points and not client.messages.empty():
                message = client.messages.get_nowait()
                taken.append(message)
                lines += frame_lines(message.payload, message.topic.split("/")[3], fields=args.fields)
            received += len(lines)
            pending.append((asyncio.create_task(post(http, "\n".join(lines).encode())), taken, len(lines)))
            chunks += 1
            if len(pending) >= args.in_flight:
                written += await settle_oldest()
        while pending:
            written += await settle_oldest()
        done, cpu_done, busy_done = time.monotonic(), time.process_time(), core_busy_s(args.core)
        await client.disconnect()
    return {
        "readings": written,
        "first_monotonic": first,
        "done_monotonic": done,
        "seconds": done - first,
        "rate": written / (done - first),
        "cpu_drain_s": cpu_done - cpu_first,
        "others_on_core_s": max(0.0, busy_done - busy_first - (cpu_done - cpu_first)),
        "cpu_total_s": time.process_time(),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "chunks": chunks,
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name in ("--broker", "--ca", "--cert", "--key", "--client-id", "--share-group", "--vm", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--chunk-points", type=int, default=20_000)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=2,
        help="POSTs under way at once (the next chunk is built meanwhile).",
    )
    parser.add_argument(
        "--fields", choices=sorted(MEASUREMENTS), default="worker", help="Which fields to write (see above)."
    )
    parser.add_argument("--core", type=int, default=None, help="Pin this process to one CPU.")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    result = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
