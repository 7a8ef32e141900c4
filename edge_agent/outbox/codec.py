"""Readings to and from their stored bytes: the canonical contract encoding.

The stored body of a reading is ``coldtrace.contract.canonical_bytes`` of it (the contract's direct
encoder: the model's fields written as they are, see ``coldtrace.contract.canonical.plain``).

On the way out the stored bytes are not decoded: they are the canonical encoding of a reading that
was validated when it was appended, so a batch splices them into its signed body as they are
(``coldtrace.contract.sign_batch_with_readings``). :func:`damaged` checks beforehand that they are
still what was written and are filed under the right (device_id, seq): the stored CRC-32 of a body
starts from a value derived from its key (:func:`stored_crc`), so one check covers both.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

from coldtrace.contract import Reading, canonical_bytes
from edge_agent.outbox.batching import Row

#: The canonical contract bytes of a reading.
encode: Callable[[Reading], bytes] = canonical_bytes
#: Odd, so ``seq * SEQ_MIX`` is one-to-one modulo 2**32: a device's readings get distinct CRC seeds.
SEQ_MIX = 0x9E3779B1


def keyed_crcs() -> Callable[[bytes, str, int], int]:
    """:func:`stored_crc` for many readings: each device's part of the seed is computed once."""
    seeds: dict[str, int] = {}
    crc32 = zlib.crc32

    def crc(body: bytes, device_id: str, seq: int) -> int:
        if (seed := seeds.get(device_id)) is None:
            seed = seeds[device_id] = crc32(device_id.encode())
        return crc32(body, (seed ^ seq * SEQ_MIX) & 0xFFFFFFFF)

    return crc


def stored_crc(body: bytes, device_id: str, seq: int) -> int:
    """The CRC-32 stored with a reading: of ``body``, started from a seed derived from its key.

    A body filed under another key fails its check as surely as a changed one: for the same bytes,
    different seeds always give different CRCs.
    """
    return keyed_crcs()(body, device_id, seq)


def decode(body: bytes) -> Reading:
    """A stored reading back as a validated model (strict: types and ranges are checked).

    Raises pydantic's ValidationError for bytes that are not a valid reading. Batches do not decode
    what they send (see :func:`damaged`); this is for comparing a redelivery with what is stored.
    """
    return Reading.model_validate_json(body, strict=True)


def damaged(rows: Sequence[Row]) -> list[tuple[Row, str]]:
    """The rows that fail their integrity check before being sent, each with the reason.

    A body must match the CRC-32 stored with it, which is seeded with the row's key (see
    :func:`stored_crc`): unchanged since it was encoded from a validated reading, and filed under
    that reading's own key.
    """
    crc = keyed_crcs()  # a batch holds a few readings of each device
    return [(row, _diagnosis(row)) for row in rows if crc(row.body, row.device_id, row.seq) != row.crc]


def carries_key(body: bytes, device_id: str, seq: int) -> bool:
    """Whether canonical reading bytes carry this device_id and seq."""
    # Canonical spellings: string values cannot hold a quote, and in sorted key order "seq" is
    # always followed by "shipment_id", so the comma rules out a longer number.
    return b'"device_id":"%s"' % device_id.encode() in body and b'"seq":%d,' % seq in body


def _diagnosis(row: Row) -> str:
    """Why a row failed its check (rare: the cost of telling the two cases apart is paid only here)."""
    if not carries_key(row.body, row.device_id, row.seq):
        return "the stored reading does not match its key"
    return "CRC-32 mismatch: the stored bytes changed"
