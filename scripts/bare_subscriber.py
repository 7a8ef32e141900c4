"""The hold-latency benchmark's transport baseline: a bare subscriber noting when each message arrives.

    python scripts/bare_subscriber.py --broker mqtts://127.0.0.1:PORT --ca CA --cert CERT --key KEY \\
        --client-id svc-bare-1 --share-group bare --receive-maximum 128 --expected N \\
        --ready FILE --out FILE [--core C]

Subscribes like the cloud worker (a shared subscription to every gateway's batches, persistent
session, QoS 1, manual acknowledgement, the worker's MQTT 5 Receive Maximum, the same
``coldtrace.mqtt.MqttClient``) and acknowledges each message as soon as it has taken it: no parsing,
no verification, no storage. Touches ``--ready`` once subscribed; writes every message's topic and
monotonic receive time, in arrival order, to ``--out`` after ``--expected`` messages (or once none
has come for ``--idle-s`` after the first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from coldtrace.contract.topics import ALL_GATEWAY_BATCHES  # noqa: E402
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles  # noqa: E402


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Receive ``args.expected`` messages; returns what arrived when."""
    client = MqttClient(
        client_id=args.client_id, broker=BrokerUrl.parse(args.broker), clean_start=False,
        session_expiry_s=3600, manual_ack=True, receive_maximum=args.receive_maximum,
        tls=TlsFiles(ca_file=Path(args.ca), cert_file=Path(args.cert), key_file=Path(args.key)),
    )  # fmt: skip
    arrivals: list[tuple[str, float]] = []
    await client.connect()
    try:
        await client.subscribe(f"$share/{args.share_group}/{ALL_GATEWAY_BATCHES}", qos=1)
        await asyncio.to_thread(Path(args.ready).touch)
        while len(arrivals) < args.expected:
            try:
                async with asyncio.timeout(args.idle_s if arrivals else None):
                    message = await client.messages.get()
            except TimeoutError:
                break
            arrivals.append((message.topic, time.monotonic()))
            message.ack()
    finally:
        await client.disconnect()
    return {
        "arrivals": arrivals,
        "cpu_total_s": time.process_time(),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name in ("--broker", "--ca", "--cert", "--key", "--client-id", "--share-group", "--ready", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--expected", type=int, required=True, help="Messages to receive before exiting.")
    parser.add_argument("--receive-maximum", type=int, default=None)
    parser.add_argument("--idle-s", type=float, default=60.0, help="Give up this long after the last one.")
    parser.add_argument("--core", type=int, default=None, help="Pin this process to one CPU.")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    result = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
