"""The gateway's device registry: the newest manifest the cloud pushed, kept on local disk.

Manifests arrive on the gateway's command topic. The newest valid one wins; an older or repeated
version is ignored (MQTT may redeliver, and manifests may cross on the wire). The file is replaced
atomically (write, fsync, rename, fsync the directory), so a crash leaves the old or the new
manifest, never half of one.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from coldtrace.contract import Binding, ContractError, FieldError, Manifest, RejectCode, decode_model

logger = logging.getLogger(__name__)


class ApplyOutcome(enum.StrEnum):
    """What became of a manifest offered to the registry."""

    APPLIED = "applied"
    STALE = "stale"  #: not newer than the one in force: ignored


@dataclass(frozen=True, slots=True)
class Bound:
    """What a reading taken at a given time is bound to."""

    binding: Binding
    manifest_version: int


class Registry:
    """Devices of this gateway and what each travels with, by event time."""

    def __init__(self, path: Path, *, gateway_id: str) -> None:
        self._path = path
        self._gateway_id = gateway_id
        self._manifest: Manifest | None = None
        self._devices: dict[str, tuple[Binding, ...]] = {}
        if path.exists():
            self._install(self._decode(path.read_bytes(), source=str(path)))

    @property
    def version(self) -> int | None:
        """Version of the manifest in force, None before the first one."""
        return None if self._manifest is None else self._manifest.version

    @property
    def site_id(self) -> str | None:
        """The site this gateway serves, from the manifest."""
        return None if self._manifest is None else self._manifest.site_id

    def knows(self, device_id: str) -> bool:
        """True when the device is registered to this gateway."""
        return device_id in self._devices

    def bound(self, device_id: str, t_ms: int) -> Bound | None:
        """The binding of ``device_id`` at event time ``t_ms``; None when unbound at that time."""
        if self._manifest is None:
            return None
        for binding in self._devices.get(device_id, ()):
            if binding.covers(t_ms):
                return Bound(binding, self._manifest.version)
        return None

    def apply(self, payload: bytes) -> ApplyOutcome:
        """Validate and, if newer, persist and install a manifest; ContractError if it is invalid."""
        manifest = self._decode(payload, source="manifest command")
        if self._manifest is not None and manifest.version <= self._manifest.version:
            logger.info("manifest v%s ignored: v%s is in force", manifest.version, self._manifest.version)
            return ApplyOutcome.STALE
        self._write(payload)
        self._install(manifest)
        logger.info("manifest v%s applied: %d devices", manifest.version, len(manifest.devices))
        return ApplyOutcome.APPLIED

    def _decode(self, payload: bytes, *, source: str) -> Manifest:
        manifest = decode_model(Manifest, payload)
        if manifest.gateway_id != self._gateway_id:
            raise ContractError(
                RejectCode.IDENTITY_MISMATCH,
                FieldError(
                    "gateway_id", f"{source} is for {manifest.gateway_id!r}, not {self._gateway_id!r}"
                ),
            )
        return manifest

    def _install(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._devices = {d.device_id: d.bindings for d in manifest.devices}

    def _write(self, payload: bytes) -> None:
        tmp = self._path.with_suffix(self._path.suffix + ".tmp")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._path)
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
