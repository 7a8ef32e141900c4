"""Crash safety with a real kill -9: nothing reported committed is lost, nothing is sent twice,
the hash chain has no gap and pending frames are resent byte-identical.

A child process (``crash_child.py``) runs an agent-like loop over a real outbox and reports each
completed step on stdout; the parent SIGKILLs it at random moments - including right as it enters
``form_batch`` or ``acknowledge`` - restarts it, and after every kill checks the outbox file against
what the child reported and what the "cloud" (a directory of delivered frames) received.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coldtrace.contract import GENESIS_HASH, frame_hash, verify_frame
from edge_agent.outbox import Outbox
from tests.edge_agent.crash_child import readings_of
from tests.edge_agent.outbox_helpers import GATEWAY, drain, signer, waiting

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """What the children reported across rounds."""

    db: Path
    cloud: Path
    synchronous: str
    committed: int = -1  # highest iteration whose append returned
    kills: list[str] = field(default_factory=list)


def _expected(iteration: int) -> set[tuple[str, int]]:
    return {(r.device_id, r.seq) for r, _ in readings_of(iteration)}


def _round(run: Run, rng: random.Random) -> None:
    """Start a child, have it killed at a random moment, record what it reported."""
    # "self": the child kills itself at a random SQLite instruction (mid-statement, mid-transaction);
    # "lines": the parent kills it after a random number of reports; "form" / "ack": the parent
    # kills it as soon as it says it is entering form_batch / acknowledge.
    mode = rng.choice(["self", "self", "lines", "form", "ack"])
    kill_at = rng.randint(1, 40_000) if mode == "self" else 0
    budget = rng.randint(3, 60)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.edge_agent.crash_child", str(run.db), str(run.cloud),
         str(run.committed + 1), run.synchronous, "crash-test", str(kill_at)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    lines = 0
    killed = False
    try:
        # Read to EOF even after the kill: the child runs ahead of the parent, and reports it wrote
        # before dying are still in the pipe; missing them would understate what was committed.
        for line in child.stdout:
            kind, _, value = line.strip().partition(" ")
            if kind == "A":
                run.committed = int(value)
            if killed:
                continue
            lines += 1
            if mode == "self" or lines < budget:
                continue
            if mode == "lines" or line.startswith({"form": "F start", "ack": "K start"}[mode]):
                child.send_signal(signal.SIGKILL)
                killed = True
    finally:
        child.kill()  # no-op if already dead; never leave a child behind
        _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, f"child exited on its own ({child.returncode}): {err}"
    run.kills.append(f"{mode}@{kill_at or lines}")


def _delivered(cloud: Path) -> dict[int, bytes]:
    """Frames the cloud received, by batch_seq; resends must be byte-identical."""
    frames: dict[int, bytes] = {}
    for path in sorted(cloud.glob("*.frame")):
        seq = int(path.name.split("-")[0])
        data = path.read_bytes()
        assert frames.setdefault(seq, data) == data, f"batch {seq} was resent with different bytes"
    return frames


def _check(run: Run, *, drain_all: bool) -> None:
    key = signer()
    with Outbox(run.db, gateway_id=GATEWAY, budget_bytes=1 << 40) as box:
        if drain_all:
            drain(box, key=key, max_readings=200)
        pending = {f.batch_seq: f.frame for f in box.pending_frames()}
        stats = box.stats()
        left = set(waiting(box))
    delivered = _delivered(run.cloud)
    for seq, frame in pending.items():
        assert delivered.get(seq, frame) == frame, f"pending batch {seq} differs from what was sent"
    frames = delivered | pending

    # The chain: batch_seq 1..n without a gap, each prev_hash the hash of the frame before.
    assert sorted(frames) == list(range(1, stats.next_batch_seq)), run.kills
    prev = GENESIS_HASH
    sent: list[tuple[str, int]] = []
    for seq in sorted(frames):
        batch = verify_frame(frames[seq], key.public_key()).batch
        assert (batch.batch_seq, batch.prev_hash) == (seq, prev), run.kills
        prev = frame_hash(frames[seq])
        sent += [(r.device_id, r.seq) for r in batch.readings]
    assert stats.head_hash == prev

    # No reading in two frames, none both sent and still waiting.
    assert len(sent) == len(set(sent)), run.kills
    assert not left & set(sent)
    everything = left | set(sent)
    # Every reported append is there; an unreported one (killed before it said so) is all or nothing.
    for i in range(run.committed + 1):
        assert _expected(i) <= everything, f"iteration {i} lost after kills {run.kills}"
    maybe = _expected(run.committed + 1)
    assert maybe <= everything or not maybe & everything
    assert everything <= set().union(*(_expected(i) for i in range(run.committed + 2)))
    if drain_all:
        assert not left


@pytest.mark.parametrize(("synchronous", "rounds"), [("FULL", 7), ("NORMAL", 3)])
def test_kill_9_loses_nothing_duplicates_nothing_and_keeps_the_chain(
    tmp_path: Path, synchronous: str, rounds: int
) -> None:
    run = Run(db=tmp_path / "outbox.db", cloud=tmp_path / "cloud", synchronous=synchronous)
    run.cloud.mkdir()
    rng = random.Random(f"kill-9/{synchronous}")  # noqa: S311  # reproducible kill points
    for _ in range(rounds):
        _round(run, rng)
        _check(run, drain_all=False)
    _check(run, drain_all=True)  # the parent forms the rest: a third writer continues the chain
    _round(run, rng)  # ... and a child resends those frames byte-identical
    _check(run, drain_all=True)
    assert run.committed > rounds
