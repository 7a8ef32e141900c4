"""The order measure the agent tests rely on: how many ascending streams a device's readings form."""

from __future__ import annotations

import pytest

from tests.edge_agent.cloud_side import longest_decreasing


@pytest.mark.parametrize(
    ("seqs", "streams"),
    [
        ([], 0),
        ([1, 2, 3, 4], 1),
        ([1, 1, 2], 1),  # not strictly decreasing: one stream (the collector checks uniqueness apart)
        ([5, 6, 1, 7, 2, 3], 2),  # live 5, 6, 7 sent before backfill 1, 2, 3
        ([3, 2, 1], 3),
        ([10, 11, 1, 12, 2, 0], 3),  # 11 > 1 > 0: a third stream, which the agent never makes
    ],
)
def test_longest_decreasing_counts_the_ascending_streams_a_sequence_needs(
    seqs: list[int], streams: int
) -> None:
    assert longest_decreasing(seqs) == streams
