"""Per-device rolling features of the temperature channel, computed with numba.

Every feature of a reading is computed from the device's PREVIOUS valid samples only. A window that
contained the current sample would let a spike inflate its own window's standard deviation and hide
itself (a single 20 K spike in a window of 8 caps its own z-score near 2.6).

State lives in NumPy arrays indexed by a device *slot* (a small integer the caller maps device ids to,
see :class:`DeviceSlots`), so one compiled loop updates any mix of devices. A batch is processed row by
row in order: several readings of the same device in one batch see each other exactly as if they had
been passed one call at a time.

A reading without a temperature (a dropout: the caller passes NaN) gets a defined feature row (zeros,
``missing`` = 1) and leaves the device's state untouched, so the next valid sample is compared with
the last valid one.

Feature columns (:data:`FEATURE_NAMES`, in this order; float32; "the last N" = the device's last N
valid samples before this one):

=====================  =================================================================================
``delta_k``            current minus the last value, K
``rate_k_per_s``       ``delta_k`` / max(``dt_s``, :data:`MIN_DT_S`), K/s
``z8``                 (current - mean of the last 8) / max(their std, :data:`STD_FLOOR_K`)
``z32``                the same over the last 32
``dev_med8_k``         current minus the median of the last 8, K: one earlier spike cannot move it
``resid32_k``          current minus the least-squares line through the last 32, extrapolated to now, K
``slope32_k_per_h``    slope of that line, K/h (drift)
``trend8_k_per_h``     median of the last 8 sample-to-sample rates, K/h: a trend one spike cannot bend
``stuck_run``          how many previous consecutive values equal the current one (0 if it changed)
``stuck_trend_k``      while the value repeats: |``trend8_k_per_h`` when the repeat began| x how long
                       it has lasted, K. How far the trend would have carried a live sensor meanwhile:
                       a coarse but live sensor repeats a value only while that stays below its
                       resolution, a stuck one keeps repeating
``dt_s``               seconds since the last value
``n_prev``             valid samples in the 32-window (0..32): statistics of a short history are weak
``missing``            1 for a dropout row (every other column 0), else 0
=====================  =================================================================================

A statistic that needs more history than the device has is 0: the deltas need 1 previous sample,
z-scores, medians and the trend 2, the line 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit
from numpy.typing import NDArray

#: Window sizes, in previous valid samples.
SHORT_WINDOW = 8
LONG_WINDOW = 32
#: Standard deviations below this are taken as this, K. The simulated sensors have no noise and the
#: coarsest vendor format (vendor-c text) quantises to 0.1 K, so a smooth window's std is ~0 and a
#: z-score without a floor would call every 0.1 K step an outlier.
STD_FLOOR_K = 0.1
#: The shortest interval a rate is computed over, s: duplicated or out-of-order timestamps give dt <= 0.
MIN_DT_S = 1.0
#: Two values closer than this are "identical" for the stuck counter, K (decoders give exact repeats).
STUCK_EPS_K = 1e-6

FEATURE_NAMES: tuple[str, ...] = (
    "delta_k",
    "rate_k_per_s",
    "z8",
    "z32",
    "dev_med8_k",
    "resid32_k",
    "slope32_k_per_h",
    "trend8_k_per_h",
    "stuck_run",
    "stuck_trend_k",
    "dt_s",
    "n_prev",
    "missing",
)
N_FEATURES = len(FEATURE_NAMES)
#: Column index by name, for the rules and tests.
COLUMN: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
#: Bumped whenever a feature's definition changes while its name stays; part of a model's feature spec.
FEATURE_VERSION = 1


def feature_spec() -> dict[str, object]:
    """What the running code computes; a model trained on another spec is refused at load time."""
    return {
        "version": FEATURE_VERSION,
        "names": list(FEATURE_NAMES),
        "short_window": SHORT_WINDOW,
        "long_window": LONG_WINDOW,
        "std_floor_k": STD_FLOOR_K,
        "min_dt_s": MIN_DT_S,
    }


# Column indices as module constants, which numba freezes into the compiled loop.
_DELTA = COLUMN["delta_k"]
_RATE = COLUMN["rate_k_per_s"]
_Z8 = COLUMN["z8"]
_Z32 = COLUMN["z32"]
_MED8 = COLUMN["dev_med8_k"]
_RESID = COLUMN["resid32_k"]
_SLOPE = COLUMN["slope32_k_per_h"]
_TREND = COLUMN["trend8_k_per_h"]
_STUCK = COLUMN["stuck_run"]
_STUCK_TREND = COLUMN["stuck_trend_k"]
_DT = COLUMN["dt_s"]
_NPREV = COLUMN["n_prev"]
_MISSING = COLUMN["missing"]
# Per-slot integer state columns.
_HEAD, _COUNT, _RUN_LEN, _RUN_T = range(4)
_MS_PER_H = 3.6e6


@njit(cache=True)
def _median(values: NDArray[np.float64], n: int) -> float:
    """Median of ``values[:n]``, sorting them in place (insertion sort: n <= 8)."""
    for k in range(1, n):
        v = values[k]
        j = k
        while j > 0 and values[j - 1] > v:
            values[j] = values[j - 1]
            j -= 1
        values[j] = v
    if n % 2 == 1:
        return float(values[n // 2])
    return float(0.5 * (values[n // 2 - 1] + values[n // 2]))


@njit(cache=True)
def _mean_std(ring_v: NDArray[np.float64], s: int, head: int, n: int) -> tuple[float, float]:
    """Mean and population std of slot ``s``'s ``n`` most recent values."""
    total = 0.0
    for k in range(n):
        total += ring_v[s, (head - 1 - k) % LONG_WINDOW]
    mean = total / n
    acc = 0.0
    for k in range(n):
        d = ring_v[s, (head - 1 - k) % LONG_WINDOW] - mean
        acc += d * d
    return mean, np.sqrt(acc / n)


