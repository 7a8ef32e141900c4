"""The demo's scenario mix, the manifests that bind its devices, and what the ground truth expects.

Two simulated hours on two gateways, ambient 28 °C:

- **reefer failure**: a quarter of the reefers (vaccines, 2-8 °C) lose their compressor at 0:20 and
  warm toward ambient: their shipments must be held.
- **door left open**: half of the cold rooms (fresh produce, 0-4 °C) have their door open for 45 min
  from 0:20: their lots must be held.
- **glitch storm**: from 0:20 for 30 min the pallet tags' sensors fail twenty times as often (spikes,
  stuck values, wrong units, dropouts) while the product stays in range: nothing may be held.
- **uplink partition**: gateway 0 loses its uplink for 30 simulated minutes from 0:40; its agent
  buffers, raises local alerts, and drains in order when the link is back.

Sensor drift is left out of the storm on purpose: a drift that carries a reading out of range for longer
than the profile's delay is indistinguishable from a real excursion, and holding on it is right. A few
transport faults (duplicates, reordering, replays, corrupted payloads) run all along, so the summary has
rejects and duplicates to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coldtrace.contract.manifest import Binding as ManifestBinding
from coldtrace.contract.manifest import DeviceEntry, Manifest
from coldtrace.profiles import ProfileName
from firmware_sim.fleet import Binding, Simulation
from firmware_sim.scenario import Scenario
from firmware_sim.truth import EventTruth, Fate, SampleTruth

DURATION_S = 7200.0
INCIDENT_AT_S = 1200.0
PARTITION_AT_S = 2400.0
PARTITION_S = 1800.0
PARTITIONED_GATEWAY = 0
SITES = ("wh-hamburg", "wh-rotterdam")


def demo_scenario() -> Scenario:
    """The scenario mix (validated like a scenario file)."""
    return Scenario.model_validate(
        {
            "name": "demo-mix",
            "description": "Reefer failure, door left open, glitch storm and an uplink partition at once.",
            "duration_s": DURATION_S,
            "gateways": len(SITES),
            "ambient_mean_c": 28.0,
            "fleet": [
                {"share": 0.5, "kind": "reefer", "profile": "vaccines", "truck": True},
                {"share": 0.25, "kind": "cold_room", "format": "vendor-b-binary", "profile": "fresh-produce"},
                {"share": 0.25, "kind": "pallet", "format": "vendor-c-text", "profile": "vaccines"},
            ],
            "faults": {
                "spike": 0.002, "stuck": 0.0005, "dropout": 0.001, "wrong_units": 0.0005,
                "duplicate": 0.001, "out_of_order": 0.0005, "replay": 0.0002, "malformed": 0.0005,
            },
            "events": [
                {"kind": "compressor_failure", "at_s": INCIDENT_AT_S, "share": 0.25, "kinds": ["reefer"]},
                {"kind": "door_open", "at_s": INCIDENT_AT_S, "duration_s": 2700.0, "share": 0.5,
                 "kinds": ["cold_room"]},
                {"kind": "glitch_storm", "at_s": INCIDENT_AT_S, "duration_s": 1800.0, "multiplier": 20.0,
                 "kinds": ["pallet"]},
                {"kind": "uplink_partition", "at_s": PARTITION_AT_S, "duration_s": PARTITION_S,
                 "gateway": PARTITIONED_GATEWAY},
            ],
        }
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Incident:
    """One scripted incident of the mix and whether it must end in a hold."""

    event_kind: str
    title: str
    must_hold: bool


INCIDENTS: tuple[Incident, ...] = (
    Incident("compressor_failure", "reefer failure", must_hold=True),
    Incident("door_open", "door left open", must_hold=True),
    Incident("glitch_storm", "glitch storm", must_hold=False),
)

Subject = tuple[str, str]
"""(``shipment`` or ``lot``, id): what a hold is placed on."""


def subjects_of(binding: Binding) -> list[Subject]:
    """What a hold caused by this device lands on: its shipment, or its lots when it has none."""
    if binding.shipment_id is not None:
        return [("shipment", binding.shipment_id)]
    return [("lot", lot) for lot in binding.lot_ids]


def manifest_entry(b: Binding) -> DeviceEntry:
    """A simulated device's manifest entry: bound to its shipment and lots from t = 0."""
    binding = ManifestBinding(
        lot_ids=tuple(sorted(b.lot_ids)), profile=ProfileName(b.profile), shipment_id=b.shipment_id,
        valid_from_ms=0,
    )  # fmt: skip
    return DeviceEntry(device_id=b.device_id, bindings=(binding,))


def manifests(simulation: Simulation, *, issued_ms: int) -> dict[str, Manifest]:
    """Version 1 of each gateway's manifest: every device bound to its shipment and lots from t = 0."""
    by_gateway: dict[str, list[DeviceEntry]] = {}
    for b in simulation.bindings():
        by_gateway.setdefault(b.gateway_id, []).append(manifest_entry(b))
    return {
        gateway: Manifest(
            devices=tuple(entries),
            gateway_id=gateway,
            issued_ms=issued_ms,
            site_id=SITES[int(gateway.rsplit("-", 1)[1])],
            version=1,
        )
        for gateway, entries in sorted(by_gateway.items())
    }


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What the simulator says happened, from its ground-truth records."""

    samples_sent: int
    """Samples published in well-formed messages: each must be stored exactly once."""
    samples_malformed: int
    incident_devices: Mapping[str, tuple[str, ...]]
    """Event kind → the devices it hit."""
    excursion_subjects: frozenset[Subject]
    """Subjects with a device whose TRUE temperature stayed out of range at least the profile's delay."""


def ground_truth(
    records: Iterable[object], bindings: Iterable[Binding], delays_s: Mapping[ProfileName, float]
) -> GroundTruth:
    """Evaluate the ground truth: what must be stored, and which subjects truly need a hold."""
    by_device = {b.device_id: b for b in bindings}
    events: dict[str, tuple[str, ...]] = {}
    samples: list[SampleTruth] = []
    for record in records:
        if isinstance(record, SampleTruth):
            samples.append(record)
        elif isinstance(record, EventTruth):
            events[record.kind] = events.get(record.kind, ()) + record.devices
    run_start: dict[str, int | None] = {}
    excursions: set[Subject] = set()
    for sample in sorted(samples, key=lambda s: s.t_sim_ms):
        binding = by_device[sample.device_id]
        if not sample.excursion:
            run_start[sample.device_id] = None
            continue
        start = run_start.get(sample.device_id)
        if start is None:
            run_start[sample.device_id] = start = sample.t_sim_ms
        if sample.t_sim_ms - start >= delays_s[ProfileName(binding.profile)] * 1000:
            excursions.update(subjects_of(binding))
    return GroundTruth(
        samples_sent=sum(1 for s in samples if s.fate is Fate.SENT),
        samples_malformed=sum(1 for s in samples if s.fate is Fate.MALFORMED),
        incident_devices=events,
        excursion_subjects=frozenset(excursions),
    )
