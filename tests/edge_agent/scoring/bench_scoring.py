"""Throughput and latency of the scoring stage on one thread.

Run: ``python -m tests.edge_agent.scoring.bench_scoring``.

Readings come from a synthetic fleet (a slow random walk per device, 0.1 % spikes, a few dropouts) fed
in arrival order: each batch holds consecutive readings of many devices, as the agent sees them.
Reports readings/s at batch 256 for features alone, the model alone, the whole scorer (features +
model) and the rules-only scorer, and per-call latency at batch 1.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from edge_agent.scoring.features import FeatureState
from edge_agent.scoring.keys import load_public_key
from edge_agent.scoring.model import load_model
from edge_agent.scoring.scorer import Scorer
from tests.edge_agent.scoring.conftest import SHIPPED, SHIPPED_KEY

DEVICES = 1000
ROWS = 256_000
BATCH = 256
T0 = 1_795_000_000_000


def _fleet(rows: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    slots = np.tile(np.arange(DEVICES, dtype=np.int64), rows // DEVICES + 1)[:rows]
    t = T0 + 10_000 * (np.arange(rows, dtype=np.int64) // DEVICES)
    walk = np.cumsum(rng.normal(0.0, 0.02, size=rows).reshape(-1, DEVICES), axis=0).reshape(-1)[:rows]
    temp = np.round(5.0 + walk, 2)
    temp[rng.random(rows) < 0.001] += 20.0
    temp[rng.random(rows) < 0.001] = np.nan
    return slots, t, temp


def _rate(run: Callable[[slice], object], rows: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, rows, batch):
        run(slice(i, i + batch))
    return rows / (time.perf_counter() - start)


def main() -> None:
    """Print the figures."""
    model = load_model(SHIPPED, [load_public_key(SHIPPED_KEY)])
    slots, t, temp = _fleet(ROWS)
    FeatureState().update_and_features(slots[:10], t[:10], temp[:10])  # compile (or load the cache)
    features_all = FeatureState().update_and_features(slots, t, temp)
    present = features_all[~np.isnan(temp)]

    state = FeatureState()
    results = {
        "features only": _rate(lambda s: state.update_and_features(slots[s], t[s], temp[s]), ROWS, BATCH),
        "model only (ONNX)": _rate(lambda s: model.infer(present[s]), present.shape[0], BATCH),
    }
    scorer = Scorer(model)
    results["scorer: features + model"] = _rate(lambda s: scorer.score(slots[s], t[s], temp[s]), ROWS, BATCH)
    rules = Scorer(None)
    results["scorer: rules only"] = _rate(lambda s: rules.score(slots[s], t[s], temp[s]), ROWS, BATCH)
    print(f"batch {BATCH}, {ROWS} readings of {DEVICES} devices, one thread:")
    for name, rate in results.items():
        print(f"  {name:28s} {rate:12,.0f} readings/s")

    one = Scorer(model)
    times = []
    for i in range(20_000):
        start = time.perf_counter_ns()
        one.score(slots[i : i + 1], t[i : i + 1], temp[i : i + 1])
        times.append(time.perf_counter_ns() - start)
    times.sort()
    p50, p99 = statistics.median(times) / 1000, times[int(0.99 * len(times))] / 1000
    print(f"batch 1, scorer (features + model): p50 {p50:.1f} µs, p99 {p99:.1f} µs per call")
    infer = []
    for i in range(20_000):
        start = time.perf_counter_ns()
        model.infer(present[i : i + 1])
        infer.append(time.perf_counter_ns() - start)
    print(f"batch 1, model only: p50 {statistics.median(infer) / 1000:.1f} µs per call")


if __name__ == "__main__":
    main()
