"""Scored rollout groups -> advantages -> the learner's TrainBatch. Pure torch, no Ray."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlsys.algorithms import ADVANTAGES, AdvantageInputs, AdvantageOutputs, AdvantageParams, get_kl_estimator
from rlsys.config import AlgorithmConfig
from rlsys.models.forward import pad_rows
from rlsys.plugins import resolve
from rlsys.protocol import ScoredGroup, TrainBatch, TrainSample


@dataclass
class BatchStats:
    """Per-step statistics of the batch, computed where the numbers are (not re-derived later)."""

    reward_mean: float
    reward_std: float
    response_length_mean: float
    truncated_frac: float
    advantage_abs_mean: float
    zero_variance_group_frac: float
    kl_penalty_mean: float = 0.0


def _check_advantage_outputs(out, shape: tuple[int, int], estimator: str) -> None:
    # A user estimator's mistake is reported here, naming it, not as a shape error in the learner.
    if not (isinstance(out, AdvantageOutputs) and tuple(out.advantages.shape) == shape
            and tuple(out.returns.shape) == shape):
        raise ValueError(f"advantage estimator {estimator!r} must return AdvantageOutputs(advantages, "
                         f"returns), each [N, R] = {list(shape)}; got {out!r:.200}")


def build_train_batch(scored: list[ScoredGroup], algo: AlgorithmConfig, estimator: str,
                      policy_version: int) -> tuple[TrainBatch, BatchStats]:
    """Flattens B groups into N samples, computes advantages with `estimator` (a registered name
    or a user 'file.py:function' / 'module:function' of the same signature), returns the batch.

    With `algo.kl_in_reward`, -kl_coef * KL(behaviour || reference) per token is added to the
    token rewards (the estimators that take token rewards fold it in; grpo/rloo reject it).
    """
    rollouts = [(gi, sg, r) for gi, sg in enumerate(scored) for r in sg.group.rollouts]
    lengths = [len(r.response_token_ids) for _, _, r in rollouts]
    width = max(lengths)
    mask = torch.zeros(len(rollouts), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    rewards = torch.tensor([sg.reward.rewards[j] for sg in scored for j in range(sg.group.size)],
                           dtype=torch.float32)
    group_index = torch.tensor([gi for gi, _, _ in rollouts], dtype=torch.long)
    behaviour = pad_rows([r.behaviour_logprobs for _, _, r in rollouts], width)
    ref = None
    if scored[0].ref_logprobs is not None:
        ref = pad_rows([lp for sg in scored for lp in sg.ref_logprobs], width)
    values = None
    if scored[0].values is not None:
        values = pad_rows([v for sg in scored for v in sg.values], width)
    token_rewards = None
    kl_penalty = 0.0
    if algo.kl_in_reward and algo.kl_coef > 0 and ref is not None:
        kl = get_kl_estimator(algo.kl_estimator)(behaviour, ref, mask)
        token_rewards = torch.where(mask, -algo.kl_coef * kl, 0.0)
        kl_penalty = float(token_rewards.sum() / mask.sum())
    params = AdvantageParams(norm_by_std=algo.norm_adv_by_std, gamma=algo.gamma, lam=algo.lam)
    out = resolve(ADVANTAGES, estimator)(AdvantageInputs(rewards, group_index, mask, values, token_rewards), params)
    _check_advantage_outputs(out, tuple(mask.shape), estimator)

    samples = []
    for i, (gi, sg, r) in enumerate(rollouts):
        n = lengths[i]
        ids = torch.tensor(list(r.prompt_token_ids) + list(r.response_token_ids), dtype=torch.long)
        samples.append(TrainSample(
            input_ids=ids, response_start=len(r.prompt_token_ids), images=sg.group.prompt.images,
            old_logprobs=behaviour[i, :n].clone(), advantages=out.advantages[i, :n].clone(),
            ref_logprobs=None if ref is None else ref[i, :n].clone(),
            returns=out.returns[i, :n].clone() if values is not None else None,
            values=None if values is None else values[i, :n].clone(),
            policy_version=r.policy_version, group_index=gi))
    stats = BatchStats(
        reward_mean=float(rewards.mean()), reward_std=float(rewards.std(unbiased=False)),
        response_length_mean=float(sum(lengths) / len(lengths)),
        truncated_frac=sum(r.finish_reason == "length" for _, _, r in rollouts) / len(rollouts),
        advantage_abs_mean=float(out.advantages.abs()[mask].mean()),
        zero_variance_group_frac=sum(len(set(sg.reward.rewards)) <= 1 for sg in scored) / len(scored),
        kl_penalty_mean=kl_penalty)
    return TrainBatch(samples=samples, policy_version=policy_version), stats


def carries_gradient(batch: TrainBatch, algo: AlgorithmConfig, with_critic: bool) -> bool:
    """False when the update's gradient is exactly 0: every advantage is 0 (each group's rewards
    were equal) and no KL, entropy or critic term trains. Adam would still move the weights on
    such a batch, replaying its momentum with no data behind it, so the driver skips the update."""
    if with_critic or algo.entropy_coef > 0 or (algo.kl_coef > 0 and not algo.kl_in_reward):
        return True
    return any(bool(s.advantages.abs().sum() > 0) for s in batch.samples)
