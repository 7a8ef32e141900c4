"""The bulk histogram is exposed exactly as prometheus_client's own would be."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from cloud_ingest.metrics import LAG_BUCKETS, BulkHistogram


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


values = st.floats(min_value=0.0, max_value=200_000.0, allow_nan=False)


@given(st.lists(st.lists(values, max_size=40), max_size=5))
def test_bulk_observations_expose_the_same_buckets_count_and_sum(groups: list[list[float]]) -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=ours)
    one_by_one = Histogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=reference)
    for group in groups:
        bulk.observe_many(group)
        for v in group:
            one_by_one.observe(v)
    got, want = _samples(ours), _samples(reference)
    assert got.keys() == want.keys()
    sum_key = ("lag_seconds_sum", ())
    assert {k: v for k, v in got.items() if k != sum_key} == {k: v for k, v in want.items() if k != sum_key}
    # Summed in another order: equal up to rounding.
    assert abs(got[sum_key] - want[sum_key]) <= 1e-9 * max(1.0, want[sum_key])


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    registry = CollectorRegistry()
    BulkHistogram("h", "h", buckets=(1.0, 2.0), registry=registry).observe_many([1.0, 2.0, 2.5])
    s = _samples(registry)
    assert [s[("h_bucket", (("le", le),))] for le in ("1.0", "2.0", "+Inf")] == [1, 2, 3]
    assert s[("h_count", ())] == 3
