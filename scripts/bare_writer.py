"""The bare writer used as the cloud benchmark's baseline: MQTT → line protocol → VictoriaMetrics.

    python scripts/bare_writer.py --broker mqtts://127.0.0.1:PORT --ca CA --cert CERT --key KEY \\
        --client-id svc-bare-1 --share-group bare --vm http://127.0.0.1:PORT --expected N --out result.json

Subscribes like a worker (shared subscription, persistent session, QoS 1, manual acknowledgement,
the same ``coldtrace.mqtt.MqttClient``) but verifies nothing: no signature, no schema, no chain, no
SQL. Each frame's JSON body is parsed with orjson and its readings become line protocol through
f-strings; whatever messages are at hand (up to ``--chunk-points``) go to ``/api/v2/write`` in one
POST, and those messages are acknowledged once the server answers 204. Exits after ``--expected``
readings, writing its timings to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from coldtrace.contract.batch import HEADER_BYTES  # noqa: E402
from coldtrace.mqtt import BrokerUrl, Message, MqttClient, TlsFiles  # noqa: E402

MEASUREMENT = "bare_reading"


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


def frame_lines(payload: bytes, gateway_id: str) -> list[str]:
    """Line protocol for the readings of one frame (no validation, no escaping: trusted input)."""
    readings: list[dict[str, Any]] = orjson.loads(payload[HEADER_BYTES:])["readings"]
    lines = []
    for r in readings:
        tags = f"{MEASUREMENT},clock={r['clock']},device={r['device_id']},gateway={gateway_id}"
        if r["lot_ids"]:
            tags += ",lots=" + "\\,".join(r["lot_ids"])
        if r["shipment_id"] is not None:
            tags += f",shipment={r['shipment_id']}"
        fields = ""
        for name in ("temperature_c", "humidity_pct", "shock_g", "battery_v", "anomaly_score"):
            if (value := r[name]) is not None:
                fields += f"{name}={value!r},"
        lines.append(f"{tags},site={r['site_id']} {fields}seq={r['seq']}i {r['t_device_ms']}")
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
    written = chunks = 0
    first = cpu_first = busy_first = 0.0
    async with aiohttp.ClientSession() as http:
        await client.connect()
        await client.subscribe(f"$share/{args.share_group}/ct/v1/gw/+/batch", qos=1)
        while written < args.expected:
            taken: list[Message] = [await client.messages.get()]
            if not first:
                first, cpu_first, busy_first = time.monotonic(), time.process_time(), core_busy_s(args.core)
            lines = frame_lines(taken[0].payload, taken[0].topic.split("/")[3])
            while len(lines) < args.chunk_points and not client.messages.empty():
                message = client.messages.get_nowait()
                taken.append(message)
                lines += frame_lines(message.payload, message.topic.split("/")[3])
            async with http.post(url, params=params, data="\n".join(lines).encode()) as response:
                if response.status != 204:
                    raise SystemExit(f"VictoriaMetrics answered {response.status}: {await response.text()}")
            for message in taken:
                message.ack()
            written += len(lines)
            chunks += 1
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
    parser.add_argument("--core", type=int, default=None, help="Pin this process to one CPU.")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    result = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
