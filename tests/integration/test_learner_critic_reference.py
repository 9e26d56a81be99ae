"""The PPO critic (2 DeepSpeed ranks as Ray actors) and the reference actor on the tiny model.

- Reference log-probs equal a fresh ZeRO-3 learner's log-probs (same weights, float32), so the
  KL term starts at exactly 0.
- Critic: values come out per response token; a train_step reports the same value loss on
  both ranks, lowers the loss on the next step and moves the values towards the returns.
"""
from __future__ import annotations

import os

import pytest

from test_learner_group import (make_samples, on_all, ray_local, shard, start_dp_group,  # noqa: F401
                                start_group, trainer_and_rest)

pytestmark = pytest.mark.integration


def test_reference_matches_learner(ray_local, tiny_model_dir):  # noqa: F811
    from actors.reference import ReferenceActor
    from rlsys.specs import ReferenceSpec

    ray = ray_local
    samples = make_samples(str(tiny_model_dir), 5, seed=2)
    ref = ray.remote(num_cpus=1)(ReferenceActor).remote(ReferenceSpec(str(tiny_model_dir), "float32", micro_batch_size=2))
    group = start_group(ray, str(tiny_model_dir), 2, zero_stage=3)
    ref_lp = ray.get(ref.compute_logprobs.remote(samples))
    lps = on_all(ray, group, "compute_logprobs", *[(b.samples,) for (b,) in shard(samples, 2)])
    learner_lp = lps[0] + lps[1]
    assert [t.shape[0] for t in ref_lp] == [s.response_length for s in samples]
    diff = max((a - b).abs().max().item() for a, b in zip(ref_lp, learner_lp))
    print(f"\nmax |reference - learner(ZeRO-3)| log-prob: {diff:.2e}")
    assert diff < 1e-5
    for a in group + [ref]:
        ray.kill(a)


def test_critic_two_ranks(ray_local, tiny_model_dir):  # noqa: F811
    import torch

    from actors.critic import CriticActor
    from rlsys.specs import CriticSpec

    ray = ray_local
    samples = make_samples(str(tiny_model_dir), 6, seed=3)
    for s in samples:
        s.returns = torch.full((s.response_length,), 1.0)
    # Gradient checkpointing and the loss aggregation reach the critic from its spec.
    trainer, _ = trainer_and_rest(str(tiny_model_dir), dict(
        zero_stage=2, lr=1e-3, dtype="float32", micro_batch_size=2, seed=0, gradient_checkpointing=True,
        loss_agg="seq_mean_token_mean"))
    group = start_dp_group(ray, CriticActor, CriticSpec(trainer, value_clip=0.5), 2)
    info = ray.get(group[0].ready.remote())
    assert info.gradient_checkpointing is True and info.loss_agg == "seq_mean_token_mean"
    v0 = on_all(ray, group, "compute_values", *[(b.samples,) for (b,) in shard(samples, 2)])
    assert [t.shape[0] for t in v0[0] + v0[1]] == [s.response_length for s in samples]
    m1 = on_all(ray, group, "train_step", *shard(samples, 2))
    assert m1[0].value_loss == m1[1].value_loss and m1[0].skipped == 0
    m2 = on_all(ray, group, "train_step", *shard(samples, 2))
    v2 = on_all(ray, group, "compute_values", *[(b.samples,) for (b,) in shard(samples, 2)])
    err0 = torch.cat(v0[0] + v0[1]).sub(1.0).abs().mean().item()
    err2 = torch.cat(v2[0] + v2[1]).sub(1.0).abs().mean().item()
    print(f"\ncritic loss {m1[0].value_loss:.4f} -> {m2[0].value_loss:.4f}; |V - R| {err0:.4f} -> {err2:.4f}")
    assert m2[0].value_loss < m1[0].value_loss and err2 < err0
    for a in group:
        ray.kill(a)