@njit(cache=True)
def _line(  # noqa: PLR0917 - numba helpers take positional arguments
    ring_v: NDArray[np.float64], ring_t: NDArray[np.int64], s: int, head: int, n: int, t: int, x: float
) -> tuple[float, float]:
    """Least-squares slope (K/h) of the last ``n`` values on time, and ``x``'s residual from that line.

    Times are hours relative to the newest sample, so epoch milliseconds never meet float rounding.
    """
    t_ref = ring_t[s, (head - 1) % LONG_WINDOW]
    st = 0.0
    sv = 0.0
    for k in range(n):
        idx = (head - 1 - k) % LONG_WINDOW
        st += (ring_t[s, idx] - t_ref) / _MS_PER_H
        sv += ring_v[s, idx]
    mt = st / n
    mv = sv / n
    stt = 0.0
    stv = 0.0
    for k in range(n):
        idx = (head - 1 - k) % LONG_WINDOW
        d = (ring_t[s, idx] - t_ref) / _MS_PER_H - mt
        stt += d * d
        stv += d * (ring_v[s, idx] - mv)
    if stt <= 0.0:
        return 0.0, 0.0
    slope = stv / stt
    return slope, x - (mv + slope * ((t - t_ref) / _MS_PER_H - mt))


@njit(cache=True)
def _trend(  # noqa: PLR0917 - numba helpers take positional arguments
    ring_v: NDArray[np.float64],
    ring_t: NDArray[np.int64],
    s: int,
    head: int,
    n: int,
    scratch: NDArray[np.float64],
) -> float:
    """Median of the last (up to 8) sample-to-sample rates, K/h."""
    m = min(n - 1, SHORT_WINDOW)
    for k in range(m):
        newer = (head - 1 - k) % LONG_WINDOW
        older = (head - 2 - k) % LONG_WINDOW
        dt_h = max((ring_t[s, newer] - ring_t[s, older]) / _MS_PER_H, MIN_DT_S / 3600.0)
        scratch[k] = (ring_v[s, newer] - ring_v[s, older]) / dt_h
    return _median(scratch, m)


@njit(cache=True)
def _update(  # noqa: PLR0917 - numba helpers take positional arguments
    slots: NDArray[np.int64],
    t_ms: NDArray[np.int64],
    temperature: NDArray[np.float64],
    ring_v: NDArray[np.float64],
    ring_t: NDArray[np.int64],
    istate: NDArray[np.int64],
    run_trend: NDArray[np.float64],
    out: NDArray[np.float32],
) -> None:
    """Features of each row from its slot's state, then the row joins that state (rows in order)."""
    scratch = np.empty(SHORT_WINDOW, dtype=np.float64)
    for i in range(slots.shape[0]):
        s = slots[i]
        x = temperature[i]
        t = t_ms[i]
        out[i, :] = 0.0
        if not np.isfinite(x):
            out[i, _MISSING] = 1.0
            continue
        head = istate[s, _HEAD]
        n = istate[s, _COUNT]
        repeat = False
        trend = 0.0
        if n > 0:
            newest = (head - 1) % LONG_WINDOW
            delta = x - ring_v[s, newest]
            dt_s = (t - ring_t[s, newest]) / 1000.0
            repeat = abs(delta) <= STUCK_EPS_K
            out[i, _DELTA] = delta
            out[i, _RATE] = delta / max(dt_s, MIN_DT_S)
            out[i, _DT] = dt_s
            out[i, _NPREV] = n
            if repeat:
                out[i, _STUCK] = istate[s, _RUN_LEN]
                out[i, _STUCK_TREND] = abs(run_trend[s]) * max(t - istate[s, _RUN_T], 0) / _MS_PER_H
        if n >= 2:
            n8 = min(n, SHORT_WINDOW)
            mean8, std8 = _mean_std(ring_v, s, head, n8)
            out[i, _Z8] = (x - mean8) / max(std8, STD_FLOOR_K)
            mean32, std32 = _mean_std(ring_v, s, head, n)
            out[i, _Z32] = (x - mean32) / max(std32, STD_FLOOR_K)
            for k in range(n8):
                scratch[k] = ring_v[s, (head - 1 - k) % LONG_WINDOW]
            out[i, _MED8] = x - _median(scratch, n8)
            trend = _trend(ring_v, ring_t, s, head, n, scratch)
            out[i, _TREND] = trend
        if n >= 3:
            slope, resid = _line(ring_v, ring_t, s, head, n, t, x)
            out[i, _SLOPE] = slope
            out[i, _RESID] = resid
        # Only now, after its own features, does the row join the state.
        if repeat:
            istate[s, _RUN_LEN] += 1
        else:
            # A new run of equal values starts here: remember the trend that led into it.
            istate[s, _RUN_LEN] = 1
            istate[s, _RUN_T] = t
            run_trend[s] = trend
        ring_v[s, head] = x
        ring_t[s, head] = t
        istate[s, _HEAD] = (head + 1) % LONG_WINDOW
        istate[s, _COUNT] = min(n + 1, LONG_WINDOW)


