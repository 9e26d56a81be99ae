"""PPO critic: per-token values from the policy's backbone plus a scalar head. No Ray here.

`ValueLearner` owns its own DeepSpeed engine (same config code as the policy learner) and
the same calling conventions: each rank gets its shard; model-running methods are
collectives under ZeRO-3; losses use global token/sequence counts across ranks.

Alignment: the value of response token j is read at position response_start - 1 + j, the
hidden state the policy's logits for token j come from (the state before the action).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from rlsys.algorithms.losses import AggregationParams, value_loss
from rlsys.deepspeed_base import DeepSpeedTrainerBase, MicroSums, StepMetrics
from rlsys.models.forward import pad_rows
from rlsys.protocol import TrainBatch, TrainSample
from rlsys.specs import CriticSpec


@dataclass
class CriticMetrics(StepMetrics):
    """One critic `train_step`, global over ranks; losses are means over optimizer steps.
    value_clip_frac: tokens whose clipped branch was the larger loss.
    explained_var: 1 - Var(returns - values) / Var(returns), values before the update."""

    value_loss: float = 0.0
    value_clip_frac: float = 0.0
    values_mean: float = 0.0
    returns_mean: float = 0.0
    explained_var: float = 0.0
    tokens: float = 0.0
    samples: float = 0.0
    optimizer_steps: float = 0.0


# A saved value model: a HF (VL)M checkpoint (the backbone) plus this file with its head.
VALUE_HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """Backbone of a causal (VL)M (its LM head dropped) + Linear(hidden, 1).
    forward(**model inputs) -> values [N, T] float32.

    head: an existing scalar head to use (e.g. a sequence-classification model's `score`);
    None: a new one, small-initialised."""

    def __init__(self, policy: nn.Module, head: Optional[nn.Linear] = None):
        super().__init__()
        self.backbone = getattr(policy, policy.base_model_prefix)
        self.config = policy.config
        hidden = getattr(policy.config, "text_config", policy.config).hidden_size
        if head is None:
            head = nn.Linear(hidden, 1, dtype=next(self.backbone.parameters()).dtype)
            # Small init (as OpenRLHF): initial values near 0, gradients still reach the backbone.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1))
            nn.init.zeros_(head.bias)
        self.value_head = head

    def forward(self, **inputs) -> torch.Tensor:
        h = self.backbone(**inputs, use_cache=False).last_hidden_state
        return self.value_head(h).squeeze(-1).float()

    @classmethod
    def from_pretrained(cls, path, dtype="float32", trust_remote_code: bool = False) -> "ValueModel":
        """A saved value model: `path` holds a HF (VL)M checkpoint that `load_policy` reads (the
        backbone; its LM head is dropped) and VALUE_HEAD_FILE (weight [1, H], bias [1])."""
        from pathlib import Path

        from safetensors.torch import load_file

        from rlsys.models.loading import load_policy

        model = cls(load_policy(path, dtype, trust_remote_code=trust_remote_code))
        head = load_file(str(Path(path) / VALUE_HEAD_FILE))
        model.value_head.load_state_dict({k: v.to(model.value_head.weight.dtype) for k, v in head.items()})
        return model


def save_value_head(weight: torch.Tensor, bias: torch.Tensor, out_dir) -> None:
    """Write a value head (weight [1, H], bias [1]) as VALUE_HEAD_FILE in `out_dir`."""
    from pathlib import Path

    from safetensors.torch import save_file

    save_file({"weight": weight.detach().cpu().contiguous(), "bias": bias.detach().cpu().contiguous()},
              str(Path(out_dir) / VALUE_HEAD_FILE))


@dataclass
class ValueMicroSums(MicroSums):
    """value_loss: the micro-batch's share of the full mini-batch loss; clipped_tokens: tokens
    whose clipped branch was the larger loss."""

    value_loss: float = 0.0
    clipped_tokens: float = 0.0


class ValueLearner(DeepSpeedTrainerBase):
    """The value model on one DeepSpeed rank, as `spec` (rlsys.specs.CriticSpec) describes it:
    the backbone of `spec.trainer.model_path` (usually the policy's) with a scalar head, the
    value loss clipped by `spec.value_clip` around the sampling-time values (None: unclipped),
    aggregated and checkpointed as the policy learner."""

    def __init__(self, spec: CriticSpec, backend: str):
        super().__init__(spec.trainer, backend)
        self.value_clip = spec.value_clip
        policy, self.processor, self.pad_token_id = self.load_model()
        self._init_engine(ValueModel(policy))

    def _forward(self, samples: list[TrainSample]):
        """-> values [N, R_max] float32 (0 at padding), mask [N, R_max] bool."""
        from rlsys.models.forward import MODEL_INPUT_KEYS, collate

        batch = collate(samples, self.processor, self.pad_token_id)
        dev = next(self.engine.module.parameters()).device
        values = self.engine(**{k: batch[k].to(dev) for k in MODEL_INPUT_KEYS if k in batch})
        mask = batch["response_mask"].to(dev).bool()
        j = torch.arange(mask.shape[1], device=dev)
        pos = (batch["response_start"].to(dev)[:, None] - 1 + j[None]).clamp(max=values.shape[1] - 1)
        return torch.where(mask, values.gather(1, pos), 0.0), mask

    @torch.no_grad()
    def compute_values(self, samples: list[TrainSample]) -> list[torch.Tensor]:
        """-> list of [R_i] float32 CPU value estimates. Collective under ZeRO-3."""
        out: list[torch.Tensor] = []
        was_training = self.engine.training
        self.engine.eval()
        for mb, real in self.plan_micro_batches(samples, 1)[0]:
            v, _ = self._forward(mb)
            if real:
                out += [v[i, : s.response_length].cpu() for i, s in enumerate(mb)]
        self.engine.train(was_training)
        return out

    def train_step(self, batch: TrainBatch) -> CriticMetrics:
        """Clipped value regression of `returns`, ppo_epochs x mini-batches optimizer steps.
        Old values for clipping: the samples' `values` (sampling time), else this critic's
        own values before the update."""
        t0 = time.perf_counter()
        samples = batch.samples
        if any(s.returns is None for s in samples):
            raise ValueError("critic train_step needs `returns` on every TrainSample")
        self.engine.train()
        before = self.compute_values(samples)
        self._old = {id(s): (s.values if s.values is not None else v) for s, v in zip(samples, before)}
        m = CriticMetrics(**self._value_stats(before, samples))
        m.lr = self.set_lr_for_step()
        update = self.optimize(samples, self._micro_step)
        self._old = {}
        m.value_loss = update.mean("value_loss", per_token=False)
        m.value_clip_frac = update.mean("clipped_tokens", per_token=True)
        m.optimizer_steps, m.skipped = float(len(update.steps)), float(update.skipped)
        m.grad_norm = float(update.grad_norm)
        m.time_s, m.peak_mem_mb = time.perf_counter() - t0, self.peak_mem_mb()
        return m

    def _micro_step(self, mb: list[TrainSample], real: bool, counts) -> ValueMicroSums:
        values, mask = self._forward(mb)
        if not real:
            mask = torch.zeros_like(mask)
        width, dev = values.shape[1], values.device
        old = pad_rows([self._old[id(s)] for s in mb], width).to(dev)
        ret = pad_rows([s.returns for s in mb], width).to(dev)
        per_tok = value_loss(values, old, ret, mask, self.value_clip)
        loss = self.agg_fn(per_tok, mask, AggregationParams(self.norm_length, counts[0], counts[1]))
        clipped = torch.zeros(())
        if self.value_clip is not None:
            v_clip = old + (values.detach() - old).clamp(-self.value_clip, self.value_clip)
            clipped = (mask & ((v_clip - ret) ** 2 > (values.detach() - ret) ** 2)).sum()
        bad = not bool(torch.isfinite(loss))
        if bad:  # poison the gradient so DeepSpeed drops the step on every rank
            loss = loss + values.sum() * float("nan")
        self.backward(loss)
        return ValueMicroSums(bad=float(bad), value_loss=0.0 if bad else float(loss.detach()),
                              clipped_tokens=float(clipped))

    def _value_stats(self, values: list[torch.Tensor], samples: list[TrainSample]) -> dict:
        """Global means of values/returns and the explained variance, before the update."""
        v = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
        r = torch.cat([torch.as_tensor(s.returns).double().reshape(-1) for s in samples])
        g = self.all_reduce(torch.stack([v.sum(), r.sum(), (r * r).sum(), (r - v).sum(),
                                         ((r - v) ** 2).sum(), torch.tensor(float(v.numel()))]))
        n = max(float(g[5]), 1.0)
        var_r = float(g[2]) / n - (float(g[1]) / n) ** 2
        var_e = float(g[4]) / n - (float(g[3]) / n) ** 2
        return {"values_mean": float(g[0]) / n, "returns_mean": float(g[1]) / n,
                "explained_var": 1.0 - var_e / var_r if var_r > 1e-12 else 0.0,
                "tokens": n, "samples": float(self.all_reduce(torch.tensor([float(len(samples))]))[0])}
