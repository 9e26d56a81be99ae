"""Policy losses, the clipped value loss and loss aggregation (importance weights for off-policy
samples: rlsys/algorithms/off_policy.py).

Pure torch. Shapes: N sequences, R response tokens. `mask` [N, R] is true on trained tokens;
masked positions are never read (NaN/inf there changes neither values nor gradients) and
per-token outputs are exactly 0 there.

Policy losses share one signature:

    fn(logprobs, old_logprobs, advantages, mask, params: PolicyLossParams, is_weights=None)
        -> (per_token_loss [N, R], PolicyLossStats)

Aggregations share one signature:

    fn(per_token_loss [N, R], mask [N, R], params: AggregationParams) -> scalar
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
from torch import Tensor

from .registry import Registry

POLICY_LOSSES = Registry("policy loss")
LOSS_AGGREGATIONS = Registry("loss aggregation")

# exp() of a log-ratio beyond this overflows fp16/bf16 ranges and means the sample is
# hopelessly off-policy anyway; clamping (gradient 0 beyond) keeps the loss finite.
LOG_RATIO_CLAMP = 20.0

Count = Union[float, int, Tensor]


def get_policy_loss(name: str):
    """The policy loss registered as `name`; UnknownNameError lists allowed names."""
    return POLICY_LOSSES.lookup(name)


def get_loss_aggregation(name: str):
    """The loss aggregation registered as `name`; UnknownNameError lists allowed names."""
    return LOSS_AGGREGATIONS.lookup(name)


@dataclass
class PolicyLossParams:
    """clip_low, clip_high: token ratio clipped to [1 - clip_low, 1 + clip_high] (ppo_clip);
        clip_high > clip_low is DAPO's "clip-higher" (e.g. 0.2 / 0.28).
    dual_clip: constant c > 1; for negative advantages the loss is at most -A * c (None: off).
    seq_clip_low, seq_clip_high: clip range of the sequence ratio (gspo; paper: 3e-4 / 4e-4).
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    seq_clip_low: float = 3e-4
    seq_clip_high: float = 4e-4

    def __post_init__(self):
        for name in ("clip_low", "seq_clip_low"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("clip_high", "seq_clip_high"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")


@dataclass
class PolicyLossStats:
    """0-dim detached tensors (no device sync until logged), means over valid tokens.

    clip_frac_low:  A < 0 and ratio < 1 - clip_low (clip active, token gets no gradient).
    clip_frac_high: A > 0 and ratio > 1 + clip_high (clip active).
    dual_clip_frac: A < 0 and ratio > dual_clip (dual clip active).
    approx_kl:      k3 estimate of KL(pi_old || pi) from the token ratios.
    ratio_mean, ratio_max: of the ratio that is clipped (per token; per sequence for gspo).
    """

    clip_frac_low: Tensor
    clip_frac_high: Tensor
    dual_clip_frac: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    ratio_max: Tensor

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    # Branch-free (no host sync); 0 when nothing is valid.
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.where(mask.any(), torch.where(mask, x, float("-inf")).amax(), 0.0)


def _sanitise(logprobs, old_logprobs, advantages, mask):
    """Masked positions -> 0 before any arithmetic, so garbage there cannot reach the loss or
    its gradient; old log-probs and advantages are constants of the update."""
    mask = mask.bool()
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    lp = torch.where(mask, logprobs.to(dtype), 0.0)
    old = torch.where(mask, old_logprobs.detach().to(dtype), 0.0)
    adv = torch.where(mask, advantages.detach().to(dtype), 0.0)
    return lp, old, adv, mask


def _clipped_surrogate(ratio, adv, mask, low, high, params, is_weights, token_log_ratio):
    """max(-A r, -A clip(r, 1-low, 1+high)), optionally dual-clipped; the stats; [N, R]."""
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - low, 1.0 + high))
    r = ratio.detach()
    dual = torch.zeros_like(mask)
    if params.dual_clip is not None:
        dual = (adv < 0) & (r > params.dual_clip)
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * params.dual_clip), loss)
    if is_weights is not None:
        loss = loss * torch.where(mask, is_weights.detach().to(loss.dtype), 0.0)
    loss = torch.where(mask, loss, 0.0)
    tlr = token_log_ratio.detach()
    stats = PolicyLossStats(
        clip_frac_low=_masked_mean(((adv < 0) & (r < 1.0 - low)).float(), mask),
        clip_frac_high=_masked_mean(((adv > 0) & (r > 1.0 + high)).float(), mask),
        dual_clip_frac=_masked_mean(dual.float(), mask),
        approx_kl=_masked_mean(torch.expm1(tlr) - tlr, mask),
        ratio_mean=_masked_mean(r, mask),
        ratio_max=_masked_max(r, mask),
    )
    return loss, stats


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    params: PolicyLossParams,
    is_weights: Optional[Tensor] = None,
) -> tuple[Tensor, PolicyLossStats]:
    """PPO clipped surrogate per token with ratio r = pi / pi_old, asymmetric clip
    [1 - clip_low, 1 + clip_high] and optional dual clip. All inputs [N, R]; `is_weights`
    (rlsys/algorithms/off_policy.py) multiplies the per-token loss, detached. -> [N, R], stats."""
    lp, old, adv, mask = _sanitise(logprobs, old_logprobs, advantages, mask)
    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    return _clipped_surrogate(
        ratio, adv, mask, params.clip_low, params.clip_high, params, is_weights, log_ratio
    )


