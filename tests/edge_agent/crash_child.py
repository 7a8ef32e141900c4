"""Child process of the kill -9 test: an agent-like loop over a real outbox, reporting on stdout.

Usage: ``python -m tests.edge_agent.crash_child DB CLOUD_DIR FIRST_ITERATION SYNCHRONOUS SEED KILL_AT``

On start it resends every pending frame (writing it to CLOUD_DIR, as the cloud would receive it) and
acknowledges it. Then, forever: append iteration ``i`` (``readings_of(i)``) and print ``A i`` once
``append`` has returned; every few iterations form a batch (``F start``, then ``F <batch_seq>``),
deliver it to CLOUD_DIR and acknowledge it (``K start``, then ``K <batch_seq>``). The parent kills it
with SIGKILL at arbitrary moments and checks the outbox against what was reported.

With KILL_AT > 0 the child SIGKILLs itself from SQLite's progress handler after KILL_AT x 10 virtual
machine instructions: a crash at an arbitrary point inside a statement or transaction, which a
signal from the parent (always a little late) rarely hits.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

from coldtrace.contract import Reading
from edge_agent.outbox import Outbox, Priority
from tests.edge_agent.outbox_helpers import GATEWAY, T0, reading, signer

DEVICES = 3
PER_DEVICE = 10
LIVE_WINDOW_MS = 20_000


def readings_of(iteration: int) -> list[tuple[Reading, Priority]]:
    """The readings appended in ``iteration``: 10 consecutive seqs for each of 3 devices."""
    out = []
    for d in range(DEVICES):
        for seq in range(iteration * PER_DEVICE, (iteration + 1) * PER_DEVICE):
            priority = Priority.EXCURSION if seq % 7 == 0 else Priority.ROUTINE
            out.append((reading(f"dev-{d}", seq, t_ms=T0 + iteration * 1000), priority))
    return out


def deliver(cloud: Path, batch_seq: int, frame: bytes) -> None:
    """What the cloud receives: one file per delivery, written atomically and durably."""
    tmp = cloud / f".{batch_seq}.{os.getpid()}.tmp"
    with tmp.open("wb") as f:
        f.write(frame)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(cloud / f"{batch_seq:08d}-{os.getpid()}-{random.getrandbits(32):08x}.frame")


def say(line: str) -> None:
    """Report one event to the parent."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def crash_after(box: Outbox, steps: int) -> None:
    """SIGKILL this process after ``steps`` progress-handler calls (10 SQLite instructions each)."""
    left = steps

    def tick() -> int:
        nonlocal left
        left -= 1
        if left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    conn = box._conn  # the seam: SQLite's own instruction counter
    assert conn is not None
    conn.set_progress_handler(tick, 10)


def main() -> None:
    """Run until killed."""
    db, cloud, first, synchronous, seed, kill_at = sys.argv[1:7]
    rng = random.Random(f"{seed}/{first}")  # noqa: S311
    key = signer()
    with Outbox(Path(db), gateway_id=GATEWAY, budget_bytes=1 << 40, synchronous=synchronous) as box:  # type: ignore[arg-type]
        if int(kill_at):
            crash_after(box, int(kill_at))
        for pending in box.pending_frames():
            deliver(Path(cloud), pending.batch_seq, pending.frame)
            box.acknowledge(pending.batch_seq)
            say(f"R {pending.batch_seq}")
        iteration = int(first)
        while True:
            box.append(readings_of(iteration))
            say(f"A {iteration}")
            if iteration % 3 == 0:
                say("F start")
                now = T0 + iteration * 1000
                live_after = now - LIVE_WINDOW_MS if rng.random() < 0.5 else None
                frame = box.form_batch(
                    signer=key, max_readings=rng.randint(5, 80), now_ms=now, live_after_ms=live_after
                )
                if frame is not None:
                    say(f"F {frame.batch_seq}")
                    deliver(Path(cloud), frame.batch_seq, frame.frame)
                    say("K start")
                    box.acknowledge(frame.batch_seq)
                    say(f"K {frame.batch_seq}")
            iteration += 1


if __name__ == "__main__":
    main()
