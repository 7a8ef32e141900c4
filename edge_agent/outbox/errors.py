"""The outbox's exceptions, and the one place SQLite errors are translated into them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class OutboxError(Exception):
    """Something went wrong with the outbox database; ``path`` names the file."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class OutboxFull(OutboxError):
    """The disk (or the database's page limit) is full: nothing of the failed call was written.

    The caller must not acknowledge what it tried to append; it can thin (``enforce_budget``),
    wait for the uplink to drain, or refuse new data until space is back.
    """


class OutboxCorrupt(OutboxError):
    """The database file is damaged; the message tells the operator what to do."""


class OutboxLocked(OutboxError):
    """Another process has this outbox open: one outbox has exactly one owner."""


class GatewayMismatch(OutboxError):
    """The outbox belongs to another gateway id: its hash chain cannot be continued under this one."""


class UnknownBatch(OutboxError):
    """``acknowledge`` named a batch that was never formed."""

    def __init__(self, batch_seq: int, *, path: Path) -> None:
        super().__init__(f"batch {batch_seq} was never formed by outbox {path}", path=path)
        self.batch_seq = batch_seq


def corrupt_message(path: Path, detail: str) -> str:
    """What a damaged outbox means and what the operator should do about it."""
    return (
        f"outbox database {path} is damaged ({detail}). Stop the agent, move {path} and its -wal file "
        "aside (keep them for inspection), and start the agent again: it creates a new outbox whose "
        "hash chain restarts at batch 1. Readings still in the damaged file are not forwarded; "
        f"'sqlite3 {path} .recover' may salvage them."
    )


def translate(exc: sqlite3.Error, *, path: Path, action: str) -> OutboxError:
    """The typed outbox error for a SQLite error raised while ``action`` (e.g. "appending readings")."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        return OutboxFull(f"outbox {path} is full while {action}: {exc}", path=path)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return OutboxCorrupt(corrupt_message(path, str(exc)), path=path)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return OutboxLocked(
            f"outbox {path} is in use by another process ({exc}); only one agent may own it", path=path
        )
    return OutboxError(f"outbox {path}: {action} failed: {exc}", path=path)
