"""The rolling-feature loop, compiled by numba (:mod:`edge_agent.scoring.features` says what it computes).

Imported only where numba runs: the JIT fallback and the ahead-of-time build
(:mod:`edge_agent.scoring.compiled`). The agent normally runs the ahead-of-time module, so its process
never loads numba and LLVM (about 65 MB of resident memory).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from edge_agent.scoring.features import (
    COLUMN,
    LONG_WINDOW,
    MIN_DT_S,
    SHORT_WINDOW,
    STATE_COUNT,
    STATE_HEAD,
    STATE_RUN_LEN,
    STATE_RUN_T,
    STD_FLOOR_K,
    STUCK_EPS_K,
)

#: What the ahead-of-time build compiles ``update`` for: C-contiguous arrays, as FeatureState holds them.
UPDATE_SIGNATURE = "void(i8[::1], i8[::1], f8[::1], f8[:, ::1], i8[:, ::1], i8[:, ::1], f8[::1], f4[:, ::1])"

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
_HEAD, _COUNT, _RUN_LEN, _RUN_T = STATE_HEAD, STATE_COUNT, STATE_RUN_LEN, STATE_RUN_T
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
def update(  # noqa: PLR0917 - numba helpers take positional arguments
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
