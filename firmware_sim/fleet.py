"""The fleet: builds the devices a scenario describes and drives them in simulated-time order.

:class:`Simulation` is a pure function of (scenario, device count, seed, start time): it yields the
publications in order and writes the ground truth, without touching a network or a clock. The runner
(:mod:`firmware_sim.runner`) paces the yielded publications onto a real broker.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from firmware_sim.device import Emission, SimDevice
from firmware_sim.environment import Environment
from firmware_sim.physics import AmbientParams, DoorEvent
from firmware_sim.scenario import DeviceKind, Event, EventKind, FleetGroup, Scenario
from firmware_sim.truth import EventTruth, TruthWriter

_PREFIX = {DeviceKind.REEFER: "reefer", DeviceKind.COLD_ROOM: "room", DeviceKind.PALLET: "pallet"}
#: Spread of device clock errors: offset (ms) and drift (ppm), drawn per device.
CLOCK_OFFSET_SIGMA_MS = 500.0
CLOCK_DRIFT_SIGMA_PPM = 20.0


def gateway_id(index: int) -> str:
    """The id of gateway ``index`` in simulated topologies."""
    return f"gw-{index}"


@dataclass(frozen=True, slots=True)
class Binding:
    """What a simulated device travels with: the manifest entry a cloud would push to its gateway."""

    device_id: str
    gateway_id: str
    kind: DeviceKind
    profile: str
    format: str
    shipment_id: str | None
    lot_ids: tuple[str, ...]


def _counts(groups: tuple[FleetGroup, ...], total: int) -> list[int]:
    """Devices per group by largest remainder, so the counts add up to ``total`` exactly."""
    raw = [g.share * total for g in groups]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(groups)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class Simulation:
    """A deterministic run of ``scenario`` with ``devices`` devices from ``seed``."""

    def __init__(
        self, scenario: Scenario, *, devices: int, seed: int, start_ms: int, truth: TruthWriter
    ) -> None:
        if devices < 1:
            raise ValueError("a fleet needs at least one device")
        self.scenario = scenario
        self.seed = seed
        self.start_ms = start_ms
        self.truth = truth
        self.end_ms = start_ms + round(scenario.duration_s * 1000)
        self.interval_ms = round(scenario.sample_interval_s * 1000)
        self.devices: list[SimDevice] = []
        ambient_params = AmbientParams(
            mean_c=scenario.ambient_mean_c, amplitude_k=scenario.ambient_amplitude_k
        )
        index = 0
        for group, count in zip(scenario.fleet, _counts(scenario.fleet, devices), strict=True):
            for _ in range(count):
                rng = np.random.default_rng([seed, index])
                env = Environment(group.kind, group.profile, rng, ambient_params, truck=group.truck)
                env.add_traffic(scenario.duration_s)
                unset = bool(rng.random() < scenario.unset_clock_share)
                self.devices.append(
                    SimDevice(
                        index=index, device_id=f"{_PREFIX[group.kind]}-{index:05d}", group=group,
                        scenario=scenario, rng=rng, env=env, start_ms=start_ms, truth=truth,
                        gateway=index % scenario.gateways, unset_clock=unset,
                        clock_offset_ms=int(rng.integers(0, 10_000_000)) if unset
                        else round(float(rng.normal(0.0, CLOCK_OFFSET_SIGMA_MS))),
                        drift_ppm=float(rng.normal(0.0, CLOCK_DRIFT_SIGMA_PPM)),
                    )
                )  # fmt: skip
                index += 1
        events_rng = np.random.default_rng([seed, 2**32])
        for event in sorted(scenario.events, key=lambda e: e.at_s):
            self._apply(event, events_rng)

    def _targets(self, event: Event, rng: np.random.Generator) -> list[SimDevice]:
        at_ms = self.start_ms + round(event.at_s * 1000)
        eligible = [
            d for d in self.devices
            if (not event.kinds or d.group.kind in event.kinds)
            and (event.gateway is None or d.gateway_at(at_ms) == event.gateway)
        ]  # fmt: skip
        if event.share >= 1.0:
            return eligible
        chosen = max(1, round(event.share * len(eligible))) if eligible else 0
        picks = sorted(rng.choice(len(eligible), size=chosen, replace=False).tolist())
        return [eligible[i] for i in picks]

    def _apply(self, event: Event, rng: np.random.Generator) -> None:
        at_ms = self.start_ms + round(event.at_s * 1000)
        end_ms = at_ms + round((event.duration_s or 0.0) * 1000)
        targets = self._targets(event, rng)
        detail = ""
        for device in targets:
            match event.kind:
                case EventKind.COMPRESSOR_FAILURE:
                    device.env.compressor_failed_at_s = min(device.env.compressor_failed_at_s, event.at_s)
                case EventKind.DOOR_OPEN:
                    device.env.doors.append(DoorEvent(event.at_s, event.duration_s or 0.0))
                    device.env.doors.sort(key=lambda d: d.start_s)
                case EventKind.GATEWAY_REBOOT:
                    device.offline.add(at_ms, end_ms)
                case EventKind.TRANSFER:
                    device.gateway_moves.append((at_ms, event.to_gateway or 0))
                    detail = f"gateway {event.gateway} -> {event.to_gateway}"
                case EventKind.CLOCK_JUMP:
                    device.clock_jumps.append((at_ms, round((event.jump_s or 0.0) * 1000)))
                    detail = f"jump {event.jump_s:+g} s"
                case EventKind.GLITCH_STORM:
                    device.glitch_storms.append((at_ms, end_ms, event.multiplier or 1.0))
                case EventKind.UPLINK_PARTITION:
                    detail = f"gateway {event.gateway} uplink down until +{event.duration_s:g} s"
        if event.duration_s is not None and not detail:
            detail = f"for {event.duration_s:g} s"
        self.truth.write(
            EventTruth(
                t_sim_ms=at_ms,
                kind=event.kind.value,
                devices=tuple(d.device_id for d in targets),
                detail=detail,
            )
        )

    def uplink_partitions(self) -> list[tuple[str, int, int]]:
        """(gateway id, start ms, end ms) of every scripted uplink outage, for drills to enact."""
        return [
            (gateway_id(e.gateway or 0), self.start_ms + round(e.at_s * 1000),
             self.start_ms + round((e.at_s + (e.duration_s or 0.0)) * 1000))
            for e in self.scenario.events if e.kind is EventKind.UPLINK_PARTITION
        ]  # fmt: skip

    def bindings(self) -> list[Binding]:
        """The shipment/lot each device travels with (eight devices to a shipment, rooms hold lots)."""
        out = []
        for d in self.devices:
            shipment: str | None
            lots: tuple[str, ...]
            if d.group.kind is DeviceKind.COLD_ROOM:
                shipment, lots = None, (f"LOT-R{d.index:05d}",)
            else:
                number = d.index // 8
                shipment = f"SHP-{self.seed}-{number:04d}"
                lots = (f"LOT-{self.seed}-{number:04d}-A", f"LOT-{self.seed}-{number:04d}-B")
            out.append(
                Binding(
                    d.device_id,
                    gateway_id(d.gateway),
                    d.group.kind,
                    d.group.profile.value,
                    d.group.format.value,
                    shipment,
                    lots,
                )
            )
        return out

    def emissions(self) -> Iterator[Emission]:
        """Every publication of the run, in simulated-time order (ties by device index)."""
        phases = np.random.default_rng([self.seed, 2**32 + 1]).integers(
            0, self.interval_ms, size=len(self.devices)
        )
        heap = [(self.start_ms + int(p), i) for i, p in enumerate(phases)]
        heapq.heapify(heap)
        while heap and heap[0][0] < self.end_ms:
            t_ms, i = heapq.heappop(heap)
            yield from self.devices[i].tick(t_ms)
            heapq.heappush(heap, (t_ms + self.interval_ms, i))
        for device in self.devices:
            yield from device.finish(self.end_ms)
