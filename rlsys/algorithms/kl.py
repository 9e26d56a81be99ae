"""KL estimators (Schulman, "Approximating KL divergence") and token entropy. Pure torch.

Every estimator has the signature

    fn(logprobs [N, R], ref_logprobs [N, R], mask [N, R] | None = None) -> kl [N, R]

estimating KL(pi || pi_ref) per sampled token (tokens sampled from pi). Use it either

- as a loss term: aggregate `kl` with a LOSS_AGGREGATIONS function and add coef * value, or
- as a reward penalty: `token_rewards = -coef * kl.detach()` for reinforce_pp / gae.

With a mask, masked positions are 0 and their inputs are never read (NaN/inf there is safe,
in the value and in the gradient). Without one, garbage in gives garbage out at those
positions; the loss aggregations ignore them, but their gradient may then be NaN.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .registry import Registry

KL_ESTIMATORS = Registry("KL estimator")

# k3 needs exp(log(ref/pi)). The log-ratio is clamped to +-K3_LOG_RATIO_CLAMP so exp stays
# finite in fp32/bf16, and the per-token value to at most K3_MAX nats: a token the policy
# has made far less likely than the reference would otherwise contribute a value and a
# gradient of order e^20 and swamp the batch. Beyond either clamp the token's gradient is 0.
K3_LOG_RATIO_CLAMP = 20.0
K3_MAX = 10.0


def get_kl_estimator(name: str):
    """The KL estimator registered as `name`; UnknownNameError lists allowed names."""
    return KL_ESTIMATORS.lookup(name)


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor, mask: Optional[Tensor]) -> Tensor:
    """log(pi_ref / pi) per token, [N, R], in at least fp32; 0 where masked."""
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    logprobs, ref_logprobs = logprobs.to(dtype), ref_logprobs.to(dtype)
    if mask is not None:
        # where() before any arithmetic on masked values keeps NaN out of the backward pass.
        logprobs = torch.where(mask.bool(), logprobs, 0.0)
        ref_logprobs = torch.where(mask.bool(), ref_logprobs, 0.0)
    return ref_logprobs - logprobs


@KL_ESTIMATORS.register("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """log pi - log pi_ref. Unbiased, high variance, can be negative per token. [N, R]"""
    return -_log_ratio(logprobs, ref_logprobs, mask)


@KL_ESTIMATORS.register("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """0.5 * (log pi - log pi_ref)^2. Biased, low variance, >= 0; as a loss its gradient is
    the on-policy gradient of KL(pi || pi_ref). [N, R]"""
    return 0.5 * _log_ratio(logprobs, ref_logprobs, mask) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """(pi_ref/pi) - 1 - log(pi_ref/pi). Unbiased, low variance, >= 0. Clamped: log-ratio to
    +-K3_LOG_RATIO_CLAMP, value to <= K3_MAX (see the constants). [N, R]"""
    d = _log_ratio(logprobs, ref_logprobs, mask).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.expm1(d) - d).clamp(max=K3_MAX)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: [..., V] -> [...], computed in fp32.

    Vocabulary entries at -inf (banned tokens) contribute 0, not NaN.
    """
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0.0)).sum(dim=-1)
