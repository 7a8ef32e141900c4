"""The simulated fleet of the agent tests: the issue's scale, its load generator and its ground truth."""

from __future__ import annotations

from collections.abc import Callable

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.mqtt import BrokerUrl, TlsFiles
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import Fate, PublishKind, PublishTruth, SampleTruth, TruthWriter
from tests.harness.mosquitto import Mosquitto

Identity = Callable[[Role, str], IssuedIdentity]
Key = tuple[str, int]
START_MS = 1_795_000_000_000
DEVICES = 200
#: 501 samples per device at the scenario's 10 s interval: 100,200 readings, a few malformed on purpose.
SIM_SECONDS = 5010.0


def loadgen_config(gateway: Mosquitto, pki: Pki, identity: Identity, *, speed: float) -> RunConfig:
    """The simulator publishing for every device over a few mutual-TLS connections (``sim-loadgen``)."""
    loadgen = identity(Role.SERVICE, "sim-loadgen")
    return RunConfig(
        brokers=(BrokerUrl(host=gateway.host, port=gateway.port, tls=True),), ca_file=pki.ca_bundle_path,
        mode=ConnectionMode.MULTIPLEXED, speed=speed,
        loadgen=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=loadgen.cert_path, key_file=loadgen.key_path),
    )  # fmt: skip


def fleet(seed: int, writer: TruthWriter) -> Simulation:
    """The ``mixed-fleet`` scenario (vendor formats A/B/C, transport faults) at the issue's scale."""
    scenario = builtin_scenarios()["mixed-fleet"].model_copy(update={"duration_s": SIM_SECONDS})
    return Simulation(scenario, devices=DEVICES, seed=seed, start_ms=START_MS, truth=writer)


def sent(writer: TruthWriter) -> dict[Key, SampleTruth]:
    """Ground truth: every sample a device published in a well-formed message."""
    return {
        (r.device_id, r.seq): r for r in writer.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT
    }


def published_out_of_order(writer: TruthWriter) -> frozenset[Key]:
    """Samples the device itself published after a later one (the simulator's out-of-order fault).

    The agent cannot put such a reading back in front of readings that already left, so it is
    exempt from the order check (it must still arrive, exactly once).
    """
    return frozenset(
        (r.device_id, seq)
        for r in writer.records
        if isinstance(r, PublishTruth) and r.kind is PublishKind.OUT_OF_ORDER
        for seq in r.seqs
    )
