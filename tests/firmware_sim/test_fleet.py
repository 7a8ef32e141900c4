"""The fleet simulation: deterministic per seed, labels that match the injected faults exactly."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldtrace.contract import ContractError
from coldtrace.device_formats import decode
from firmware_sim.device import Emission
from firmware_sim.faults import SPIKE_MAX_K, SPIKE_MIN_K, fahrenheit_to_celsius
from firmware_sim.firmware import RejectReason, build_image
from firmware_sim.fleet import Simulation
from firmware_sim.scenario import FaultRates, Scenario, builtin_scenarios, parse_scenario
from firmware_sim.truth import EventTruth, Fate, Label, PublishKind, PublishTruth, SampleTruth, TruthWriter

START_MS = 1_795_000_000_000


def _scenario(
    faults: dict[str, float], *, duration_s: float = 1800, fmt: str = "vendor-a-json", extra: str = ""
) -> Scenario:
    text = f"""
name = "t"
description = "test"
duration_s = {duration_s}
[[fleet]]
share = 1.0
kind = "reefer"
format = "{fmt}"
{extra}
"""
    return parse_scenario(text, source="test").model_copy(update={"faults": FaultRates(**faults)})


def _run(
    scenario: Scenario, *, devices: int = 8, seed: int = 3, path: Path | None = None
) -> tuple[list[Emission], TruthWriter]:
    writer = TruthWriter(path, keep=True)
    with writer:
        emissions = list(
            Simulation(scenario, devices=devices, seed=seed, start_ms=START_MS, truth=writer).emissions()
        )
    return emissions, writer


def _samples(writer: TruthWriter) -> list[SampleTruth]:
    return [r for r in writer.records if isinstance(r, SampleTruth)]


def _decoded(emissions: list[Emission]) -> dict[tuple[str, int], float | None]:
    """(device, seq) -> temperature the gateway will see, from every decodable payload."""
    seen: dict[tuple[str, int], float | None] = {}
    for e in emissions:
        try:
            message = decode(e.payload)
        except ContractError:
            continue
        for s in message.samples:
            seen[(message.device_id, s.seq)] = s.temperature_c
    return seen


def test_same_seed_gives_byte_identical_truth_and_other_seeds_differ(tmp_path: Path) -> None:
    scenario = builtin_scenarios()["mixed-fleet"].model_copy(update={"duration_s": 1200.0})
    digests = []
    for run, seed in enumerate((11, 11, 12)):
        path = tmp_path / f"truth-{run}.jsonl"
        emissions, _ = _run(scenario, devices=12, seed=seed, path=path)
        payloads = hashlib.sha256(b"".join(e.payload for e in emissions)).hexdigest()
        digests.append((hashlib.sha256(path.read_bytes()).hexdigest(), payloads))
    assert digests[0] == digests[1]
    assert digests[0][0] != digests[2][0]
    assert digests[0][1] != digests[2][1]


def test_clean_run_reports_truth_and_every_sample_once() -> None:
    emissions, writer = _run(_scenario({}))
    samples = _samples(writer)
    assert all(s.label is Label.CLEAN and s.fate is Fate.SENT for s in samples)
    # The sensor resolves 0.01 K; the truth file keeps 4 decimals.
    assert all(s.reported_temperature_c == pytest.approx(s.true_temperature_c, abs=0.0051) for s in samples)
    seen = _decoded(emissions)
    assert set(seen) == {(s.device_id, s.seq) for s in samples}
    per_device = Counter(s.device_id for s in samples)
    assert set(per_device.values()) == {180}  # 1800 s at one sample per 10 s


def test_spike_labels_match_payloads_exactly() -> None:
    emissions, writer = _run(_scenario({"spike": 0.02}))
    seen = _decoded(emissions)
    spikes = 0
    for s in _samples(writer):
        offset = abs((seen[(s.device_id, s.seq)] or 0.0) - s.true_temperature_c)
        if s.label is Label.SPIKE:
            spikes += 1
            assert SPIKE_MIN_K - 0.01 <= offset <= SPIKE_MAX_K + 0.01
        else:
            assert offset < 0.01
    assert spikes > 10


def test_stuck_and_drift_labels_match_payloads() -> None:
    emissions, writer = _run(_scenario({"stuck": 0.01, "drift": 0.005}), devices=6)
    seen = _decoded(emissions)
    stuck = 0
    drift_runs: list[list[float]] = []
    for device in sorted({s.device_id for s in _samples(writer)}):
        samples = [s for s in _samples(writer) if s.device_id == device]
        for previous, s in itertools.pairwise(samples):
            reported = seen[(s.device_id, s.seq)]
            if s.label is Label.STUCK and previous.label is Label.STUCK:
                stuck += 1
                assert reported == seen[(previous.device_id, previous.seq)]  # repeats its value
            elif s.label is Label.DRIFT:
                assert reported is not None
                if previous.label is not Label.DRIFT:
                    drift_runs.append([])
                drift_runs[-1].append(reported - s.true_temperature_c)
            elif s.label is Label.CLEAN:
                assert reported == pytest.approx(s.true_temperature_c, abs=0.0051)
    assert stuck > 5
    assert len(drift_runs) > 2
    for offsets in drift_runs:
        # One sign, growing at >= 1 K/h: after the minimum 30 samples (300 s) at least 0.08 K.
        assert len({math.copysign(1, o) for o in offsets if abs(o) > 0.006}) == 1
        assert abs(offsets[-1]) >= abs(offsets[0]) - 0.006
        if len(offsets) >= 29:
            assert abs(offsets[-1]) > 0.075


def test_dropout_and_wrong_units_labels_match_payloads() -> None:
    emissions, writer = _run(_scenario({"dropout": 0.02, "wrong_units": 0.02}))
    messages = {}
    for e in emissions:
        m = decode(e.payload)
        for sample in m.samples:
            messages[(m.device_id, sample.seq)] = sample
    counts = Counter()
    for s in _samples(writer):
        sample = messages[(s.device_id, s.seq)]
        counts[s.label] += 1
        if s.label is Label.DROPOUT:
            assert sample.temperature_c is None
            assert sample.sensor_fault
        elif s.label is Label.WRONG_UNITS:
            assert sample.temperature_c == pytest.approx(
                fahrenheit_to_celsius(s.true_temperature_c), abs=0.006
            )
        else:
            assert sample.temperature_c is not None
            assert not sample.sensor_fault
    assert counts[Label.DROPOUT] > 5
    assert counts[Label.WRONG_UNITS] > 5


def test_transport_faults_match_publications() -> None:
    rates = {"duplicate": 0.02, "out_of_order": 0.02, "replay": 0.02, "malformed": 0.02}
    emissions, writer = _run(_scenario(rates, fmt="vendor-c-text"))
    publishes = [r for r in writer.records if isinstance(r, PublishTruth)]
    assert len(publishes) == len(emissions)
    kinds = Counter(p.kind for p in publishes)
    assert all(
        kinds[k] > 3
        for k in (PublishKind.DUPLICATE, PublishKind.OUT_OF_ORDER, PublishKind.REPLAY, PublishKind.MALFORMED)
    )
    last_seq: dict[str, int] = {}
    first_payload: dict[tuple[str, int], bytes] = {}
    for e in emissions:
        if e.kind is PublishKind.MALFORMED:
            with pytest.raises(ContractError):
                decode(e.payload)
            continue
        message = decode(e.payload)
        seq = message.samples[0].seq
        if e.kind in {PublishKind.DUPLICATE, PublishKind.REPLAY}:
            assert first_payload[(e.device_id, seq)] == e.payload  # the very same bytes again
        elif e.kind is PublishKind.OUT_OF_ORDER:
            assert seq < last_seq[e.device_id]  # arrives after its successor
        else:
            first_payload[(e.device_id, seq)] = e.payload
            last_seq[e.device_id] = max(seq, last_seq.get(e.device_id, -1))
    lost = {(s.device_id, s.seq) for s in _samples(writer) if s.fate is Fate.MALFORMED}
    assert lost
    assert not lost & set(_decoded([e for e in emissions if e.kind is not PublishKind.MALFORMED]))


def test_gateway_reboot_buffers_then_catches_up_and_drops_oldest_when_full() -> None:
    scenario = builtin_scenarios()["gateway-reboot"].model_copy(update={"duration_s": 3600.0})
    emissions, writer = _run(scenario, devices=4)
    samples = _samples(writer)
    offline_start, offline_end = START_MS + 1_800_000, START_MS + 2_400_000
    gw0 = {s.device_id for s in samples if s.gateway == 0}
    during = [s for s in samples if s.device_id in gw0 and offline_start <= s.t_sim_ms < offline_end]
    dropped = [s for s in during if s.fate is Fate.DEVICE_DROPPED]
    # 600 s offline at one sample per 10 s = 60 samples into a 40-sample memory: the oldest 20 go.
    assert len(dropped) == 20 * len(gw0)
    assert max(s.seq for s in dropped) < min(s.seq for s in during if s.fate is Fate.SENT)
    catch_up = [e for e in emissions if e.kind is PublishKind.BUFFERED]
    assert {e.device_id for e in catch_up} == gw0
    messages = [decode(e.payload) for e in catch_up]
    assert all(s.buffered for m in messages for s in m.samples)
    assert sum(m.dropped for m in messages) == len(dropped)
    assert all(e.t_sim_ms >= offline_end for e in catch_up)


def test_compressor_failure_produces_a_real_excursion() -> None:
    scenario = builtin_scenarios()["reefer-failure"]
    _, writer = _run(scenario, devices=10)
    failed = next(r for r in writer.records if not isinstance(r, SampleTruth | PublishTruth)).devices
    assert len(failed) == 1
    samples = _samples(writer)
    hot = [s for s in samples if s.excursion]
    assert hot
    assert {s.device_id for s in hot} == set(failed)
    assert min(s.t_sim_ms for s in hot) > START_MS + 7_200_000
    assert max(s.true_temperature_c for s in hot) > 8.0
    assert not math.isnan(hot[0].true_temperature_c)


def test_unset_clocks_and_clock_jumps_are_device_time_only() -> None:
    scenario = _scenario({}, extra="").model_copy(update={"unset_clock_share": 0.5})
    emissions, writer = _run(scenario, devices=10)
    samples = _samples(writer)
    unset = {s.device_id for s in samples if s.t_device_ms < 10**11}
    assert 0 < len(unset) < 10
    assert all(abs(s.t_device_ms - s.t_sim_ms) < 5_000 for s in samples if s.device_id not in unset)
    assert emissions


def test_device_installs_only_a_valid_newer_signed_firmware() -> None:
    vendor = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    writer = TruthWriter(keep=True)
    simulation = Simulation(_scenario({}), devices=1, seed=1, start_ms=START_MS, truth=writer)
    device = simulation.devices[0]
    newer = build_image(b"firmware 2.5.0", device.model, "2.5.0", vendor)
    tampered = newer[:-1] + bytes([newer[-1] ^ 0x01])
    older = build_image(b"firmware 2.3.9", device.model, "2.3.9", vendor)
    assert device.offer_firmware(tampered, vendor.public_key(), START_MS).reason is RejectReason.HASH_MISMATCH
    assert device.offer_firmware(older, vendor.public_key(), START_MS).reason is RejectReason.DOWNGRADE
    assert device.firmware == "2.4.1"
    assert device.offer_firmware(newer, vendor.public_key(), START_MS).accepted
    emissions = device.tick(START_MS + 10_000)
    assert decode(emissions[0].payload).firmware == "2.5.0"  # the gateway sees the new version
    reports = [r.detail for r in writer.records if isinstance(r, EventTruth)]
    assert reports == ["refused 2.5.0: hash_mismatch", "refused 2.3.9: downgrade", "installed 2.5.0"]
