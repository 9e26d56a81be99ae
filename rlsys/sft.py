"""Cold-start supervised fine-tuning (`rlsys sft`): the loss, the records and the step plan.
No Ray here. The update itself is `PolicyLearner.sft_step` (rlsys/learner.py): the same
DeepSpeed learner, data pipeline and processor path as RL training.

A demonstration is a Prompt with its target `response` (rlsys/data/datasets.py,
demonstrations=True). It becomes a TrainSample: the prompt ids exactly as the rollout engine
sees them (chat template + generation prompt, image pads expanded) followed by the response's
ids and the tokenizer's end-of-sequence token, so the model learns to write the response and
stop where RL's sampling starts it. Only those response tokens carry loss.

Shapes: N sequences in a micro-batch, R_max the longest response.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from rlsys.deepspeed_base import MicroSums, StepMetrics
from rlsys.protocol import Prompt, TrainSample


def sft_nll_loss(logprobs: torch.Tensor, mask: torch.Tensor, num_tokens: Optional[float] = None) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens: -sum(logprobs over mask) / num_tokens.

    logprobs [N, R_max]: log-prob of each response token (rlsys.models.forward.token_logprobs,
    which already leaves out the prompt); mask [N, R_max]: true on real response tokens, false on
    padding. num_tokens: the divisor, the valid tokens of the whole batch over all micro-batches
    and ranks (so each micro-batch's value is its share of the full-batch mean); None: this
    call's own count. -> [] tensor
    """
    mask = mask.bool()
    total = torch.where(mask, -logprobs, torch.zeros_like(logprobs)).sum()
    denom = mask.sum().clamp(min=1) if num_tokens is None else max(float(num_tokens), 1.0)
    return total / denom


@dataclass
class SFTMicroSums(MicroSums):
    """One micro-batch's share of an SFT step: nll, the sum of -log p over its response tokens."""

    nll: float = 0.0


@dataclass
class SFTMetrics(StepMetrics):
    """One `sft_step`, identical on every rank (global values).

    loss: token-mean NLL of the step's demonstrations, measured in the forward that made the
    update (before it); tokens, samples: response tokens and sequences of the step; skipped: 1
    when a non-finite loss dropped the step.
    """

    loss: float = 0.0
    tokens: float = 0.0
    samples: float = 0.0


def encode_demonstration(processor, prompt: Prompt) -> TrainSample:
    """The TrainSample of a demonstration (see the module docstring). Raises ValueError naming
    the prompt when it has no response."""
    if not prompt.response:
        raise ValueError(f"prompt {prompt.uid}: no demonstrated response to train on")
    return encode_response(processor, prompt, prompt.response)


def encode_response(processor, prompt: Prompt, response: str,
                    prompt_ids: Optional[list[int]] = None) -> TrainSample:
    """`prompt` followed by `response` as one TrainSample, built as a demonstration is (see the
    module docstring): prompt ids [P] as the engine renders them, then the ids of the response
    text + the tokenizer's EOS [R]; old_logprobs/advantages are zeros [R]. Also what a reward
    model scores (rlsys/rewards/scalar_rm.py, rlsys/reward_training.py). `prompt_ids`: the
    prompt's ids when the caller has them already (a group's G responses share them)."""
    from rlsys.models.forward import prompt_token_ids

    tok = getattr(processor, "tokenizer", processor)
    ids = list(prompt_token_ids(processor, prompt) if prompt_ids is None else prompt_ids)
    eos = tok.eos_token or ""
    resp = tok(response + eos, add_special_tokens=False)["input_ids"]
    zeros = torch.zeros(len(resp))
    return TrainSample(input_ids=torch.tensor(ids + list(resp), dtype=torch.long),
                       response_start=len(ids), images=list(prompt.images),
                       old_logprobs=zeros, advantages=zeros)


def step_plan(num_rows: int, batch_size: int, epochs: int, max_steps: Optional[int], seed: int,
              shuffle: bool = True, min_batch: int = 1) -> list[list[int]]:
    """Row indices of every optimizer step: `epochs` passes over the rows in batches of
    `batch_size` (a seeded permutation per epoch when `shuffle`), cut at `max_steps`. An epoch's
    last batch is kept when it has at least `min_batch` rows (every learner rank needs one)."""
    if num_rows < 1 or batch_size < 1 or epochs < 1:
        raise ValueError(f"step_plan: need rows, batch_size and epochs >= 1, got {num_rows}, {batch_size}, {epochs}")
    rng = np.random.default_rng([seed, 11])
    steps: list[list[int]] = []
    for _ in range(epochs):
        order = rng.permutation(num_rows).tolist() if shuffle else list(range(num_rows))
        steps += [b for b in (order[i:i + batch_size] for i in range(0, num_rows, batch_size))
                  if len(b) >= min_batch]
    return steps[:max_steps] if max_steps is not None else steps
