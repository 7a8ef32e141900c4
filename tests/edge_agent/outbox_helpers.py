"""Shared helpers for the outbox tests and their crash-test child: readings, keys, frame reading."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldtrace.contract import (
    GENESIS_HASH,
    Batch,
    ClockQuality,
    Reading,
    SourceFormat,
    frame_hash,
    verify_frame,
)
from edge_agent.outbox import Outbox, PendingFrame, Priority

GATEWAY = "gw-test"
#: 2023-11-14T22:13:20Z: every test's clock starts here.
T0 = 1_700_000_000_000


def signer(seed: str = "outbox-tests") -> Ed25519PrivateKey:
    """A deterministic signing key, so a child process and its parent sign alike."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


def reading(
    device: str, seq: int, *, t_ms: int | None = None, temp: float | None = None, lots: int = 1
) -> Reading:
    """A valid reading of ``device`` number ``seq``; received ``t_ms`` (default T0 + seq seconds)."""
    t = T0 + seq * 1000 if t_ms is None else t_ms
    return Reading(
        bound=True,
        clock=ClockQuality.OK,
        device_id=device,
        lot_ids=tuple(f"LOT-{i:04d}" for i in range(lots)),
        seq=seq,
        shipment_id="SHP-0001",
        site_id="wh-1",
        source_format=SourceFormat.NATIVE,
        t_device_ms=t - 40,
        t_gateway_ms=t,
        temperature_c=temp if temp is not None else 4.0 + (seq % 17) / 8,
        humidity_pct=55.5,
    )


def rows(
    device: str, seqs: Iterable[int], priority: Priority = Priority.ROUTINE, **kw: int
) -> list[tuple[Reading, Priority]]:
    """``(reading, priority)`` pairs for ``append``."""
    return [(reading(device, s, **kw), priority) for s in seqs]


@dataclass
class Drained:
    """Everything a run of frames carried, after verifying signatures and the chain."""

    batches: list[Batch]

    @property
    def keys(self) -> list[tuple[str, int]]:
        """(device_id, seq) of every reading, in send order."""
        return [(r.device_id, r.seq) for b in self.batches for r in b.readings]


def verify_chain(
    frames: Iterable[bytes], *, key: Ed25519PrivateKey, first_prev: str | None = GENESIS_HASH
) -> Drained:
    """Verify each frame and that each links to the one before; the decoded batches.

    ``first_prev`` is what the first frame must link to (None: whatever it links to).
    """
    batches: list[Batch] = []
    prev = first_prev
    expected_seq: int | None = None
    for frame in frames:
        signed = verify_frame(frame, key.public_key())
        batch = signed.batch
        assert prev is None or batch.prev_hash == prev, (
            f"batch {batch.batch_seq} does not link to its predecessor"
        )
        if expected_seq is not None:
            assert batch.batch_seq == expected_seq, (
                f"batch_seq gap: {batch.batch_seq} after {expected_seq - 1}"
            )
        prev = frame_hash(frame)
        expected_seq = batch.batch_seq + 1
        batches.append(batch)
    return Drained(batches)


def drain(
    outbox: Outbox, *, key: Ed25519PrivateKey, max_readings: int = 500, live_after_ms: int | None = None
) -> list[PendingFrame]:
    """Form batches until nothing is waiting; the frames formed (left pending)."""
    formed: list[PendingFrame] = []
    while frame := outbox.form_batch(
        signer=key, max_readings=max_readings, now_ms=T0, live_after_ms=live_after_ms
    ):
        formed.append(frame)
    return formed


def waiting(outbox: Outbox) -> list[tuple[str, int]]:
    """(device_id, seq) of the readings waiting in an open outbox (white-box read)."""
    conn = outbox._conn
    assert conn is not None
    return [(d, s) for d, s in conn.execute("SELECT device_id, seq FROM reading ORDER BY device_id, seq")]