class DeviceSlots:
    """Maps device ids to dense slot numbers (0, 1, 2, ...) in order of first appearance."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._index

    def slot_for(self, device_id: str) -> int:
        """The slot of ``device_id``, assigning the next free one to a device seen for the first time."""
        found = self._index.get(device_id)
        if found is None:
            found = self._index[device_id] = len(self._index)
        return found

    def slots_for(self, device_ids: Sequence[str]) -> NDArray[np.int64]:
        """Slots of a batch of device ids, in order."""
        return np.fromiter((self.slot_for(d) for d in device_ids), dtype=np.int64, count=len(device_ids))


class FeatureState:
    """Rolling state of every device slot; the arrays grow (doubling) when a higher slot appears.

    Not thread-safe: one owner calls :meth:`update_and_features` at a time.
    """

    def __init__(self, capacity: int = 64) -> None:
        capacity = max(1, capacity)
        self.ring_v = np.zeros((capacity, LONG_WINDOW), dtype=np.float64)
        self.ring_t = np.zeros((capacity, LONG_WINDOW), dtype=np.int64)
        self.istate = np.zeros((capacity, 4), dtype=np.int64)
        self.run_trend = np.zeros(capacity, dtype=np.float64)

    @property
    def capacity(self) -> int:
        """Slots the arrays currently hold."""
        return int(self.istate.shape[0])

    def ensure(self, n_slots: int) -> None:
        """Grow the arrays so that slots ``0 .. n_slots - 1`` exist; new slots start empty."""
        if n_slots <= self.capacity:
            return
        grow = max(n_slots, 2 * self.capacity) - self.capacity
        self.ring_v = np.concatenate([self.ring_v, np.zeros((grow, LONG_WINDOW), dtype=np.float64)])
        self.ring_t = np.concatenate([self.ring_t, np.zeros((grow, LONG_WINDOW), dtype=np.int64)])
        self.istate = np.concatenate([self.istate, np.zeros((grow, 4), dtype=np.int64)])
        self.run_trend = np.concatenate([self.run_trend, np.zeros(grow, dtype=np.float64)])

    def history(self, slot: int) -> int:
        """Valid samples the slot holds (0..32)."""
        return int(self.istate[slot, _COUNT]) if 0 <= slot < self.capacity else 0

    def reset(self, slot: int) -> None:
        """Forget a slot's history (e.g. the device was re-installed elsewhere)."""
        if 0 <= slot < self.capacity:
            self.istate[slot, :] = 0
            self.run_trend[slot] = 0.0

    def update_and_features(
        self,
        slots: NDArray[np.integer],
        t_ms: NDArray[np.integer],
        temperature: NDArray[np.floating],
    ) -> NDArray[np.float32]:
        """Features of each reading (rows in order), then add the readings to their devices' history.

        ``slots``, ``t_ms`` (device time, ms) and ``temperature`` (°C, NaN for a dropout) have one entry
        per reading. Returns a float32 array of shape (n, :data:`N_FEATURES`).
        """
        slots64 = np.ascontiguousarray(slots, dtype=np.int64)
        t64 = np.ascontiguousarray(t_ms, dtype=np.int64)
        temp64 = np.ascontiguousarray(temperature, dtype=np.float64)
        n = slots64.shape[0]
        if slots64.ndim != 1 or t64.shape != (n,) or temp64.shape != (n,):
            raise ValueError("slots, t_ms and temperature must be 1-D arrays of the same length")
        out = np.empty((n, N_FEATURES), dtype=np.float32)
        if n == 0:
            return out
        if int(slots64.min()) < 0:
            raise ValueError("slots must be >= 0")
        self.ensure(int(slots64.max()) + 1)
        _update(slots64, t64, temp64, self.ring_v, self.ring_t, self.istate, self.run_trend, out)
        return out
