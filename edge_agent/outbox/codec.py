"""Readings to and from their stored bytes: the canonical contract encoding.

The stored body of a reading is ``coldtrace.contract.canonical_bytes`` of it (the contract's direct
encoder: the model's fields written as they are, see ``coldtrace.contract.canonical.plain``).

On the way out the stored bytes are not decoded: they are the canonical encoding of a reading that
was validated when it was appended, so a batch splices them into its signed body as they are
(``coldtrace.contract.sign_batch_with_readings``). :func:`damaged` checks beforehand that they are
still what was written (CRC-32) and are filed under the right (device_id, seq).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

from coldtrace.contract import Reading, canonical_bytes
from edge_agent.outbox.batching import Row

#: The canonical contract bytes of a reading.
encode: Callable[[Reading], bytes] = canonical_bytes


def decode(body: bytes) -> Reading:
    """A stored reading back as a validated model (strict: types and ranges are checked).

    Raises pydantic's ValidationError for bytes that are not a valid reading. Batches do not decode
    what they send (see :func:`damaged`); this is for comparing a redelivery with what is stored.
    """
    return Reading.model_validate_json(body, strict=True)


def damaged(rows: Sequence[Row]) -> list[tuple[Row, str]]:
    """The rows that fail their integrity checks before being sent, each with the reason.

    A body must match its CRC-32 (unchanged since it was encoded from a validated reading) and carry
    its row's key, so that a body stored under another reading's key is not sent as that reading.
    """
    found: list[tuple[Row, str]] = []
    crc32 = zlib.crc32
    tags: dict[str, bytes] = {}  # a batch holds a few readings of each device
    for row in rows:
        body = row.body
        if crc32(body) != row.crc:
            found.append((row, "CRC-32 mismatch: the stored bytes changed"))
            continue
        # Canonical spellings: string values cannot hold a quote, and in sorted key order "seq" is
        # always followed by "shipment_id", so the comma rules out a longer number.
        if (tag := tags.get(row.device_id)) is None:
            tag = tags[row.device_id] = b'"device_id":"%s"' % row.device_id.encode()
        if tag not in body or b'"seq":%d,' % row.seq not in body:
            found.append((row, "the stored reading does not match its key"))
    return found
