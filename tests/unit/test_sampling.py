"""Batch composition: the mixed split, DAPO dynamic sampling with hand-made rewards, the sources'
seeded epochs and resume state."""
from __future__ import annotations

import pytest

from rlsys.protocol import Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup
from rlsys.sampling import (BatchFill, BatchPlan, PromptSampler, ReplaySampler, SamplerState,
                            is_informative, plan_batch)


def _scored(rewards: list[float], uid: str = "p") -> ScoredGroup:
    rollouts = [Rollout([1], [2, 3], "x", [-0.1, -0.2], "stop", 0) for _ in rewards]
    return ScoredGroup(RolloutGroup(Prompt(uid, []), rollouts), RewardResult(list(rewards), {}))


@pytest.mark.parametrize("mode, b, frac, expected", [
    ("online", 16, None, BatchPlan(0, 16)),
    ("offline", 16, None, BatchPlan(16, 0)),
    ("mixed", 16, 0.25, BatchPlan(4, 12)),
    ("mixed", 4, 0.5, BatchPlan(2, 2)),
    ("mixed", 3, 0.5, BatchPlan(2, 1)),  # 1.5 rounds up (Python's round() gives 2 here too)
    ("mixed", 5, 0.5, BatchPlan(3, 2)),  # 2.5 rounds up (round() would give 2)
    ("mixed", 10, 0.3, BatchPlan(3, 7)),  # 0.3 * 10 = 3.0000000000000004
])
def test_plan_batch_split(mode, b, frac, expected):
    assert plan_batch(mode, b, frac) == expected


def test_mixed_split_is_honoured_exactly_in_one_round():
    fill = BatchFill(plan_batch("mixed", 8, 0.25))
    need = fill.request()
    assert need == BatchPlan(2, 6)
    fill.add([_scored([1, 1]), _scored([0, 1])], offline=True)  # all-equal kept: not dynamic
    fill.add([_scored([0, 0]) for _ in range(6)], offline=False)
    assert fill.request() is None
    m = fill.metrics()
    assert m["sampling/offline_fraction"] == 0.25
    assert (m["sampling/offline_groups"], m["sampling/online_groups"], m["sampling/batch_groups"]) == (2, 6, 8)
    assert (m["sampling/generated_groups"], m["sampling/replayed_groups"]) == (6, 2)
    assert m["sampling/dropped_groups"] == 0 and m["sampling/short_batch"] == 0 and m["sampling/rounds"] == 1
    assert m["sampling/online_reward_mean"] == 0.0
    assert fill.batch[:2] == fill.kept_offline


def test_is_informative():
    assert not is_informative([1.0, 1.0, 1.0])
    assert not is_informative([0, 0.0])
    assert is_informative([0.0, 0.5])


def test_dynamic_sampling_drops_uniform_groups_and_refills_each_source():
    fill = BatchFill(BatchPlan(2, 4), dynamic=True, max_extra_rounds=3)
    assert fill.request() == BatchPlan(2, 4)
    fill.add([_scored([1, 1]), _scored([0, 1])], offline=True)
    fill.add([_scored([0, 0]), _scored([1, 0]), _scored([0.5, 0.5]), _scored([1, 2])], offline=False)
    # One replayed and two online groups dropped: the next round asks exactly for those.
    assert fill.request() == BatchPlan(1, 2)
    fill.add([_scored([0, 2])], offline=True)
    fill.add([_scored([3, 3]), _scored([1, 0])], offline=False)
    assert fill.request() == BatchPlan(0, 1)
    fill.add([_scored([0, 1])], offline=False)
    assert fill.request() is None
    m = fill.metrics()
    assert m["sampling/rounds"] == 3 and m["sampling/short_batch"] == 0
    assert m["sampling/dropped_groups"] == 4 and m["sampling/drop_rate"] == pytest.approx(4 / 10)
    assert m["sampling/offline_fraction"] == pytest.approx(2 / 6)
    assert all(is_informative(sg.reward.rewards) for sg in fill.batch)
    assert len(fill.seen) == 10  # dropped groups are still recorded


def test_dynamic_sampling_bound_trains_on_what_there_is():
    fill = BatchFill(BatchPlan(0, 3), dynamic=True, max_extra_rounds=2)
    rounds = 0
    while (need := fill.request()) is not None:
        rounds += 1
        # One informative group in the first round, none afterwards.
        fill.add([_scored([0, 1] if rounds == 1 and i == 0 else [1, 1]) for i in range(need.online)], offline=False)
    assert rounds == 3  # the first round plus 2 extra
    m = fill.metrics()
    assert m["sampling/short_batch"] == 1 and m["sampling/batch_groups"] == 1
    assert m["sampling/generated_groups"] == 3 + 2 + 2 and m["sampling/dropped_groups"] == 6


def test_dynamic_sampling_without_extra_rounds_can_leave_an_empty_batch():
    fill = BatchFill(BatchPlan(0, 2), dynamic=True, max_extra_rounds=0)
    assert fill.request() == BatchPlan(0, 2)
    fill.add([_scored([1, 1]), _scored([0, 0])], offline=False)
    assert fill.request() is None and fill.batch == [] and fill.metrics()["sampling/drop_rate"] == 1.0


def test_replay_sampler_epochs_are_seeded_and_resume():
    groups = [RolloutGroup(Prompt(f"u{i}", []), []) for i in range(5)]
    a, b = ReplaySampler(groups, seed=3), ReplaySampler(groups, seed=3)
    first = [g.prompt.uid for g in a.take(7)]  # crosses into the second epoch
    assert first == [g.prompt.uid for g in b.take(7)]
    assert sorted(first[:5]) == [f"u{i}" for i in range(5)]
    assert a.state == SamplerState(1, 2)
    resumed = ReplaySampler(groups, seed=3)
    resumed.load_state(SamplerState(1, 2))
    assert [g.prompt.uid for g in resumed.take(3)] == [g.prompt.uid for g in a.take(3)]
    # Its own seed stream: not the same order the prompt sampler uses for the same seed.
    prompts = [g.prompt for g in groups]
    orders = {tuple(p.uid for p in PromptSampler(prompts, 5, seed).next_batch()) for seed in range(4)}
    replay_orders = {tuple(g.prompt.uid for g in ReplaySampler(groups, seed).take(5)) for seed in range(4)}
    assert orders != replay_orders
    with pytest.raises(ValueError, match="no recorded rollout groups"):
        ReplaySampler([], seed=0)
