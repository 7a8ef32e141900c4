"""The second gateway of the dashboard scenario: signed batches built directly, not by an agent.

A healthy reefer run through an agent produces no gap marker, no duplicate batch and no refused
batch; this gateway's cold room supplies one of each for the panels that show them: batch 1, batch 2
carrying a gap marker ("missing", five readings), batch 1 again (byte-identical: a duplicate) and
batch 2 with one byte changed (a bad signature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coldtrace.contract import Reading
from coldtrace.contract.batch import Batch, Marker, MarkerKind, frame_hash, sign_batch
from tests.cloud_ingest.builders import GatewaySim, series

GATEWAY = "gw-yard"
SITE = "wh-yard"
DEVICE = "room-yard-01"
FIRST_BATCH = 60
SECOND_BATCH = 55
#: Readings the two batches carry; the five between them are the gap.
READINGS = FIRST_BATCH + SECOND_BATCH
GAP = 5
_MINUTE = 60_000


@dataclass(frozen=True, slots=True)
class YardFrames:
    """The yard gateway's frames, in the order the scenario publishes them."""

    first: bytes
    second: bytes
    tampered: bytes
    """``second`` with one byte of its body changed: its signature no longer verifies."""


def _signed_with_markers(sim: GatewaySim, readings: list[Reading], markers: tuple[Marker, ...]) -> bytes:
    """The next frame of ``sim``'s chain, carrying gap markers (``GatewaySim.frame`` carries none)."""
    sim.seq += 1
    batch = Batch(
        batch_seq=sim.seq,
        created_ms=readings[-1].t_gateway_ms,
        gateway_id=sim.gateway_id,
        markers=markers,
        prev_hash=sim.prev,
        readings=tuple(readings),
        schema_version=1,
    )
    frame = sign_batch(batch, sim.key)
    sim.prev = frame_hash(frame)
    return frame


def yard_frames(sim: GatewaySim, start_ms: int) -> YardFrames:
    """A cold room's readings one minute apart from ``start_ms``, unbound to any shipment."""
    kw: dict[str, Any] = {"shipment_id": None, "lot_ids": (), "site_id": SITE, "step_ms": _MINUTE}
    first = list(series(DEVICE, [4.0 + i / 100 for i in range(FIRST_BATCH)], start_ms=start_ms, **kw))
    resume = FIRST_BATCH + GAP
    after_gap = list(
        series(DEVICE, [4.5] * SECOND_BATCH, start_ms=start_ms + resume * _MINUTE, first_seq=resume + 1, **kw)
    )
    gap = Marker(
        count=GAP,
        device_id=DEVICE,
        kind=MarkerKind.MISSING,
        seq_from=FIRST_BATCH + 1,
        seq_to=resume,
        t_from_ms=start_ms + FIRST_BATCH * _MINUTE,
        t_to_ms=start_ms + (resume - 1) * _MINUTE,
    )
    first_frame = sim.frame(first, created_ms=first[-1].t_gateway_ms)
    second_frame = _signed_with_markers(sim, after_gap, (gap,))
    # The body's last bytes are `...,"schema_version":1}`: change the 1, keep the length.
    tampered = second_frame[:-2] + bytes([second_frame[-2] ^ 0x01]) + second_frame[-1:]
    return YardFrames(first=first_frame, second=second_frame, tampered=tampered)
