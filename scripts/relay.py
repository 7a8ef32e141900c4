"""The bare relay used as the agent benchmark's baseline: subscribe QoS 1, republish QoS 1, no processing.

Acknowledges each message to the source broker only after the destination broker's PUBACK, like the
agent does after its durable commit. Runs until SIGTERM. ``--client native`` relays with
:mod:`coldtrace.mqtt_native` on both sides (the agent reads devices with it), ``paho`` (default) with
paho-mqtt on both.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coldtrace.mqtt import BrokerUrl, Message, MqttClient, TlsFiles  # noqa: E402
from coldtrace.mqtt_native import NativeMqttClient  # noqa: E402


async def main(
    *, source: str, target: str, ca: str, cert: str, key: str, chain: str, gw_key: str, native: bool
) -> None:
    """Relay every device message to the gateway's batch topic."""
    client = NativeMqttClient if native else MqttClient
    src = client(
        client_id="agent-gw-0", broker=BrokerUrl.parse(source), clean_start=False, session_expiry_s=3600,
        tls=TlsFiles(ca_file=Path(ca), cert_file=Path(cert), key_file=Path(key)), manual_ack=True,
        receive_maximum=2048,  # as the agent's ingest
    )  # fmt: skip
    dst = client(
        client_id="gw-0", broker=BrokerUrl.parse(target),
        tls=TlsFiles(ca_file=Path(ca), cert_file=Path(chain), key_file=Path(gw_key)),
    )  # fmt: skip
    await dst.connect()
    await src.connect()
    await src.subscribe("ct/v1/dev/+/up", qos=1)
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    pending: set[asyncio.Task[None]] = set()

    async def forward(message: Message) -> None:
        await dst.publish("ct/v1/gw/gw-0/batch", message.payload, qos=1)
        message.ack()

    while True:
        message = await src.messages.get()
        job = asyncio.create_task(forward(message))
        pending.add(job)
        job.add_done_callback(pending.discard)


if __name__ == "__main__":
    source, target, ca, cert, key, chain, gw_key = sys.argv[1:8]
    native = sys.argv[8:] == ["--client", "native"]
    asyncio.run(
        main(
            source=source, target=target, ca=ca, cert=cert, key=key, chain=chain, gw_key=gw_key, native=native
        )
    )
