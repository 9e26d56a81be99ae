"""Advantage estimators. Pure torch; every estimator has the signature

    fn(inputs: AdvantageInputs, params: AdvantageParams) -> AdvantageOutputs

Shapes: N sequences (B prompts x G samples, groups may differ in size), R response tokens.
Only positions where `response_mask` is true are read; everything else may hold garbage
(even NaN/inf) and the outputs are exactly 0 there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .registry import Registry

ADVANTAGES = Registry("advantage estimator")


@dataclass
class AdvantageInputs:
    """rewards:       [N] float, one scalar score per sequence.
    group_index:   [N] long, which prompt each sequence belongs to (any ids, any group sizes).
    response_mask: [N, R] bool/0-1, true on response tokens that are trained on.
    values:        [N, R] critic values V(s_t) (gae only).
    token_rewards: [N, R] per-token reward added to the sequence reward, e.g. -kl_coef * kl
                   (reinforce_pp and gae only; the sign is the caller's, it is added as is).
    """

    rewards: Tensor
    group_index: Tensor
    response_mask: Tensor
    values: Optional[Tensor] = None
    token_rewards: Optional[Tensor] = None


@dataclass
class AdvantageParams:
    """norm_by_std: grpo divides by the group std (False = Dr.GRPO, mean-centering only).
    eps:         added to a std before dividing (grpo and whitening).
    gamma:       discount per valid token (reinforce_pp, gae).
    lam:         GAE lambda.
    whiten:      whiten advantages over all valid tokens of the batch (reinforce_pp, gae).
    """

    norm_by_std: bool = True
    eps: float = 1e-6
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True


@dataclass
class AdvantageOutputs:
    """advantages: [N, R]; returns: [N, R] (value targets for a critic; for the critic-free
    grpo/rloo they equal the advantages). Both are 0 outside the response mask."""

    advantages: Tensor
    returns: Tensor


def get_advantage(name: str):
    """The advantage estimator registered as `name`; UnknownNameError lists allowed names."""
    return ADVANTAGES.lookup(name)


# ---------------------------------------------------------------- helpers


def _float_rewards(rewards: Tensor) -> Tensor:
    # At least fp32: group statistics of bf16 scores lose too much precision.
    return rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))


def _check_shapes(inputs: AdvantageInputs) -> Tensor:
    """The response mask as bool [N, R], after checking every input against it."""
    mask = inputs.response_mask
    if mask.dim() != 2:
        raise ValueError(f"response_mask must be [N, R], got shape {tuple(mask.shape)}")
    for name in ("rewards", "group_index"):
        shape = tuple(getattr(inputs, name).shape)
        if shape != (mask.shape[0],):
            raise ValueError(f"{name} must be [N]=({mask.shape[0]},), got {shape}")
    for name in ("values", "token_rewards"):
        t = getattr(inputs, name)
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} must be [N, R]={tuple(mask.shape)}, got {tuple(t.shape)}")
    return mask.bool()


def _group_stats(rewards: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (group size, group sum, unbiased group std), each [N].

    Group ids are arbitrary (not necessarily 0..B-1), so they are compacted first.
    A group of size 1 has std 0 (not NaN) so callers never divide garbage.
    """
    uniq, inv = torch.unique(group_index, return_inverse=True)
    count = rewards.new_zeros(len(uniq)).index_add_(0, inv, torch.ones_like(rewards))
    total = rewards.new_zeros(len(uniq)).index_add_(0, inv, rewards)
    centred = rewards - (total / count)[inv]
    sq = rewards.new_zeros(len(uniq)).index_add_(0, inv, centred**2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return count[inv], total[inv], std[inv]


def _broadcast(per_seq: Tensor, mask: Tensor) -> Tensor:
    """[N] -> [N, R], zero outside the mask."""
    return torch.where(mask, per_seq[:, None].expand(mask.shape), 0.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - mean) / (std + eps) over the valid tokens of the whole batch; 0 outside the mask.

    x, mask: [N, R]. Population (biased) std: a batch has thousands of tokens, so Bessel's
    correction is immaterial, and it keeps the one-token case finite.
    """
    mask = mask.bool()
    n = mask.sum()
    if n == 0:
        return torch.zeros_like(x)
    xv = torch.where(mask, x, 0.0)
    mean = xv.sum() / n
    centred = torch.where(mask, xv - mean, 0.0)
    std = ((centred**2).sum() / n).sqrt()
    return centred / (std + eps)


def _token_level_rewards(inputs: AdvantageInputs, mask: Tensor) -> Tensor:
    """[N, R]: token_rewards on valid tokens, plus the sequence reward on the last valid token."""
    rewards = _float_rewards(inputs.rewards)
    tok = rewards.new_zeros(mask.shape)
    if inputs.token_rewards is not None:
        # detached: a KL penalty used as reward must not backpropagate through the advantage
        tok = torch.where(mask, inputs.token_rewards.detach().to(rewards.dtype), 0.0)
    if mask.shape[1] == 0:
        return tok
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)
    last = torch.where(mask, positions, -1).max(dim=1).values  # -1: no valid token
    is_last = (positions == last[:, None]) & mask
    return tok + torch.where(is_last, rewards[:, None].expand(mask.shape), 0.0)


def _reject_token_rewards(name: str, inputs: AdvantageInputs) -> None:
    # Silently dropping a KL penalty would train a different objective than configured.
    if inputs.token_rewards is not None:
        raise ValueError(
            f"advantage estimator {name!r} takes sequence rewards only; use the KL as a loss "
            "term, or choose reinforce_pp/gae to fold token_rewards into the return"
        )


# ---------------------------------------------------------------- estimators


@ADVANTAGES.register("grpo")
def grpo(inputs: AdvantageInputs, params: AdvantageParams) -> AdvantageOutputs:
    """A_i = (r_i - mean_group(r)) / (std_group(r) + eps), or r_i - mean_group(r) when
    norm_by_std is False (Dr.GRPO). std is unbiased; a group of size 1 gets 0.
    Broadcast to every valid token: advantages, returns [N, R]."""
    _reject_token_rewards("grpo", inputs)
    mask = _check_shapes(inputs)
    r = _float_rewards(inputs.rewards)
    count, total, std = _group_stats(r, inputs.group_index)
    adv = r - total / count  # exactly 0 for singleton groups
    if params.norm_by_std:
        adv = adv / (std + params.eps)
    out = _broadcast(adv, mask)
    return AdvantageOutputs(out, out.clone())


@ADVANTAGES.register("rloo")
def rloo(inputs: AdvantageInputs, params: AdvantageParams) -> AdvantageOutputs:
    """A_i = r_i - mean_{j != i, same group} r_j = (G r_i - sum_group r) / (G - 1);
    a group of size 1 has no baseline and gets 0. Broadcast to valid tokens: [N, R]."""
    _reject_token_rewards("rloo", inputs)
    mask = _check_shapes(inputs)
    r = _float_rewards(inputs.rewards)
    count, total, _ = _group_stats(r, inputs.group_index)
    loo = (count * r - total) / (count - 1).clamp(min=1)
    adv = torch.where(count > 1, loo, torch.zeros_like(r))
    out = _broadcast(adv, mask)
    return AdvantageOutputs(out, out.clone())


def _reverse_scan(mask: Tensor, init: tuple[Tensor, ...], step) -> Tensor:
    """Right-to-left scan over response positions that skips masked ones.

    `step(t, carry) -> (out_t [N], new_carry)`; carry starts at `init` (tuple of [N]).
    Masked positions are transparent (the carry passes through unchanged and the output is 0),
    so holes in the mask (e.g. tool outputs inside a multi-turn response) behave as if those
    tokens were absent, and trailing padding needs no special case. Returns [N, R].
    """
    outs, carry = [], init
    for t in range(mask.shape[1] - 1, -1, -1):
        val, new = step(t, carry)
        m = mask[:, t]
        outs.append(torch.where(m, val, 0.0))
        carry = tuple(torch.where(m, n, c) for n, c in zip(new, carry))
    if not outs:
        return torch.zeros(mask.shape, dtype=init[0].dtype, device=mask.device)
    return torch.stack(outs[::-1], dim=1)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs, params: AdvantageParams) -> AdvantageOutputs:
    """REINFORCE++: per-token reward = token_rewards (e.g. -kl_coef*kl) + the sequence reward
    on the last valid token; returns G_t = sum_{k>=t, valid} gamma^(#valid tokens between) r_k;
    advantages = G whitened over all valid tokens of the batch (params.whiten), no critic.
    advantages, returns: [N, R]."""
    mask = _check_shapes(inputs)
    rew = _token_level_rewards(inputs, mask)
    zeros = rew.new_zeros(mask.shape[0])

    def step(t, carry):
        g = rew[:, t] + params.gamma * carry[0]
        return g, (g,)

    returns = _reverse_scan(mask, (zeros,), step)
    adv = masked_whiten(returns, mask, params.eps) if params.whiten else returns.clone()
    return AdvantageOutputs(adv, returns)


@ADVANTAGES.register("gae")
def gae(inputs: AdvantageInputs, params: AdvantageParams) -> AdvantageOutputs:
    """PPO generalised advantage estimation over valid tokens.

    r_t = token_rewards_t (+ sequence reward on the last valid token);
    delta_t = r_t + gamma * V_next - V_t (V_next = 0 after the last valid token);
    A_t = delta_t + gamma * lam * A_next; returns = A + V (before whitening);
    advantages whitened over valid tokens when params.whiten. values required: [N, R].
    """
    if inputs.values is None:
        raise ValueError("advantage estimator 'gae' needs inputs.values (critic values [N, R])")
    mask = _check_shapes(inputs)
    rew = _token_level_rewards(inputs, mask)
    values = torch.where(mask, inputs.values.detach().to(rew.dtype), 0.0)
    zeros = rew.new_zeros(mask.shape[0])

    def step(t, carry):
        next_v, next_a = carry
        delta = rew[:, t] + params.gamma * next_v - values[:, t]
        a = delta + params.gamma * params.lam * next_a
        return a, (values[:, t], a)

    adv = _reverse_scan(mask, (zeros, zeros), step)
    returns = torch.where(mask, adv + values, 0.0)
    if params.whiten:
        adv = masked_whiten(adv, mask, params.eps)
    return AdvantageOutputs(adv, returns)