@POLICY_LOSSES.register("gspo")
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    params: PolicyLossParams,
    is_weights: Optional[Tensor] = None,
) -> tuple[Tensor, PolicyLossStats]:
    """GSPO (Zheng et al. 2025), token form: s_i = exp(mean_{valid t}(log pi - log pi_old)),
    the token ratio is sg(s_i) * pi_t / sg(pi_t) (value s_i, gradient s_i * grad log pi_t),
    clipped to [1 - seq_clip_low, 1 + seq_clip_high]. With `seq_mean_token_mean` and a
    per-sequence advantage this is the paper's sequence-level gradient. [N, R] -> [N, R], stats.
    """
    lp, old, adv, mask = _sanitise(logprobs, old_logprobs, advantages, mask)
    token_log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    n_tok = mask.sum(dim=1).clamp(min=1)
    seq_log_ratio = (lp - old).sum(dim=1) / n_tok
    seq_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    ratio = seq_ratio.detach()[:, None] * (lp - lp.detach()).exp()
    return _clipped_surrogate(
        ratio, adv, mask, params.seq_clip_low, params.seq_clip_high, params, is_weights,
        token_log_ratio,
    )


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: Optional[float]
) -> Tensor:
    """Clipped critic loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old +
    clamp(V - V_old, -clip, clip); clip None: 0.5 * (V - R)^2. [N, R] -> [N, R], 0 masked."""
    mask = mask.bool()
    v = torch.where(mask, values, 0.0)
    ret = torch.where(mask, returns.detach(), 0.0)
    loss = (v - ret) ** 2
    if clip is not None:
        old = torch.where(mask, old_values.detach(), 0.0)
        v_clip = old + (v - old).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clip - ret) ** 2)
    return torch.where(mask, 0.5 * loss, 0.0)


# ---------------------------------------------------------------- aggregation


@dataclass
class AggregationParams:
    """norm_length: seq_mean_token_sum_norm's constant divisor; set it to the generation budget
        (max new tokens) so it is the same for every micro-batch. None: the padded width R.
    global_token_count: valid tokens in the whole batch (all micro-batches and ranks).
    global_seq_count: sequences with >= 1 valid token in the whole batch.

    With the global counts set, each micro-batch's value is its share of the full-batch loss:
    summing over micro-batches and ranks gives exactly the full-batch value. Engines that
    average over ranks or accumulation steps must be compensated by the caller (multiply by
    that factor). Without them the counts are local to this call.
    """

    norm_length: Optional[float] = None
    global_token_count: Optional[Count] = None
    global_seq_count: Optional[Count] = None


def _valid_sum(per_token_loss: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, per_token_loss, 0.0).sum(dim=-1)


@LOSS_AGGREGATIONS.register("token_mean")
def token_mean(per_token_loss: Tensor, mask: Tensor, params: AggregationParams) -> Tensor:
    """sum of the loss over valid tokens / number of valid tokens (global if given). -> []"""
    mask = mask.bool()
    count = params.global_token_count
    denom = mask.sum().clamp(min=1) if count is None else count
    return _valid_sum(per_token_loss, mask).sum() / denom


@LOSS_AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(per_token_loss: Tensor, mask: Tensor, params: AggregationParams) -> Tensor:
    """mean over sequences of each sequence's mean over its valid tokens; sequences without
    valid tokens are left out (also of the count). -> []"""
    mask = mask.bool()
    n_tok = mask.sum(dim=-1)
    per_seq = _valid_sum(per_token_loss, mask) / n_tok.clamp(min=1)
    return per_seq.sum() / _seq_denominator(n_tok, params)


@LOSS_AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    per_token_loss: Tensor, mask: Tensor, params: AggregationParams
) -> Tensor:
    """Dr.GRPO: mean over sequences of (sum over valid tokens / norm_length); the constant
    divisor removes GRPO's length bias. Sequences without valid tokens are left out. -> []"""
    mask = mask.bool()
    norm = float(mask.shape[-1]) if params.norm_length is None else float(params.norm_length)
    per_seq = _valid_sum(per_token_loss, mask) / norm
    return per_seq.sum() / _seq_denominator(mask.sum(dim=-1), params)


def _seq_denominator(n_tok: Tensor, params: AggregationParams) -> Count:
    if params.global_seq_count is not None:
        return params.global_seq_count
    return (n_tok > 0).sum().clamp(min=1)
