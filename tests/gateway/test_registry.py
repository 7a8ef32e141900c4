"""The gateway registry: newest manifest wins, persisted atomically, bindings by event time."""

from __future__ import annotations

from pathlib import Path

import pytest

from coldtrace.contract import Binding, ContractError, DeviceEntry, Manifest, RejectCode, canonical_bytes
from coldtrace.profiles import ProfileName
from gateway.registry import ApplyOutcome, Registry

T0 = 1_795_000_000_000


def manifest(version: int, *, gateway_id: str = "gw-0", moved_at: int = T0 + 3_600_000) -> bytes:
    """A manifest where reefer-1 moves from shipment A to B at ``moved_at``."""
    return canonical_bytes(
        Manifest(
            devices=(
                DeviceEntry(
                    device_id="reefer-1",
                    bindings=(
                        Binding(
                            profile=ProfileName.VACCINES,
                            shipment_id="SHP-A",
                            lot_ids=("LOT-1",),
                            valid_from_ms=T0,
                            valid_to_ms=moved_at,
                        ),
                        Binding(profile=ProfileName.FROZEN, shipment_id="SHP-B", valid_from_ms=moved_at),
                    ),
                ),
                DeviceEntry(device_id="room-2"),
            ),
            gateway_id=gateway_id,
            issued_ms=T0,
            site_id="wh-hamburg",
            version=version,
        )
    )


def test_bindings_follow_event_time_and_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "registry" / "manifest.json"
    registry = Registry(path, gateway_id="gw-0")
    assert registry.bound("reefer-1", T0) is None
    assert registry.apply(manifest(3)) is ApplyOutcome.APPLIED
    early = registry.bound("reefer-1", T0 + 10)
    late = registry.bound("reefer-1", T0 + 3_600_000)
    assert early is not None
    assert late is not None
    assert (early.binding.shipment_id, early.manifest_version) == ("SHP-A", 3)
    assert late.binding.shipment_id == "SHP-B"
    assert registry.bound("reefer-1", T0 - 1) is None  # before any binding
    assert registry.knows("room-2")
    assert registry.bound("room-2", T0) is None  # registered but unbound
    assert not registry.knows("stranger")
    reopened = Registry(path, gateway_id="gw-0")
    assert reopened.version == 3
    assert reopened.site_id == "wh-hamburg"


def test_older_or_repeated_manifest_is_ignored(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "m.json", gateway_id="gw-0")
    registry.apply(manifest(5))
    assert registry.apply(manifest(5)) is ApplyOutcome.STALE
    assert registry.apply(manifest(4, moved_at=T0 + 1)) is ApplyOutcome.STALE
    assert registry.bound("reefer-1", T0 + 10) is not None
    assert registry.apply(manifest(6, moved_at=T0 + 1)) is ApplyOutcome.APPLIED
    bound = registry.bound("reefer-1", T0 + 10)
    assert bound is not None
    assert bound.binding.shipment_id == "SHP-B"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", RejectCode.MALFORMED_JSON),
        (manifest(1, gateway_id="gw-9"), RejectCode.IDENTITY_MISMATCH),
        (manifest(1).replace(b'"version":1', b'"version":0'), RejectCode.INVALID_FIELD),
    ],
)
def test_bad_manifest_is_refused_and_changes_nothing(
    tmp_path: Path, payload: bytes, code: RejectCode
) -> None:
    path = tmp_path / "m.json"
    registry = Registry(path, gateway_id="gw-0")
    registry.apply(manifest(2))
    with pytest.raises(ContractError) as caught:
        registry.apply(payload)
    assert caught.value.code is code
    assert registry.version == 2
    assert Registry(path, gateway_id="gw-0").version == 2


def test_overlapping_bindings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not overlap"):
        DeviceEntry(
            device_id="d",
            bindings=(
                Binding(profile=ProfileName.VACCINES, shipment_id="A", valid_from_ms=0, valid_to_ms=100),
                Binding(profile=ProfileName.VACCINES, shipment_id="B", valid_from_ms=50),
            ),
        )
