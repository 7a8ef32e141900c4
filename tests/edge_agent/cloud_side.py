"""The cloud side of agent tests: trust in the gateway, and a subscriber that verifies every batch.

A batch is believed the way the cloud believes it: the gateway's certificate verifies against the
CA and names the gateway (CN and SAN URI); the broker ACL ties the batch topic to that certificate,
so the topic must name the same gateway, and so must the batch; the frame's Ed25519 signature must
verify with the batch-signing key enrolled together with that certificate (its key id is the one
shown to the admin at enrollment); and the frames must form one unbroken hash chain from genesis.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import GENESIS_HASH, Marker, Reading, SignedBatch, key_id_of, verify_frame
from coldtrace.contract.topics import gateway_batches
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles, connect_with_backoff
from tests.edge_agent.conftest import EnrolledGateway
from tests.harness.mosquitto import Mosquitto

Identity = Callable[[Role, str], IssuedIdentity]
Key = tuple[str, int]


class GatewayTrust:
    """What the cloud knows of one gateway: its verified certificate and its enrolled signing key."""

    def __init__(self, gateway: EnrolledGateway, *, ca_bundle: Path) -> None:
        chain = x509.load_pem_x509_certificates(gateway.files.chain.read_bytes())
        bundle = x509.load_pem_x509_certificates(ca_bundle.read_bytes())
        roots = [cert for cert in bundle if cert.subject == cert.issuer]
        verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
        verifier.verify(chain[0], chain[1:])  # raises unless the CA issued it and it is a client cert
        names = chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.gateway_id = str(names[0].value)
        uris = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if f"urn:coldtrace:gateway:{self.gateway_id}" not in uris.get_values_for_type(
            x509.UniformResourceIdentifier
        ):
            raise AssertionError(f"certificate of {self.gateway_id} is not a gateway certificate")
        key = load_pem_public_key(gateway.files.signing_pub.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError("the enrolled signing key is not Ed25519")
        if key_id_of(key).hex() != gateway.keys.signing_key_id:
            raise AssertionError("signing.pub is not the key enrolled with the certificate")
        self.public_key = key
        self.topic = gateway_batches(self.gateway_id)

    def verify(self, topic: str, frame: bytes) -> SignedBatch:
        """The batch in ``frame``; raises when any of the checks in the module docstring fails."""
        if topic != self.topic:
            raise AssertionError(f"batch on {topic}, the certificate's topic is {self.topic}")
        signed = verify_frame(frame, self.public_key)  # ContractError on any change to any byte
        if signed.batch.gateway_id != self.gateway_id:
            raise AssertionError(f"batch names gateway {signed.batch.gateway_id}, not {self.gateway_id}")
        return signed


class CloudCollector:
    """A persistent-session subscriber to the gateway's batches that verifies and keeps every one.

    ``batches`` holds each batch sequence once; a batch received again must be byte-identical (a
    resend). ``where`` maps each (device, seq) to the batch that carried it; a reading carried by two
    different batches is counted in ``duplicates``.
    """

    def __init__(self, broker: Mosquitto, pki: Pki, identity: Identity, trust: GatewayTrust) -> None:
        ingest = identity(Role.SERVICE, "svc-ingest")
        self.client = MqttClient(
            client_id=f"svc-ingest-{secrets.token_hex(4)}",
            broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
            tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=ingest.cert_path, key_file=ingest.key_path),
            clean_start=False,
            session_expiry_s=3600,
        )
        self.trust = trust
        self.batches: dict[int, SignedBatch] = {}
        self.where: dict[Key, int] = {}
        self.readings: dict[Key, Reading] = {}
        self.duplicates: list[Key] = []
        self.resends = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and subscribe; from then on batches are collected in the background."""
        await connect_with_backoff(self.client, initial_s=0.1, max_s=1.0)
        await self.client.subscribe(self.trust.topic, qos=1)
        self._task = asyncio.create_task(self._collect(), name="cloud-collector")

    async def stop(self) -> None:
        """Stop collecting and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.disconnect()

    async def until(self, done: Callable[[], bool], timeout_s: float, describe: Callable[[], str]) -> None:
        """Wait until ``done()`` holds after some batch arrived; AssertionError with ``describe()`` if not."""
        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
                    if self._task is not None and self._task.done():
                        self._task.result()  # a verification failure ends the collector: raise it here
        except TimeoutError:
            raise AssertionError(f"not complete after {timeout_s:g} s: {describe()}") from None

    async def _collect(self) -> None:
        while True:
            getter = asyncio.ensure_future(self.client.messages.get())
            lost = asyncio.ensure_future(self.client.disconnected.wait())
            await asyncio.wait([getter, lost], return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if not getter.done():
                getter.cancel()
                # The broker went away; the persistent session keeps what arrives meanwhile.
                await connect_with_backoff(self.client, initial_s=0.1, max_s=1.0)
                continue
            message = getter.result()
            try:
                self._take(message.topic, message.payload)
            finally:
                self._changed.set()

    def _take(self, topic: str, frame: bytes) -> None:
        signed = self.trust.verify(topic, frame)
        seq = signed.batch.batch_seq
        known = self.batches.get(seq)
        if known is not None:
            if known.frame != frame:
                raise AssertionError(f"batch {seq} received again with different bytes")
            self.resends += 1
            return
        self.batches[seq] = signed
        for reading in signed.batch.readings:
            key = (reading.device_id, reading.seq)
            if key in self.where:
                self.duplicates.append(key)
            self.where[key] = seq
            self.readings[key] = reading

    # -- after the run -----------------------------------------------------------------------------
    def check_chain(self) -> None:
        """Batches 1..N, none missing, each linking to the hash of the frame before (genesis first)."""
        seqs = sorted(self.batches)
        assert seqs == list(range(1, len(seqs) + 1)), f"batch sequence has gaps: {_gaps(seqs)}"
        previous = GENESIS_HASH
        for seq in seqs:
            assert self.batches[seq].batch.prev_hash == previous, f"batch {seq} breaks the chain"
            previous = self.batches[seq].frame_hash

    def markers(self) -> list[Marker]:
        """Every gap marker, in chain order."""
        return [m for seq in sorted(self.batches) for m in self.batches[seq].batch.markers]

    def per_device(self, *, skip: frozenset[Key] = frozenset()) -> dict[str, list[int]]:
        """Each device's seqs in the order the chain carried them (batch order, then within a batch)."""
        order: dict[str, list[int]] = {}
        for seq in sorted(self.batches):
            for r in self.batches[seq].batch.readings:
                if (r.device_id, r.seq) not in skip:
                    order.setdefault(r.device_id, []).append(r.seq)
        return order


def longest_decreasing(seqs: list[int]) -> int:
    """Length of the longest strictly decreasing subsequence (1 for an ascending list, 0 for none).

    A list splits into k ascending sequences exactly when this is at most k (Dilworth), so 2 means
    "the merge of two ascending streams".
    """
    tails: list[int] = []  # tails[i]: the largest last element of a decreasing run of length i + 1
    for value in seqs:
        lo, hi = 0, len(tails)
        while lo < hi:
            mid = (lo + hi) // 2
            if tails[mid] > value:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(tails):
            tails.append(value)
        else:
            tails[lo] = value
    return len(tails)


def _gaps(seqs: list[int]) -> list[int]:
    have = set(seqs)
    return [s for s in range(1, max(seqs, default=0) + 1) if s not in have][:10]
