"""How a train batch is split over learner ranks: prompt groups stay whole (so packing runs each
group's prompt once), the split balances packed tokens, and batch order holds within a rank."""
import torch

from rlsys.distributed.clients import shard_samples
from rlsys.models.packing import plan_rows
from rlsys.protocol import TrainSample


def sample(group: int, prompt_len: int, response_len: int) -> TrainSample:
    # The prompt's ids identify the group (what packing keys on); responses differ per sample.
    prompt = [100 + group] * prompt_len
    ids = torch.tensor(prompt + list(range(response_len)), dtype=torch.long)
    zeros = torch.zeros(response_len)
    return TrainSample(ids, prompt_len, [], zeros, zeros, group_index=group)


def batch(lengths_per_group: list[list[int]], prompt_len: int = 10) -> list[TrainSample]:
    return [sample(g, prompt_len, r) for g, lens in enumerate(lengths_per_group) for r in lens]


def groups_of(shard: list[TrainSample]) -> list[int]:
    return [s.group_index for s in shard]


def test_one_rank_keeps_the_batch_in_order():
    samples = batch([[5, 20], [30, 1], [7, 7]])
    (only,) = shard_samples(samples, 1)
    assert [id(s) for s in only] == [id(s) for s in samples]


def test_groups_stay_whole_and_ranks_balance_packed_tokens():
    # Packed tokens per group = prompt 10 + its responses: g0 10+40=50, g1 10+10=20, g2 10+25=35,
    # g3 10+5=15. Largest first to the lightest rank: g0 -> r0 (50), g2 -> r1 (35), g1 -> r1 (55),
    # g3 -> r0 (65). Each rank keeps batch order: r0 [g0, g3], r1 [g1, g2].
    samples = batch([[20, 20], [5, 5], [10, 15], [2, 3]])
    r0, r1 = shard_samples(samples, 2)
    assert groups_of(r0) == [0, 0, 3, 3]
    assert groups_of(r1) == [1, 1, 2, 2]
    assert [s.response_length for s in r1] == [5, 5, 10, 15]


def test_packing_sees_one_row_per_group_in_each_micro_batch():
    # The old split sorted the whole batch by length: a micro-batch of 4 then mixed the groups'
    # samples and carried up to 4 prompts instead of 1 (the small model fed ~2x its tokens).
    samples = batch([[9, 1, 5, 3], [2, 8, 4, 6], [7, 7, 1, 2], [3, 3, 3, 9]])
    for shard in shard_samples(samples, 2):
        for k in range(0, len(shard), 4):
            assert len(plan_rows(shard[k:k + 4])) == 1


def test_fewer_groups_than_ranks_deals_samples_round_robin_by_length():
    samples = batch([[1, 4, 2, 3]])  # one group, two ranks: it has to be split
    r0, r1 = shard_samples(samples, 2)
    assert [s.response_length for s in r0] == [4, 2]
    assert [s.response_length for s in r1] == [3, 1]
