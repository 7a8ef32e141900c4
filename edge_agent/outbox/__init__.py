"""The edge agent's durable outbox: no accepted reading is lost or silently altered.

Readings enter with :meth:`Outbox.append` (one transaction, durable on return: only then may the
device message be acknowledged to the local broker); :meth:`Outbox.form_batch` turns waiting
readings into a signed, hash-chained frame; a frame leaves with :meth:`Outbox.acknowledge` once the
cloud broker has PUBACKed it. Everything lives in one SQLite file (WAL journal), owned by one
process at a time.

Durability
    ``synchronous="FULL"`` (default): every commit is fsynced to the write-ahead log before the call
    returns, so a returned ``append`` survives power loss. ``"NORMAL"``: the log is fsynced only at
    checkpoints; a commit survives a crash of the process (kill -9) but the last commits before a
    power loss may be lost, and then the broker would not redeliver them because they were acked.
    Use NORMAL only where power is protected. Either way an acknowledgement (a frame leaving) is
    committed without a sync of its own: the next durable commit covers it, and one lost in a
    power cut only resends a frame the cloud already has, which it drops as a duplicate.
    Deleted rows are overwritten with zeros only on pages written anyway (``secure_delete = FAST``;
    Debian's SQLite zeroes and rewrites every freed page by default, which slowed a drain by 13 %).

Idempotence
    A reading is identified by (device_id, seq). Appending one that is waiting, in a frame, already
    sent or thinned stores nothing (``append`` returns the number actually stored). Per device the
    outbox keeps the sequence numbers that left it as a few intervals (one when nothing was lost),
    so a broker redelivery after a crash, or a device resending its buffer, is not sent twice. A
    redelivery with different content keeps the first and logs a warning. The record keeps at most
    64 intervals per device, filling the oldest gaps first: a reading that never arrived and turns
    up after 64 later gaps of its device is taken for a duplicate. A device that restarts its
    sequence numbers is taken for one resending (as the cloud's (device, seq) dedupe would).

Send order
    Each stored reading gets an order key: its gateway receive time, raised where needed so that
    keys never decrease along a device's sequence numbers; a reading that arrives after higher
    sequence numbers of its device (still waiting) is slotted between its waiting neighbours.
    Batches take readings by order key, oldest first, ties by device and seq. So each device's
    waiting readings leave in sequence order, and within a frame each device's seqs ascend; a
    reading that arrives after higher seqs of its device have already left goes in a later frame.

    With ``live_after_ms`` (after an outage) a batch is filled first from the *live* stream -
    readings keyed at or after ``live_after_ms``, plus every excursion whatever its age - then from
    the *backfill* stream, the rest, oldest first. Per device the sequence order is kept within
    each stream; a device's live readings and excursions may leave before its older backfill. The
    cloud dedupes by (device_id, seq) and evaluates in event time, so that cross-stream order is
    safe.

    A frame holds at most ``max_readings`` readings and the waiting gap markers, within the
    contract's frame size limit (the size is computed from the stored bytes before signing).
    Formed frames are immutable: stored exactly as signed and resent byte-identical after a restart
    (their readings leave the reading table when the frame is formed, so the frame is the only
    copy; keep the number of frames in flight small).

Eviction (disk budget)
    ``bytes on disk`` = database pages + write-ahead log. When :meth:`Outbox.enforce_budget` finds
    the outbox over ``budget_bytes`` it first folds the log in and returns free pages, then thins
    in rounds until the outbox fits:

    1. ROUTINE readings first, oldest first, by halving: in the window of the oldest routine
       readings each device keeps every other reading (its first, third, ...), so a series keeps its
       shape at lower resolution; repeated rounds thin the oldest data further before newer data
       is touched. A device with a single reading in the window keeps it until nothing else helps.
    2. ANOMALOUS readings the same way, only once no routine reading is waiting.
    3. EXCURSION readings only when nothing else is waiting, oldest first, whole.

    Readings already in a formed (signed) frame are never thinned. Every thinning is recorded as a
    ``THINNED`` marker per device (seq_from..seq_to, count, device-time span), merged with the
    device's waiting marker it overlaps or adjoins, and sent in the next batch: no gap is silent.
    Thinned rows' pages are packed and returned to the file system (incremental vacuum), so the
    file shrinks. After ``enforce_budget`` the outbox is within budget unless only frames are
    left; between calls it grows by what is appended, plus a write-ahead log of up to an eighth
    of the budget, at least 4 and at most 16 MiB (the checkpoint interval) — budget that much
    slack for the disk.

    A write that finds the disk (or ``hard_limit_bytes``) full raises :class:`OutboxFull` and
    stores nothing; the database stays usable.

Integrity
    Opening runs ``PRAGMA quick_check`` (time proportional to the file size) and checks every
    stored frame against its hash; a damaged file raises :class:`OutboxCorrupt` saying what to do.
    Each reading is validated when appended and stored as its canonical contract bytes with a
    CRC-32; a batch carries those bytes as they are, without decoding them again. One whose bytes
    fail their CRC-32, or do not carry the reading's own device_id and seq, when batched is moved
    to a quarantine table, kept for inspection, and replaced by a ``MISSING`` marker. The outbox
    holds an exclusive lock on its file while open.
"""

from edge_agent.outbox.errors import (
    GatewayMismatch,
    OutboxCorrupt,
    OutboxError,
    OutboxFull,
    OutboxLocked,
    UnknownBatch,
)
from edge_agent.outbox.models import OutboxStats, PendingFrame, Priority
from edge_agent.outbox.store import Outbox

__all__ = [
    "GatewayMismatch",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxFull",
    "OutboxLocked",
    "OutboxStats",
    "PendingFrame",
    "Priority",
    "UnknownBatch",
]
