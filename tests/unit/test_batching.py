"""Scored groups -> TrainBatch: advantages by hand, alignment of token fields, KL-in-reward."""
import pytest
import torch

from rlsys.batching import build_train_batch, carries_gradient
from rlsys.config import AlgorithmConfig
from rlsys.protocol import Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup


def _group(uid, rewards, lengths, prompt_len=3, ref=False):
    rollouts = [Rollout(list(range(100, 100 + prompt_len)), list(range(1, n + 1)), "x",
                        [-0.5] * n, "stop" if n < 4 else "length", policy_version=2)
                for n in lengths]
    g = RolloutGroup(Prompt(uid, [{"role": "user", "content": "q"}], answer="1"), rollouts)
    refs = [[-0.7] * n for n in lengths] if ref else None
    return ScoredGroup(g, RewardResult(list(rewards), {"accuracy": list(rewards)}), ref_logprobs=refs)


def test_grpo_batch_advantages_and_layout():
    scored = [_group("a", [1.0, 0.0], [2, 4]), _group("b", [1.0, 1.0, 1.0], [1, 1, 3])]
    batch, stats = build_train_batch(scored, AlgorithmConfig(), "grpo", policy_version=5)
    assert len(batch.samples) == 5 and batch.policy_version == 5
    s0, s1 = batch.samples[:2]
    # group a: mean 0.5, unbiased std sqrt(0.5) -> +-0.5/0.7071 = +-0.7071
    assert torch.allclose(s0.advantages, torch.full((2,), 0.70710677), atol=1e-4)
    assert torch.allclose(s1.advantages, torch.full((4,), -0.70710677), atol=1e-4)
    # group b has zero variance -> zero advantages
    assert all(float(s.advantages.abs().sum()) == 0 for s in batch.samples[2:])
    assert s1.input_ids.tolist() == [100, 101, 102, 1, 2, 3, 4] and s1.response_start == 3
    assert s1.old_logprobs.shape == (4,) and s1.response_length == 4
    assert [s.group_index for s in batch.samples] == [0, 0, 1, 1, 1]
    assert stats.reward_mean == pytest.approx(0.8)
    assert stats.zero_variance_group_frac == pytest.approx(0.5)
    assert stats.truncated_frac == pytest.approx(0.2)
    assert stats.response_length_mean == pytest.approx(11 / 5)


def test_rloo_leave_one_out():
    batch, _ = build_train_batch([_group("a", [1.0, 0.0, 0.0], [1, 1, 1])], AlgorithmConfig(name="rloo"),
                                 "rloo", 0)
    assert [round(float(s.advantages[0]), 4) for s in batch.samples] == [1.0, -0.5, -0.5]


def test_kl_in_reward_penalises_tokens_for_reinforce_pp():
    algo = AlgorithmConfig(name="reinforce_pp", kl_coef=0.1, kl_in_reward=True, kl_estimator="k1")
    batch, stats = build_train_batch([_group("a", [1.0, 0.0], [2, 2], ref=True)], algo, "reinforce_pp", 0)
    # k1 = logp - ref = -0.5 - (-0.7) = 0.2 per token -> penalty -0.02 per token
    assert stats.kl_penalty_mean == pytest.approx(-0.02, abs=1e-6)
    assert batch.samples[0].ref_logprobs.tolist() == pytest.approx([-0.7, -0.7])


def test_a_batch_of_equal_rewards_carries_no_gradient():
    equal = [_group("a", [1.0, 1.0], [2, 3]), _group("b", [0.0, 0.0, 0.0], [1, 1, 3])]
    batch, _ = build_train_batch(equal, AlgorithmConfig(), "grpo", 0)
    assert not carries_gradient(batch, AlgorithmConfig(), with_critic=False)
    # any other loss term still trains on it
    assert carries_gradient(batch, AlgorithmConfig(entropy_coef=0.01), with_critic=False)
    assert carries_gradient(batch, AlgorithmConfig(kl_coef=0.1), with_critic=False)
    assert not carries_gradient(batch, AlgorithmConfig(kl_coef=0.1, kl_in_reward=True), with_critic=False)
    assert carries_gradient(batch, AlgorithmConfig(), with_critic=True)
    # one group with a reward spread is enough
    mixed, _ = build_train_batch([*equal, _group("c", [1.0, 0.0], [2, 2])], AlgorithmConfig(), "grpo", 0)
    assert carries_gradient(mixed, AlgorithmConfig(), with_critic=False)
