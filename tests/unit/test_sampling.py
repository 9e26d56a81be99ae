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


def _generated(tokens: int, generation_s: float, samples: int = 2) -> ScoredGroup:
    rollouts = [Rollout([1], [7] * tokens, "x", [-0.1] * tokens, "stop", 0) for _ in range(samples)]
    group = RolloutGroup(Prompt("g", []), rollouts, generation_s=generation_s)
    return ScoredGroup(group, RewardResult([float(i) for i in range(samples)], {}))


def test_generation_throughput_counts_engine_time_not_the_drivers_wait():
    """Two dynamic-sampling rounds. Round 1: two engines side by side, their calls' last groups
    finishing after 2.0 s and 3.0 s of generation (an earlier group of the 3.0 s call reports
    1.0 s); round 2: one call, 1.0 s. Engine time: 3.0 + 1.0 = 4.0 s. Tokens: (3 + 5 + 4) * 2
    plus the dropped group's 2 * 2 in round 1, 6 * 2 in round 2 = 40. Replayed groups count
    neither. The driver waited 0.05 s for generation (the rest happened during the previous
    step): the rate is 40 / 4 = 10 tokens/s, not 40 / 0.05."""
    from rlsys.driver import _throughput

    fill = BatchFill(BatchPlan(1, 4), dynamic=True, max_extra_rounds=1)
    assert fill.request() == BatchPlan(1, 4)
    fill.add([_generated(50, 9.0)], offline=True)  # a recorded group's old engine time: not this run's
    fill.add([_generated(3, 1.0), _generated(5, 3.0), _generated(4, 2.0), _scored([1, 1])], offline=False)
    assert fill.request() == BatchPlan(0, 1)  # the uniform group was dropped
    fill.add([_generated(6, 1.0)], offline=False)
    assert fill.stats.generated_tokens == 40
    assert fill.stats.generation_s == 4.0
    assert fill.stats.gen_tokens_per_s == 40 / 4.0
    times = {"time/step": 2.0, "time/generate": 0.05}
    assert _throughput(fill, times)["throughput/gen_tokens_per_s"] == 10.0


def test_generation_throughput_is_zero_without_generation():
    fill = BatchFill(BatchPlan(1, 0))
    fill.request()
    fill.add([_generated(5, 2.0)], offline=True)
    assert fill.stats.gen_tokens_per_s == 0.0
