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

The loop itself is :func:`edge_agent.scoring.kernels.update`. :class:`FeatureState` runs whichever
build of it it is given: the agent's ahead-of-time module (:mod:`edge_agent.scoring.compiled`, no numba
in the process), or by default numba's JIT build in this process (:func:`jit_kernel`). Both are
compiled by numba from the same source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
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
#: Per-slot integer state columns (:attr:`FeatureState.istate`).
STATE_HEAD, STATE_COUNT, STATE_RUN_LEN, STATE_RUN_T = range(4)


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


#: ``update(slots, t_ms, temperature, ring_v, ring_t, istate, run_trend, out)``: one build of the loop.
UpdateKernel = Callable[
    [
        NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64],
        NDArray[np.int64], NDArray[np.float64], NDArray[np.float32],
    ],
    None,
]  # fmt: skip


def jit_kernel() -> UpdateKernel:
    """The loop as numba's JIT builds it in this process (loads numba; numba caches the machine code)."""
    from edge_agent.scoring.kernels import update  # noqa: PLC0415 - numba is loaded only when asked for

    return update


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

    def __init__(self, capacity: int = 64, *, kernel: UpdateKernel | None = None) -> None:
        self.kernel = kernel
        """The build of the loop to run; None: :func:`jit_kernel`, on first use."""
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
        return int(self.istate[slot, STATE_COUNT]) if 0 <= slot < self.capacity else 0

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
        if self.kernel is None:
            self.kernel = jit_kernel()
        self.kernel(slots64, t64, temp64, self.ring_v, self.ring_t, self.istate, self.run_trend, out)
        return out
