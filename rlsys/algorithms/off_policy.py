"""Off-policy corrections: importance weights between the policy that sampled a response (the
behaviour policy: vLLM's log-probs, one or more versions old under async training) and the
learner's proximal policy (its own recomputation before the update, the policy loss's
`old_logprobs`).

Pure torch. Shapes: N sequences, R response tokens; `mask` [N, R] is true on trained tokens and
masked positions are never read. Every correction shares one signature:

    fn(proximal_logprobs [N, R], behaviour_logprobs [N, R], cap: float, mask [N, R] | None)
        -> (weights [N, R] detached, 0 where masked; ISWeightStats)

and the weights multiply the policy loss per token (`is_weights` of rlsys/algorithms/losses.py).
With ratio rho = pi_prox / pi_behav and bound c = `cap` (> 1 for the masked forms):

    token_truncate   w_t = min(rho_t, c)                     (truncated IS, per token)
    seq_truncate     w_t = min(prod_t rho_t, c)              (truncated IS of the whole sequence)
    token_mask       w_t = rho_t if 1/c <= rho_t <= c else 0 (masked IS, icepop: the token is dropped)
    seq_mask         w_t = rho_t for every token of a sequence whose geometric-mean ratio
                     exp(mean_t log rho_t) lies in [1/c, c], else 0 (the sequence is dropped)

Dropped tokens keep their place in the loss's token/sequence counts (their loss is 0), so a
masked sample shrinks the step instead of re-weighting the rest of the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .losses import _masked_max, _masked_mean  # one definition of the masked reductions
from .registry import Registry

OFF_POLICY_CORRECTIONS = Registry("off-policy correction")

# exp() of a log-ratio beyond this overflows and is hopelessly off-policy anyway.
_LOG_CLAMP = 20.0


def get_off_policy_correction(name: str):
    """The correction registered as `name`; UnknownNameError lists allowed names."""
    return OFF_POLICY_CORRECTIONS.lookup(name)


@dataclass
class ISWeightStats:
    """0-dim detached tensors over valid tokens.

    clip_frac:   tokens whose weight was truncated down to the cap (truncating forms).
    masked_frac: tokens given weight 0 because they (or their sequence) left [1/c, c] (masked forms).
    low_frac, high_frac: tokens with rho < 1/c and rho > c, whatever the form does with them.
    mean, max:   of the weights.
    """

    clip_frac: Tensor
    masked_frac: Tensor
    low_frac: Tensor
    high_frac: Tensor
    mean: Tensor
    max: Tensor


def _log_ratio(proximal_logprobs, behaviour_logprobs, cap, mask):
    """-> log rho [N, R] (0 where masked), the bool mask, log c."""
    if not cap > 0:
        raise ValueError(f"importance-weight cap must be > 0, got {cap}")
    if mask is None:
        mask = torch.ones_like(proximal_logprobs, dtype=torch.bool)
    mask = mask.bool()
    dtype = torch.promote_types(proximal_logprobs.dtype, torch.float32)
    prox = torch.where(mask, proximal_logprobs.detach().to(dtype), 0.0)
    behav = torch.where(mask, behaviour_logprobs.detach().to(dtype), 0.0)
    return (prox - behav).clamp(-_LOG_CLAMP, _LOG_CLAMP), mask, math.log(cap)


def _stats(w, log_rho, mask, log_c, clipped, dropped) -> ISWeightStats:
    return ISWeightStats(
        clip_frac=_masked_mean(clipped.float(), mask),
        masked_frac=_masked_mean(dropped.float(), mask),
        low_frac=_masked_mean((log_rho < -log_c).float(), mask),
        high_frac=_masked_mean((log_rho > log_c).float(), mask),
        mean=_masked_mean(w, mask),
        max=_masked_max(w, mask),
    )


def _need_band(cap: float) -> None:
    if not cap > 1.0:
        raise ValueError(f"a masked correction keeps ratios in [1/c, c] and needs c > 1, got {cap}")


@OFF_POLICY_CORRECTIONS.register("token_truncate")
def token_truncate(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float,
                   mask: Optional[Tensor] = None) -> tuple[Tensor, ISWeightStats]:
    """Truncated IS per token: w_t = min(rho_t, cap). [N, R] -> [N, R] (0 masked), stats."""
    log_rho, mask, log_c = _log_ratio(proximal_logprobs, behaviour_logprobs, cap, mask)
    # min in log space: exp(log cap) never overflows, whatever the ratio.
    w = torch.where(mask, log_rho.clamp(max=log_c).exp(), 0.0)
    return w, _stats(w, log_rho, mask, log_c, clipped=mask & (log_rho > log_c), dropped=torch.zeros_like(mask))


@OFF_POLICY_CORRECTIONS.register("seq_truncate")
def seq_truncate(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float,
                 mask: Optional[Tensor] = None) -> tuple[Tensor, ISWeightStats]:
    """Truncated IS per sequence: every token of sequence i gets min(prod_t rho_it, cap), the
    product over its valid tokens. [N, R] -> [N, R] (0 masked), stats (clip_frac counts the
    tokens of truncated sequences)."""
    log_rho, mask, log_c = _log_ratio(proximal_logprobs, behaviour_logprobs, cap, mask)
    seq = log_rho.sum(dim=-1, keepdim=True).clamp(-_LOG_CLAMP, _LOG_CLAMP)
    w = torch.where(mask, seq.clamp(max=log_c).exp().expand_as(log_rho), 0.0)
    clipped = mask & (seq > log_c).expand_as(mask)
    return w, _stats(w, log_rho, mask, log_c, clipped=clipped, dropped=torch.zeros_like(mask))


@OFF_POLICY_CORRECTIONS.register("token_mask")
def token_mask(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float,
               mask: Optional[Tensor] = None) -> tuple[Tensor, ISWeightStats]:
    """Masked IS per token (icepop): w_t = rho_t inside [1/cap, cap], 0 outside (the token is
    dropped and counted in masked_frac). [N, R] -> [N, R] (0 masked), stats."""
    _need_band(cap)
    log_rho, mask, log_c = _log_ratio(proximal_logprobs, behaviour_logprobs, cap, mask)
    outside = mask & (log_rho.abs() > log_c)
    w = torch.where(mask & ~outside, log_rho.exp(), 0.0)
    return w, _stats(w, log_rho, mask, log_c, clipped=torch.zeros_like(mask), dropped=outside)


@OFF_POLICY_CORRECTIONS.register("seq_mask")
def seq_mask(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float,
             mask: Optional[Tensor] = None) -> tuple[Tensor, ISWeightStats]:
    """Masked IS per sequence: a sequence whose geometric-mean ratio exp(mean_t log rho_t) leaves
    [1/cap, cap] is dropped (every token weight 0, counted in masked_frac); the others keep the
    token weights rho_t. The geometric mean keeps the band meaningful whatever the length.
    [N, R] -> [N, R] (0 masked), stats."""
    _need_band(cap)
    log_rho, mask, log_c = _log_ratio(proximal_logprobs, behaviour_logprobs, cap, mask)
    n_tok = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    geo = log_rho.sum(dim=-1, keepdim=True) / n_tok
    dropped = mask & (geo.abs() > log_c).expand_as(mask)
    w = torch.where(mask & ~dropped, log_rho.exp(), 0.0)
    return w, _stats(w, log_rho, mask, log_c, clipped=torch.zeros_like(mask), dropped=dropped)


def truncated_is_weights(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float,
                         mask: Optional[Tensor] = None) -> tuple[Tensor, ISWeightStats]:
    """The token-level truncated weights min(rho_t, cap) (`token_truncate`), by its usual name."""
    return token_truncate(proximal_logprobs, behaviour_logprobs, cap, mask)
