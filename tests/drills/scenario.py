"""The drills' fleet and what the simulator's ground truth says must come out of the stack.

One hour of simulated time on two gateways, ambient 35 °C, 24 devices by default:

- half are reefers (vaccines, 2-8 °C); a quarter of them lose their compressor at 0:05 and warm
  past 8 °C about half an hour later: their shipments must be held;
- a quarter are cold rooms (fresh produce, 0-4 °C, vendor B binary, three samples a message); half of
  them have their door open from 0:05 for 40 minutes: their lots must be held;
- a quarter are pallet tags (vaccines, vendor C text) that stay in range.

A few transport faults run all along - corrupted payloads (the agents refuse them: every refusal
must match one the simulator made) and duplicate publications (the agents drop them) - and a few
sensor spikes (isolated: flagged, never held). Replays are left out: an old payload sent again much
later is, to a gateway, a device whose clock jumped, which only the clock-jump drill wants.

The simulated hour is placed so that it ends about when the fleet finishes, and runs at ``speed``
times real time, so device time, gateway receive time and wall-clock fault injection stay in one
range. The simulator is deterministic: :func:`dry_run` plays the same seed without a network, so a
drill can aim its fault at a moment the ground truth makes interesting (an excursion, say) before the
real run starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud_ingest.settings import RuleSettings
from coldtrace.demo.scenario import GroundTruth, ground_truth
from firmware_sim.fleet import Binding, Simulation
from firmware_sim.scenario import Scenario
from firmware_sim.truth import EventTruth, Fate, PublishKind, PublishTruth, SampleTruth, TruthWriter

DURATION_S = 3600.0
SAMPLE_INTERVAL_S = 20.0
INCIDENT_AT_S = 300.0
GATEWAYS = 2
#: Sites of gateway 0 and 1 (as registered in the cloud and named in their manifests).
SITES = ("wh-hamburg", "wh-rotterdam")

Key = tuple[str, int]
"""(device id, sequence number): a reading's identity, end to end."""


def drill_scenario(*, events: Iterable[Mapping[str, Any]] = (), duration_s: float = DURATION_S) -> Scenario:
    """The drills' scenario (see the module docstring), with any extra ``events`` a drill needs."""
    return Scenario.model_validate(
        {
            "name": "drill-mix",
            "description": "Reefer failure and door left open on two gateways, with transport faults.",
            "duration_s": duration_s,
            "sample_interval_s": SAMPLE_INTERVAL_S,
            "gateways": GATEWAYS,
            "ambient_mean_c": 35.0,
            "fleet": [
                {"share": 0.5, "kind": "reefer", "profile": "vaccines", "truck": True},
                {"share": 0.25, "kind": "cold_room", "format": "vendor-b-binary", "profile": "fresh-produce",
                 "samples_per_message": 3},
                {"share": 0.25, "kind": "pallet", "format": "vendor-c-text", "profile": "vaccines"},
            ],
            "faults": {"malformed": 0.003, "duplicate": 0.003, "spike": 0.001},
            "events": [
                {"kind": "compressor_failure", "at_s": INCIDENT_AT_S, "share": 0.25, "kinds": ["reefer"]},
                {"kind": "door_open", "at_s": INCIDENT_AT_S, "duration_s": 2400.0, "share": 0.5,
                 "kinds": ["cold_room"]},
                *events,
            ],
        }
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """What a drill runs: scenario, size, seed, pace, and where the simulated hour sits in real time."""

    scenario: Scenario
    seed: int
    devices: int = 24
    speed: float = 300.0
    """Simulated seconds per wall-clock second (an hour in 12 s)."""
    start_ms: int = 0

    @classmethod
    def placed(cls, scenario: Scenario, *, seed: int, devices: int = 24, speed: float = 300.0) -> FleetPlan:
        """A plan whose simulated time ends about now (device clocks read the past, never the future)."""
        now_ms = time.time_ns() // 1_000_000
        start_ms = (now_ms - round(scenario.duration_s * 1000)) // 60_000 * 60_000
        return cls(scenario, seed, devices, speed, start_ms)

    def simulation(self, truth: TruthWriter) -> Simulation:
        """A new run of the plan writing into ``truth`` (same seed: the same truth, byte for byte)."""
        return Simulation(
            self.scenario, devices=self.devices, seed=self.seed, start_ms=self.start_ms, truth=truth
        )

    @property
    def wall_s(self) -> float:
        """How long the fleet takes to publish the scenario at ``speed``."""
        return self.scenario.duration_s / self.speed


@dataclass(frozen=True, slots=True)
class Truth:
    """The simulator's ground truth of one run, and what follows from it for the cloud."""

    records: tuple[object, ...]
    bindings: tuple[Binding, ...]
    start_ms: int

    @classmethod
    def of(cls, writer: TruthWriter, simulation: Simulation) -> Truth:
        """The records ``writer`` kept for ``simulation``."""
        return cls(tuple(writer.records), tuple(simulation.bindings()), simulation.start_ms)

    @property
    def samples(self) -> list[SampleTruth]:
        """Every sample the devices took."""
        return [r for r in self.records if isinstance(r, SampleTruth)]

    def sent(self) -> dict[Key, SampleTruth]:
        """Samples published in well-formed messages, by key: each must be stored exactly once."""
        return {(s.device_id, s.seq): s for s in self.samples if s.fate is Fate.SENT}

    def malformed(self) -> list[PublishTruth]:
        """Corrupted publications: each must be refused by the gateway, with a reason."""
        return [r for r in self.records if isinstance(r, PublishTruth) and r.kind is PublishKind.MALFORMED]

    def events(self, kind: str) -> list[EventTruth]:
        """The scenario events of ``kind`` as applied."""
        return [r for r in self.records if isinstance(r, EventTruth) and r.kind == kind]

    def gateway_of(self) -> dict[str, str]:
        """Device id → the gateway it reports through."""
        return {b.device_id: b.gateway_id for b in self.bindings}

    def profile_of(self) -> dict[str, str]:
        """Device id → its product profile."""
        return {b.device_id: b.profile for b in self.bindings}

    def expected(self, seen: Iterable[Key] | None = None) -> GroundTruth:
        """What the cloud must conclude from the readings in ``seen`` (default: every sent one).

        A drill in which the cloud may rightly not see some readings (thinned at a full gateway,
        refused from a revoked one) asks what the truth implies for those it did see.
        """
        keep = None if seen is None else set(seen)
        records = [
            r for r in self.records
            if keep is None or not isinstance(r, SampleTruth) or (r.device_id, r.seq) in keep
        ]  # fmt: skip
        return ground_truth(records, self.bindings, RuleSettings().delay_s)

    def excursion_starts(self) -> dict[str, int]:
        """Device → simulated time (ms) its TRUE temperature first left its profile's range."""
        first: dict[str, int] = {}
        for s in sorted(self.samples, key=lambda s: s.t_sim_ms):
            if s.excursion:
                first.setdefault(s.device_id, s.t_sim_ms)
        return first


def dry_run(plan: FleetPlan) -> Truth:
    """The plan's ground truth without a network (for aiming faults before the real run)."""
    writer = TruthWriter(keep=True)
    simulation = plan.simulation(writer)
    for _ in simulation.emissions():
        pass
    return Truth.of(writer, simulation)
