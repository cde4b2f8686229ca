"""stream_plan: the pure rules of streaming (sharding units across ranks x DataLoader workers)."""

from __future__ import annotations

import pytest

from conveyor.trainer.data.stream_plan import shard


def test_shard_is_disjoint_equal_and_drops_the_tail() -> None:
    items = list(range(23))
    shards = [shard(items, rank, 2, worker, 2) for rank in range(2) for worker in range(2)]
    assert [len(s) for s in shards] == [5, 5, 5, 5]
    seen = [i for s in shards for i in s]
    assert len(set(seen)) == 20 and set(seen) <= set(items)
    assert shard(items, 0, 1) == items
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard(items, 2, 2)
