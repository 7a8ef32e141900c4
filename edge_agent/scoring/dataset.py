"""Labelled readings from the fleet simulator, run offline (no broker): training and evaluation data.

The simulation's payloads are decoded with :func:`coldtrace.device_formats.decode`, so the readings
are what a gateway sees (vendor quantisation, °F conversions, dropouts as missing temperatures), in
arrival order, each (device, seq) once. Labels come from the simulator's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from coldtrace.contract import ContractError
from coldtrace.device_formats import decode
from firmware_sim.fleet import Simulation
from firmware_sim.scenario import Event, Scenario, builtin_scenarios
from firmware_sim.truth import Label, SampleTruth, TruthWriter

#: Simulated start time (2026-11-18): any fixed value works; fixed so that runs are reproducible.
START_MS = 1_795_000_000_000
#: The scenarios a model is trained and evaluated on.
TRAINING_SCENARIOS = ("glitch-storm", "reefer-failure", "door-left-open")
#: Label codes of :attr:`LabelledReadings.label`.
LABELS: tuple[Label, ...] = tuple(Label)
LABEL_CODE = {label: code for code, label in enumerate(LABELS)}
CLEAN = LABEL_CODE[Label.CLEAN]


@dataclass(frozen=True, slots=True)
class LabelledReadings:
    """One simulation's decoded readings in arrival order, with their ground truth."""

    scenario: str
    device_ids: tuple[str, ...]
    """Device id of each slot."""
    slots: NDArray[np.int64]
    t_ms: NDArray[np.int64]
    """Device time, as the reading carries it."""
    temperature: NDArray[np.float64]
    """°C; NaN where the reading has no temperature."""
    label: NDArray[np.int8]
    """Index into :data:`LABELS`."""
    excursion: NDArray[np.bool_]
    """The TRUE temperature was outside the product's range: a real excursion."""

    def __len__(self) -> int:
        return int(self.slots.shape[0])


def stretch(scenario: Scenario, hours: float) -> Scenario:
    """``scenario`` lasting ``hours``, its events repeated with the original duration as period.

    Repeating keeps the mix of the original: a 12 h glitch storm has six storms, not one in twelve hours.
    """
    period_s = scenario.duration_s
    duration_s = hours * 3600.0
    events: list[Event] = []
    k = 0
    while k * period_s < duration_s:
        events.extend(
            e.model_copy(update={"at_s": e.at_s + k * period_s})
            for e in scenario.events
            if e.at_s + k * period_s < duration_s
        )
        k += 1
    return scenario.model_copy(update={"duration_s": duration_s, "events": tuple(events)})


def training_scenarios(hours: float) -> list[Scenario]:
    """The built-in scenarios a model learns from, each stretched to ``hours``."""
    known = builtin_scenarios()
    return [stretch(known[name], hours) for name in TRAINING_SCENARIOS]


def simulate(scenario: Scenario, *, devices: int, seed: int, start_ms: int = START_MS) -> LabelledReadings:
    """Run ``scenario`` offline and return what a gateway would decode, labelled."""
    truth = TruthWriter(keep=True)
    simulation = Simulation(scenario, devices=devices, seed=seed, start_ms=start_ms, truth=truth)
    keys: list[tuple[str, int]] = []
    t_ms: list[int] = []
    temperature: list[float] = []
    seen: set[tuple[str, int]] = set()
    for emission in simulation.emissions():
        try:
            message = decode(emission.payload)
        except ContractError:
            continue  # a corrupted payload: the gateway would reject it too
        for sample in message.samples:
            key = (message.device_id, sample.seq)
            if key in seen:
                continue  # duplicates and replays: the gateway deduplicates by (device, seq)
            seen.add(key)
            keys.append(key)
            t_ms.append(sample.t_device_ms)
            temperature.append(np.nan if sample.temperature_c is None else sample.temperature_c)
    samples = {(r.device_id, r.seq): r for r in truth.records if isinstance(r, SampleTruth)}
    device_ids = tuple(d.device_id for d in simulation.devices)
    slot_of = {d: i for i, d in enumerate(device_ids)}
    return LabelledReadings(
        scenario=scenario.name,
        device_ids=device_ids,
        slots=np.fromiter((slot_of[d] for d, _ in keys), dtype=np.int64, count=len(keys)),
        t_ms=np.asarray(t_ms, dtype=np.int64),
        temperature=np.asarray(temperature, dtype=np.float64),
        label=np.fromiter((LABEL_CODE[samples[k].label] for k in keys), dtype=np.int8, count=len(keys)),
        excursion=np.fromiter((samples[k].excursion for k in keys), dtype=np.bool_, count=len(keys)),
    )
