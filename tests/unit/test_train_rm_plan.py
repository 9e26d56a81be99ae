"""How `rlsys train-rm` splits its pairs (launch/train_rm.py): the seeded hold-out and the
per-rank shards."""
from __future__ import annotations

from launch.train_rm import holdout_split, shard


def test_holdout_is_seeded_disjoint_and_keeps_file_order():
    train, held = holdout_split(20, 0.25, seed=3)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    assert train == sorted(train) and held == sorted(held)
    assert holdout_split(20, 0.25, seed=3) == (train, held)
    assert holdout_split(20, 0.25, seed=4)[1] != held


def test_holdout_edges():
    assert holdout_split(10, 0.0, seed=0) == (list(range(10)), [])
    assert len(holdout_split(3, 0.01, seed=0)[1]) == 1  # share > 0 holds out at least one
    assert holdout_split(1, 0.5, seed=0) == ([0], [])  # never the only row


def test_shards_are_round_robin_one_per_rank():
    assert shard(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard([1], 2) == [[1], []]
