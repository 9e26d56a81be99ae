"""DeepSpeed policy learner: the PPO-style update of a (multimodal) causal LM. No Ray here.

One `PolicyLearner` per data-parallel rank. The caller (actors/learner.py) has set the torch
distributed env (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) and hands each rank its shard
of the batch. All methods that run the model are collectives under ZeRO-3 (parameters are
gathered on every forward), so every rank calls them together, each with its own shard.

Shapes: N sequences in a micro-batch, R_max the longest response, R_i one sample's response.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import torch

from rlsys.algorithms.kl import KL_ESTIMATORS
from rlsys.algorithms.losses import (LOSS_AGGREGATIONS, POLICY_LOSSES, AggregationParams,
                                     PolicyLossParams, truncated_is_weights)
from rlsys.deepspeed_base import DeepSpeedTrainerBase, hf_checkpoint_names, pad_to
from rlsys.protocol import TrainBatch, TrainSample

log = logging.getLogger(__name__)


@dataclass
class LearnerMetrics:
    """One `train_step`, identical on every rank (all values are global, all-reduced).

    Loss-like values are means over the step's optimizer steps of the full-batch value.
    mismatch_*: learner log-probs (before any update) vs the samples' behaviour log-probs:
    mean |diff| and max |diff| over tokens, and the token mean of exp(learner - behaviour).
    skipped: optimizer steps skipped for a non-finite loss/gradient (their grads dropped).
    """

    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    grad_norm: float = 0.0
    lr: float = 0.0
    is_weight_clip_frac: float = 0.0
    mismatch_abs_mean: float = 0.0
    mismatch_abs_max: float = 0.0
    mismatch_ratio_mean: float = 0.0
    tokens: float = 0.0
    samples: float = 0.0
    optimizer_steps: float = 0.0
    skipped: float = 0.0
    time_s: float = 0.0
    peak_mem_mb: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class PolicyLearner(DeepSpeedTrainerBase):
    """The policy on one DeepSpeed rank.

    policy_loss / policy_loss_params: a POLICY_LOSSES name and PolicyLossParams fields.
    kl_coef, kl_estimator: KL(pi || pi_ref) as a loss term (0 disables; needs ref_logprobs).
    loss_agg, norm_length: a LOSS_AGGREGATIONS name; norm_length for seq_mean_token_sum_norm.
    max_is_weight: cap of the truncated importance weight pi_learner_old / pi_behaviour
        (the train/inference mismatch correction); None disables.
    The PPO ratio's "old" policy is the learner's own recomputation before the update (the
    proximal policy), so engine-vs-learner numerics never show up as a ratio != 1.
    Schedule lengths (warmup_steps, total_steps) count `train_step` calls.
    """

    def __init__(self, model_path: str, *, policy_loss: str = "ppo_clip",
                 policy_loss_params: Optional[dict] = None, kl_coef: float = 0.0,
                 kl_estimator: str = "k3", entropy_coef: float = 0.0,
                 loss_agg: str = "token_mean", norm_length: Optional[float] = None,
                 max_is_weight: Optional[float] = None, temperature: float = 1.0,
                 gradient_checkpointing: bool = False, **engine_kwargs: Any):
        from rlsys.models.loading import load_policy, load_processor, pad_token_id

        super().__init__(**engine_kwargs)
        self.model_path = str(model_path)
        self.loss_fn = POLICY_LOSSES[policy_loss]
        self.loss_params = PolicyLossParams(**(policy_loss_params or {}))
        self.agg_fn = LOSS_AGGREGATIONS[loss_agg]
        self.norm_length = norm_length
        self.kl_coef, self.kl_fn = kl_coef, KL_ESTIMATORS[kl_estimator]
        self.entropy_coef = entropy_coef
        self.max_is_weight = max_is_weight
        self.temperature = temperature

        self.processor = load_processor(self.model_path)
        # Every rank loads the full weights; ZeRO-3 partitions them in deepspeed.initialize.
        # (Loading pre-partitioned via zero.Init needs transformers' HfDeepSpeedConfig, which
        # needs accelerate: a follow-up for models that do not fit one host's memory.)
        model = load_policy(self.model_path, self.torch_dtype)
        if gradient_checkpointing:
            # Non-reentrant: works with ZeRO-3 hooks and with inputs that need no grad.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.pad_token_id = pad_token_id(self.processor)
        self._init_engine(model)
        self._sync_names = hf_checkpoint_names(self.engine.module)

    # ------------------------------------------------------------------ forward passes

    def _forward(self, samples: list[TrainSample], with_entropy: bool):
        """-> logprobs [N, R_max], entropy [N, R_max] | None, mask [N, R_max] (bool)."""
        from rlsys.models.forward import collate, token_logprobs

        batch = collate(samples, self.processor, self.pad_token_id)
        lp, ent, mask = token_logprobs(self.engine, batch, temperature=self.temperature,
                                       with_entropy=with_entropy)
        return lp, ent, mask.bool()

    @torch.no_grad()
    def compute_logprobs(self, samples: list[TrainSample]) -> list[torch.Tensor]:
        """Per-token log-probs of each sample's response under the current weights, no grad.
        -> list of [R_i] float32 CPU tensors. Collective under ZeRO-3 (see module doc)."""
        out: list[torch.Tensor] = []
        was_training = self.engine.training
        self.engine.eval()  # deterministic (dropout off), as the engine and the reference are
        for mb, real in self.plan_micro_batches(samples, 1)[0]:
            lp, _, _ = self._forward(mb, with_entropy=False)
            if real:
                out += [lp[i, : s.response_length].float().cpu() for i, s in enumerate(mb)]
        self.engine.train(was_training)
        return out

    # ------------------------------------------------------------------ training

    def train_step(self, batch: TrainBatch) -> LearnerMetrics:
        """PPO-style update on this rank's shard: ppo_epochs x mini_batches_per_step optimizer
        steps, each accumulating gradients over micro-batches. Losses are normalised by the
        token/sequence counts of the whole mini-batch across ranks, so the update equals the
        single-rank update on the concatenated batch."""
        t0 = time.perf_counter()
        samples = batch.samples
        if self.kl_coef > 0 and any(s.ref_logprobs is None for s in samples):
            raise ValueError("kl_coef > 0 needs ref_logprobs on every TrainSample")
        self.engine.train()
        # The proximal ("old") policy and the mismatch report, before any optimizer step.
        prox = self.compute_logprobs(samples)
        m = LearnerMetrics(**self._mismatch(prox, samples))
        m.lr = self.set_lr_for_step()
        self._prox = {id(s): p for s, p in zip(samples, prox)}  # read by _micro_step

        sums: dict[str, float] = {}
        grad_norms = []
        for _ in range(self.ppo_epochs):
            for mini in self.plan_micro_batches(samples, self.mini_batches_per_step):
                counts = self.global_counts([s for mb, real in mini if real for s in mb])
                local = torch.zeros(7, dtype=torch.float64)  # loss,kl,ent,clip,akl,isclip,bad
                for mb, real in mini:
                    local += self._micro_step(mb, real, counts)
                g = self.all_reduce(local)
                applied, norm = self.optimizer_step(bad=g[6].item() > 0)
                for k, v in zip(("policy_loss", "kl", "entropy", "clip_frac", "approx_kl",
                                 "is_weight_clip_frac"), g[:6].tolist()):
                    # loss is already a full-batch share; the others are token sums.
                    sums[k] = sums.get(k, 0.0) + (v if k == "policy_loss" else v / max(counts[0], 1))
                m.optimizer_steps += 1
                m.skipped += 0 if applied else 1
                if applied:
                    grad_norms.append(norm)
                elif self.rank == 0:
                    log.warning("train step %d: non-finite loss/gradient, optimizer step skipped",
                                self.train_steps)
        self._prox = {}
        for k, v in sums.items():
            setattr(m, k, v / max(m.optimizer_steps, 1))
        m.tokens = self.global_counts(samples)[0]
        m.samples = float(self.all_reduce(torch.tensor([float(len(samples))]))[0])
        m.grad_norm = float(sum(grad_norms) / len(grad_norms)) if grad_norms else 0.0
        self.train_steps += 1
        m.time_s = time.perf_counter() - t0
        m.peak_mem_mb = self.peak_mem_mb()
        return m

    def _micro_step(self, mb: list[TrainSample], real: bool, counts) -> torch.Tensor:
        """Forward + backward of one micro-batch; -> float64 [7] local sums for the metrics.
        A padding micro-batch (real=False) keeps ranks in step but contributes 0."""
        lp, ent, mask = self._forward(mb, with_entropy=True)
        width, dev = lp.shape[1], lp.device
        old = pad_to([self._prox[id(s)] for s in mb], width).to(dev)
        behav = pad_to([s.old_logprobs for s in mb], width).to(dev)
        adv = pad_to([s.advantages for s in mb], width).to(dev)
        if not real:
            mask = torch.zeros_like(mask)
        is_w, is_clip = None, torch.zeros(())
        if self.max_is_weight is not None:
            is_w, is_stats = truncated_is_weights(old, behav, self.max_is_weight, mask)
            is_clip = is_stats.clip_frac
        per_tok, st = self.loss_fn(lp, old, adv, mask, self.loss_params, is_weights=is_w)
        agg = AggregationParams(self.norm_length, counts[0], counts[1])
        loss = self.agg_fn(per_tok, mask, agg)
        pg_loss = loss.detach()
        kl = torch.zeros(())
        if self.kl_coef > 0:
            ref = pad_to([s.ref_logprobs for s in mb], width).to(dev)
            kl_tok = self.kl_fn(lp, ref, mask)
            loss = loss + self.kl_coef * self.agg_fn(kl_tok, mask, agg)
            kl = torch.where(mask, kl_tok.detach(), 0.0).sum()
        ent_sum = torch.where(mask, ent.detach(), 0.0).sum() if ent is not None else torch.zeros(())
        if self.entropy_coef > 0:
            loss = loss - self.entropy_coef * self.agg_fn(ent, mask, agg)
        bad = not bool(torch.isfinite(loss))
        if bad:
            # Make sure the gradient is non-finite too, so DeepSpeed's overflow check drops
            # the whole step on every rank (a NaN value with finite grads would slip through).
            loss = loss + lp.sum() * float("nan")
        self.backward(loss)
        n_tok = float(mask.sum())
        return torch.tensor([
            float(pg_loss) if not bad else 0.0, float(kl), float(ent_sum),
            float(st.clip_frac_low + st.clip_frac_high) * n_tok, float(st.approx_kl) * n_tok,
            float(is_clip) * n_tok, float(bad)], dtype=torch.float64)

    def _mismatch(self, prox: list[torch.Tensor], samples: list[TrainSample]) -> dict:
        """Train/inference log-prob mismatch over all ranks' tokens (see LearnerMetrics)."""
        diffs = [p - s.old_logprobs.float().cpu() for p, s in zip(prox, samples)]
        d = torch.cat(diffs) if diffs else torch.zeros(0)
        fin = torch.isfinite(d)
        d = d[fin]
        g = self.all_reduce(torch.tensor([d.abs().sum(), d.exp().sum(), d.numel()], dtype=torch.float64))
        mx = self.all_reduce(torch.tensor([d.abs().max() if d.numel() else 0.0], dtype=torch.float64), op="max")
        n = max(float(g[2]), 1.0)
        return {"mismatch_abs_mean": float(g[0]) / n, "mismatch_ratio_mean": float(g[1]) / n,
                "mismatch_abs_max": float(mx[0])}

    # ------------------------------------------------------------------ weights out

    def named_parameters_for_sync(self, chunk_mb: float = 256.0) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF checkpoint name, full tensor) for every parameter, in the model's dtype.

        ZeRO-3 partitions are all-gathered a chunk at a time (every rank must iterate this
        generator to the end: it is a collective) and cloned, since a gathered buffer is
        freed when its context exits. Without ZeRO-3 the live parameters are yielded.
        """
        for name, t in self.gathered_parameters(chunk_mb):
            yield self._sync_names.get(name, name), t

    def export_hf(self, out_dir: str) -> None:
        """Save a HF-format model + processor (loadable by transformers and vLLM) from rank 0.
        Collective under ZeRO-3 (the gather); other ranks return after it."""
        module = self.engine.module
        keys = set(module.state_dict().keys())
        state = {n: t.detach().cpu().clone() for n, t in self.gathered_parameters()}
        if self.rank == 0:
            state.update({n: b.detach().cpu() for n, b in module.named_buffers() if n in keys})
            module.save_pretrained(out_dir, state_dict=state)
            self.processor.save_pretrained(out_dir)
        self.barrier()
