"""Dead letters: device messages the agent refused, kept with their raw bytes for inspection.

Bounded by row count (oldest dropped first) so a misbehaving device cannot fill the disk; every
refusal is also counted by reason in the metrics.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    topic TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message."""

    received_ms: int
    reason: str
    topic: str
    detail: str
    payload: bytes


class DeadLetters:
    """A bounded SQLite table of refused messages (use from one thread)."""

    def __init__(self, path: Path, *, max_rows: int) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._max_rows = max_rows

    def add(self, letters: list[DeadLetter]) -> None:
        """Store refused messages, dropping the oldest beyond the bound."""
        if not letters:
            return
        with self._db:
            self._db.executemany(
                "INSERT INTO dead_letter (received_ms, reason, topic, detail, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                [(d.received_ms, d.reason, d.topic, d.detail[:2000], d.payload) for d in letters],
            )
            self._db.execute(
                "DELETE FROM dead_letter WHERE id <= (SELECT MAX(id) FROM dead_letter) - ?", (self._max_rows,)
            )

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        """The newest refused messages, newest first."""
        rows = self._db.execute(
            "SELECT received_ms, reason, topic, detail, payload FROM dead_letter ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def count(self) -> int:
        """Rows kept."""
        return int(self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()
