"""Tampered, reordered and replayed batches fail verification (issue #5).

``verify_frame`` checks one frame: the gateway's Ed25519 signature over the exact bytes received,
then a strict, canonical decode. The hash chain links frames: batch 1 carries ``GENESIS_HASH``
(the ``Batch`` model refuses anything else) and every later batch carries ``batch_seq`` one above
its predecessor and ``prev_hash`` = ``frame_hash`` of the predecessor's whole frame. ``Receiver``
below applies exactly those contract rules, as the cloud does per gateway, so these tests show what
each rule catches: a changed byte fails the signature; a batch rewritten and signed again with the
gateway's own key verifies alone but no longer links to its successor; a reordered batch does not
link to what came before it; a replayed batch is either the very frame already accepted (a
duplicate, taken once) or a different frame under an accepted sequence number (refused).
"""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldtrace.contract import (
    GENESIS_HASH,
    Batch,
    ClockQuality,
    ContractError,
    Reading,
    RejectCode,
    SignedBatch,
    SourceFormat,
    frame_hash,
    sign_batch,
    verify_frame,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
T0 = 1_795_000_000_000


class ChainBroken(Exception):
    """A frame that verifies on its own but does not continue the gateway's chain."""


class Receiver:
    """One gateway's chain as a receiver follows it, by the contract's rules only."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.accepted: dict[int, str] = {}  # batch_seq -> frame_hash
        self.batches: list[SignedBatch] = []

    @property
    def head(self) -> tuple[int, str]:
        """(batch_seq, frame_hash) of the last batch accepted; (0, genesis) before the first."""
        if not self.batches:
            return 0, GENESIS_HASH
        return self.batches[-1].batch.batch_seq, self.batches[-1].frame_hash

    def receive(self, frame: bytes) -> bool:
        """True for a new batch; False for a byte-identical copy of one accepted; raises otherwise."""
        signed = verify_frame(frame, self.key)  # ContractError: not this gateway's, or altered
        seq = signed.batch.batch_seq
        if seq in self.accepted:
            if self.accepted[seq] == signed.frame_hash:
                return False  # the same frame again (a QoS 1 resend or a replay): nothing new
            raise ChainBroken(f"batch {seq} replayed with other content")
        head_seq, head_hash = self.head
        if seq != head_seq + 1:
            raise ChainBroken(f"batch {seq} after batch {head_seq}")
        if signed.batch.prev_hash != head_hash:
            raise ChainBroken(f"batch {seq} does not link to batch {head_seq}")
        self.accepted[seq] = signed.frame_hash
        self.batches.append(signed)
        return True


def _reading(seq: int, temperature: float = 4.0) -> Reading:
    return Reading(
        bound=False, clock=ClockQuality.OK, device_id="d-1", seq=seq, site_id="wh-1",
        source_format=SourceFormat.NATIVE, t_device_ms=T0 + seq, t_gateway_ms=T0 + seq,
        temperature_c=temperature,
    )  # fmt: skip


def _batch(seq: int, prev_hash: str, temperature: float = 4.0) -> Batch:
    return Batch(
        batch_seq=seq, created_ms=T0 + seq, gateway_id="gw-1", prev_hash=prev_hash,
        readings=(_reading(seq, temperature),), schema_version=1,
    )  # fmt: skip


def _chain(n: int, key: Ed25519PrivateKey = KEY) -> list[bytes]:
    frames: list[bytes] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        frames.append(sign_batch(_batch(seq, prev), key))
        prev = frame_hash(frames[-1])
    return frames


def test_the_chain_in_order_is_accepted_and_a_resend_is_taken_once() -> None:
    receiver = Receiver(KEY.public_key())
    frames = _chain(4)
    assert [receiver.receive(f) for f in frames] == [True] * 4
    assert receiver.receive(frames[-1]) is False  # resent after a restart: byte-identical, not new
    assert [b.batch.batch_seq for b in receiver.batches] == [1, 2, 3, 4]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("offset", [0, 2, 9, 60, 120, -2, -1])
def test_a_changed_byte_anywhere_in_the_chain_fails_verification(index: int, offset: int) -> None:
    # Offsets: magic, version, key id, signature, body start, body end.
    frames = _chain(4)
    tampered = bytearray(frames[index])
    tampered[offset] ^= 0x01
    receiver = Receiver(KEY.public_key())
    for frame in frames[:index]:
        receiver.receive(frame)
    with pytest.raises(ContractError) as caught:
        receiver.receive(bytes(tampered))
    assert caught.value.code in {
        RejectCode.BAD_SIGNATURE,
        RejectCode.BAD_FRAME,
        RejectCode.UNSUPPORTED_SCHEMA,
    }
    assert len(receiver.batches) == index


def test_a_batch_rewritten_and_signed_again_no_longer_links_to_its_successor() -> None:
    frames = _chain(4)
    # Whoever holds the signing key (or a bug) rewrites batch 2 after the fact: it verifies alone ...
    forged = sign_batch(_batch(2, frame_hash(frames[0]), temperature=4.5), KEY)
    assert verify_frame(forged, KEY.public_key()).batch.batch_seq == 2
    receiver = Receiver(KEY.public_key())
    receiver.receive(frames[0])
    receiver.receive(forged)
    # ... but batch 3 carries the hash of the original batch 2, so the rewrite shows.
    with pytest.raises(ChainBroken, match="does not link"):
        receiver.receive(frames[2])


def test_a_batch_signed_with_another_key_fails_verification() -> None:
    stranger = _chain(2, key=OTHER_KEY)
    receiver = Receiver(KEY.public_key())
    receiver.receive(_chain(1)[0])
    with pytest.raises(ContractError) as caught:
        receiver.receive(stranger[1])
    assert caught.value.code is RejectCode.BAD_SIGNATURE


@pytest.mark.parametrize("order", [p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)])
def test_every_reordering_of_a_chain_is_refused_at_the_first_misplaced_batch(order: tuple[int, ...]) -> None:
    frames = _chain(4)
    receiver = Receiver(KEY.public_key())
    first_wrong = next(i for i, position in enumerate(order) if position != i)
    for i in order[:first_wrong]:
        assert receiver.receive(frames[i])
    with pytest.raises(ChainBroken):
        receiver.receive(frames[order[first_wrong]])  # verify_frame alone would take it
    assert verify_frame(frames[order[first_wrong]], KEY.public_key())
    assert len(receiver.batches) == first_wrong


def test_a_replayed_batch_is_never_taken_as_new() -> None:
    frames = _chain(4)
    receiver = Receiver(KEY.public_key())
    for frame in frames:
        receiver.receive(frame)
    # The very frame again, later: recognised, nothing new is taken.
    assert receiver.receive(frames[1]) is False
    assert [b.batch.batch_seq for b in receiver.batches] == [1, 2, 3, 4]
    # Batch 2 again with other content, correctly signed and linked to batch 1: refused.
    forged = sign_batch(_batch(2, frame_hash(frames[0]), temperature=9.0), KEY)
    with pytest.raises(ChainBroken, match="replayed"):
        receiver.receive(forged)


def test_a_replay_of_an_old_chain_after_a_new_head_is_refused() -> None:
    # A gateway whose outbox was wiped starts a second chain; its batch 1 must not pass as new later,
    # and the old chain's batch 3 cannot follow the new chain's batch 2.
    old = _chain(3)
    new_first = sign_batch(_batch(1, GENESIS_HASH, temperature=5.0), KEY)
    new_second = sign_batch(_batch(2, frame_hash(new_first)), KEY)
    receiver = Receiver(KEY.public_key())
    receiver.receive(new_first)
    receiver.receive(new_second)
    with pytest.raises(ChainBroken, match="replayed"):
        receiver.receive(old[0])
    with pytest.raises(ChainBroken, match="does not link"):
        receiver.receive(old[2])
