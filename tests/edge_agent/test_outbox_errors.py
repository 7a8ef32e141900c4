"""Outbox failure modes: a full disk, a damaged file, a file from a newer agent."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutboxCorrupt, OutboxError, OutboxFull
from tests.edge_agent.outbox_helpers import GATEWAY, drain, rows, signer, verify_chain

BIG = 1 << 40


def _fill_until_full(box: Outbox) -> int:
    """Append 100-reading messages until the outbox is full; the readings accepted."""
    for start in range(0, 100_000, 100):
        try:
            box.append(rows("dev-a", range(start, start + 100)))
        except OutboxFull:
            assert start > 0
            return start
    raise AssertionError("the outbox never filled up")


def test_a_full_disk_raises_outbox_full_and_stores_nothing_of_the_call(tmp_path: Path) -> None:
    key = signer()
    path = tmp_path / "outbox.db"
    # hard_limit_bytes sets SQLite's max_page_count: the database behaves as on a full disk beyond it.
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG, hard_limit_bytes=400_000) as box:
        accepted = _fill_until_full(box)
        refused = rows("dev-a", range(accepted, accepted + 100))
        assert box.stats().readings == accepted  # the failed call left nothing behind
        with pytest.raises(OutboxFull, match="is full while appending"):
            box.append(refused)

        # Still usable: the uplink drains (forming a frame fits in the space it frees), then the
        # refused message is taken.
        for frame in drain(box, key=key, max_readings=100):
            box.acknowledge(frame.batch_seq)
        assert box.append(refused) == 100
        frames = drain(box, key=key, max_readings=100)

    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        assert box.stats().readings == 100
    sent = verify_chain([f.frame for f in frames], key=key, first_prev=None).keys
    assert sorted(sent) == [("dev-a", s) for s in range(accepted, accepted + 100)]


def test_thinning_makes_room_on_a_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=250_000, hard_limit_bytes=400_000) as box:
        accepted = _fill_until_full(box)
        assert box.enforce_budget() > 0
        assert box.stats().bytes_on_disk <= 250_000
        assert box.append(rows("dev-a", range(accepted, accepted + 100))) == 100


def _filled(tmp_path: Path) -> Path:
    path = tmp_path / "outbox.db"
    with Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG) as box:
        for start in range(0, 2000, 100):
            box.append(rows("dev-a", range(start, start + 100)))
    return path


def test_a_damaged_header_is_reported_with_what_to_do(tmp_path: Path) -> None:
    damaged = tmp_path / "copy.db"
    shutil.copy(_filled(tmp_path), damaged)
    with damaged.open("r+b") as f:
        f.write(b"this is no sqlite file")
    with pytest.raises(OutboxCorrupt) as caught:
        Outbox(damaged, gateway_id=GATEWAY, budget_bytes=BIG)
    message = str(caught.value)
    assert str(damaged) in message
    assert "move" in message
    assert "new outbox" in message
    assert caught.value.path == damaged


def test_damaged_pages_are_reported(tmp_path: Path) -> None:
    damaged = tmp_path / "copy.db"
    shutil.copy(_filled(tmp_path), damaged)
    page = 4096
    with damaged.open("r+b") as f:
        for n in (3, 7, 20, 60):  # b-tree pages of the reading table and its indexes
            f.seek(n * page)
            f.write(b"\xff" * 64)
    with pytest.raises(OutboxCorrupt, match="damaged"):
        Outbox(damaged, gateway_id=GATEWAY, budget_bytes=BIG)


def test_an_outbox_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(OutboxError, match="newer than this agent"):
        Outbox(path, gateway_id=GATEWAY, budget_bytes=BIG)
