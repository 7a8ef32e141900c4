"""Ground truth: every sample the simulator produces and every message it publishes, with labels.

JSON lines with sorted keys, written in simulated-time order, so the same scenario and seed give a
byte-identical file. Downstream components (anomaly filter, excursion rules, drills) are scored
against it exactly.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import orjson


class Label(enum.StrEnum):
    """What the reported temperature of a sample really is."""

    CLEAN = "clean"  #: the sensor reported the true value
    SPIKE = "spike"  #: one sample far off the true value
    STUCK = "stuck"  #: the sensor repeats an old value
    DRIFT = "drift"  #: a growing offset from the true value
    DROPOUT = "dropout"  #: the sensor gave no temperature
    WRONG_UNITS = "wrong_units"  #: the firmware wrote °C where the format expects °F


class Fate(enum.StrEnum):
    """What became of a sample on its way off the device."""

    SENT = "sent"  #: published in a well-formed message (perhaps late, from the device buffer)
    DEVICE_DROPPED = "device_dropped"  #: pushed out of the full device buffer while offline
    MALFORMED = "malformed"  #: published in a corrupted message nobody can decode
    UNSENT = "unsent"  #: still on the device when the run ended


class PublishKind(enum.StrEnum):
    """How a message was published."""

    NORMAL = "normal"
    BUFFERED = "buffered"  #: catch-up from the device buffer after an outage
    DUPLICATE = "duplicate"  #: the same payload again
    OUT_OF_ORDER = "out_of_order"  #: held back and sent after its successor
    REPLAY = "replay"  #: an old payload sent again much later
    MALFORMED = "malformed"  #: corrupted bytes


@dataclass(frozen=True, slots=True)
class SampleTruth:
    """One sample: the true state, what the device reported, and what became of it."""

    device_id: str
    gateway: int
    seq: int
    t_sim_ms: int
    t_device_ms: int
    true_temperature_c: float
    reported_temperature_c: float | None
    label: Label
    excursion: bool
    """The TRUE temperature is outside the device's product profile: a real excursion."""
    fate: Fate


@dataclass(frozen=True, slots=True)
class PublishTruth:
    """One publication of a message (the same message may be published more than once)."""

    device_id: str
    gateway: int
    t_sim_ms: int
    seqs: tuple[int, ...]
    kind: PublishKind
    format: str
    size: int


@dataclass(frozen=True, slots=True)
class EventTruth:
    """A scenario event as applied: when, what and to whom."""

    t_sim_ms: int
    kind: str
    devices: tuple[str, ...]
    detail: str


Record = SampleTruth | PublishTruth | EventTruth
_TYPES = {SampleTruth: "sample", PublishTruth: "publish", EventTruth: "event"}


def encode_record(record: Record) -> bytes:
    """One ground-truth line (without the newline)."""
    body = asdict(record)
    body["type"] = _TYPES[type(record)]
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


class TruthWriter:
    """Appends ground-truth records to a JSON-lines file (or keeps them in memory for tests)."""

    def __init__(self, path: Path | None = None, *, keep: bool = False) -> None:
        self._file: IO[bytes] | None = path.open("wb") if path is not None else None
        self.records: list[Record] = []
        self._keep = keep
        self.counts: dict[str, int] = {}

    def write(self, record: Record) -> None:
        """Record one fact."""
        if self._file is not None:
            self._file.write(encode_record(record) + b"\n")
        if self._keep:
            self.records.append(record)
        kind = _TYPES[type(record)]
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_truth(path: Path) -> list[dict[str, object]]:
    """Load a ground-truth file as dictionaries (for scoring and tests)."""
    with path.open("rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]
