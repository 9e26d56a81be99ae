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
from dataclasses import dataclass
from typing import Iterator

import torch

from rlsys.algorithms.kl import KL_ESTIMATORS
from rlsys.algorithms.losses import POLICY_LOSSES, AggregationParams, PolicyLossParams
from rlsys.algorithms.off_policy import OFF_POLICY_CORRECTIONS
from rlsys.deepspeed_base import DeepSpeedTrainerBase, MicroSums, StepMetrics, hf_checkpoint_names
from rlsys.models.forward import pad_rows
from rlsys.protocol import TrainBatch, TrainSample
from rlsys.sft import SFTMetrics, SFTMicroSums, sft_nll_loss
from rlsys.specs import LearnerSpec

log = logging.getLogger(__name__)


def has_active_dropout(model: torch.nn.Module) -> bool:
    """True when some module drops activations in training mode: an nn.Dropout with p > 0, or
    an attention layer's `attention_dropout` / `dropout` rate > 0 (HF attention applies those
    functionally, only while training)."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:
            return True
        for attr in ("attention_dropout", "dropout"):
            rate = getattr(mod, attr, None)
            if isinstance(rate, float) and rate > 0:
                return True
    return False


@dataclass
class LearnerMetrics(StepMetrics):
    """One `train_step`, identical on every rank (all values are global, all-reduced).

    Loss-like values are means over the step's optimizer steps of the full-batch value.
    is_*: the off-policy correction, token fractions: weight truncated to the cap, token dropped
    (masked forms), ratio pi_old / pi_behaviour below 1/c and above c (whatever the form).
    mismatch_*: learner log-probs (before any update) vs the samples' behaviour log-probs:
    mean |diff| and max |diff| over tokens, and the token mean of exp(learner - behaviour).
    drift_kl, drift_seq_kl: KL(behaviour || learner before the update) per token (k3) and per
    sequence (summed over the response): how far the policy moved since the batch was sampled
    (one update's worth at max_staleness 1; ~0 on-policy, where only numerics differ).
    skipped: optimizer steps skipped for a non-finite loss/gradient (their grads dropped).
    """

    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    is_weight_clip_frac: float = 0.0
    is_masked_frac: float = 0.0
    is_ratio_low_frac: float = 0.0
    is_ratio_high_frac: float = 0.0
    mismatch_abs_mean: float = 0.0
    mismatch_abs_max: float = 0.0
    mismatch_ratio_mean: float = 0.0
    drift_kl: float = 0.0
    drift_seq_kl: float = 0.0
    tokens: float = 0.0
    samples: float = 0.0
    optimizer_steps: float = 0.0


@dataclass
class PolicyMicroSums(MicroSums):
    """One micro-batch's contribution to the step metrics (summed over micro-batches, ranks).

    policy_loss: its share of the full mini-batch loss; kl, entropy: sums over valid tokens;
    clip_tokens, approx_kl_tokens, is_*_tokens: token-weighted sums of the loss statistics and of
    the off-policy correction's (rlsys/algorithms/off_policy.py ISWeightStats).
    """

    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_tokens: float = 0.0
    approx_kl_tokens: float = 0.0
    is_clip_tokens: float = 0.0
    is_masked_tokens: float = 0.0
    is_low_tokens: float = 0.0
    is_high_tokens: float = 0.0


class PolicyLearner(DeepSpeedTrainerBase):
    """The policy on one DeepSpeed rank, as `spec` (rlsys.specs.LearnerSpec) describes it.

    The PPO ratio's "old" policy is the learner's own recomputation before the update (the
    proximal policy), so engine-vs-learner numerics never show up as a ratio != 1. With one
    optimizer step per train step (ppo_epochs = mini_batches = 1) and no dropout it is read off
    the training forward itself (`proximal_from_training_forward`); otherwise a no-grad pass
    computes it first.
    """

    def __init__(self, spec: LearnerSpec, backend: str):
        super().__init__(spec.trainer, backend)
        self.model_path = str(spec.trainer.model_path)
        self.loss_fn = POLICY_LOSSES[spec.policy_loss]
        self.loss_params = PolicyLossParams(spec.clip_low, spec.clip_high, spec.dual_clip,
                                            spec.seq_clip_low, spec.seq_clip_high)
        self.kl_coef, self.kl_fn = spec.kl_coef, KL_ESTIMATORS[spec.kl_estimator]
        self.entropy_coef = spec.entropy_coef
        self.max_is_weight = spec.max_is_weight
        self.correction_fn = OFF_POLICY_CORRECTIONS[spec.off_policy_correction]
        self.temperature = spec.temperature
        model, self.processor, self.pad_token_id = self.load_model()
        # With one optimizer step per train step and no dropout, the training forward runs the
        # proximal policy's own weights, so its detached log-probs are pi_old bit for bit and
        # the separate no-grad pass (a third of the update) is skipped (tests/integration/
        # test_learner_group.py compares both ways).
        self.proximal_from_training_forward = (
            spec.trainer.ppo_epochs == 1 and spec.trainer.mini_batches == 1 and not has_active_dropout(model))
        from rlsys.models.packing import packable

        self.pack_prompts = spec.pack_prompts and packable(model, self.processor)
        self._init_engine(model)
        self._sync_names = hf_checkpoint_names(self.engine.module)

    def applied_settings(self) -> dict:
        return {**super().applied_settings(), "pack_prompts": self.pack_prompts,
                "proximal_from_training_forward": self.proximal_from_training_forward}

    # ------------------------------------------------------------------ forward passes

    def _forward(self, samples: list[TrainSample], with_entropy: bool):
        """-> logprobs [N, R_max], entropy [N, R_max] | None, mask [N, R_max] (bool)."""
        from rlsys.models.forward import token_logprobs
        from rlsys.models.packing import collate_for_forward

        batch = collate_for_forward(samples, self.processor, self.pad_token_id, self.engine, self.pack_prompts)
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
        lr = self.set_lr_for_step()
        if self.proximal_from_training_forward:
            self._prox, self._seen = None, {}  # _micro_step takes pi_old from its own forward
            update = self.optimize(samples, self._micro_step)
            prox = [self._seen[id(s)] for s in samples]
        else:
            # The proximal ("old") policy, before any optimizer step.
            prox = self.compute_logprobs(samples)
            self._prox = {id(s): p for s, p in zip(samples, prox)}  # read by _micro_step
            update = self.optimize(samples, self._micro_step)
        self._prox, self._seen = {}, {}
        m = LearnerMetrics(**self._mismatch(prox, samples))
        m.lr = lr
        if update.skipped and self.rank == 0:
            log.warning("train step %d: %d optimizer step(s) skipped for a non-finite loss/gradient",
                        self.train_steps, update.skipped)
        m.policy_loss = update.mean("policy_loss", per_token=False)
        m.kl, m.entropy = update.mean("kl", per_token=True), update.mean("entropy", per_token=True)
        m.clip_frac = update.mean("clip_tokens", per_token=True)
        m.approx_kl = update.mean("approx_kl_tokens", per_token=True)
        m.is_weight_clip_frac = update.mean("is_clip_tokens", per_token=True)
        m.is_masked_frac = update.mean("is_masked_tokens", per_token=True)
        m.is_ratio_low_frac = update.mean("is_low_tokens", per_token=True)
        m.is_ratio_high_frac = update.mean("is_high_tokens", per_token=True)
        m.optimizer_steps, m.skipped = float(len(update.steps)), float(update.skipped)
        m.grad_norm = float(update.grad_norm)
        m.tokens = self.global_counts(samples)[0]
        m.samples = float(self.all_reduce(torch.tensor([float(len(samples))]))[0])
        m.time_s = time.perf_counter() - t0
        m.peak_mem_mb = self.peak_mem_mb()
        return m

    def _micro_step(self, mb: list[TrainSample], real: bool, counts) -> PolicyMicroSums:
        """Forward + backward of one micro-batch. A padding micro-batch (real=False) keeps
        ranks in step but contributes 0."""
        lp, ent, mask = self._forward(mb, with_entropy=True)
        width, dev = lp.shape[1], lp.device
        if self._prox is None:
            old = lp.detach()
            if real:
                rows = old.float().cpu()
                self._seen.update({id(s): rows[i, : s.response_length] for i, s in enumerate(mb)})
        else:
            old = pad_rows([self._prox[id(s)] for s in mb], width).to(dev)
        behav = pad_rows([s.old_logprobs for s in mb], width).to(dev)
        adv = pad_rows([s.advantages for s in mb], width).to(dev)
        if not real:
            mask = torch.zeros_like(mask)
        is_w, is_st = None, None
        if self.max_is_weight is not None:
            is_w, is_st = self.correction_fn(old, behav, self.max_is_weight, mask)
        per_tok, st = self.loss_fn(lp, old, adv, mask, self.loss_params, is_weights=is_w)
        agg = AggregationParams(self.norm_length, counts[0], counts[1])
        loss = self.agg_fn(per_tok, mask, agg)
        pg_loss = loss.detach()
        kl = torch.zeros(())
        if self.kl_coef > 0:
            ref = pad_rows([s.ref_logprobs for s in mb], width).to(dev)
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
        return PolicyMicroSums(
            bad=float(bad), policy_loss=float(pg_loss) if not bad else 0.0, kl=float(kl), entropy=float(ent_sum),
            clip_tokens=float(st.clip_frac_low + st.clip_frac_high) * n_tok,
            approx_kl_tokens=float(st.approx_kl) * n_tok, **self._correction_sums(is_st, n_tok))

    @staticmethod
    def _correction_sums(st, n_tok: float) -> dict[str, float]:
        """The off-policy correction's token fractions as token-weighted sums (none without one)."""
        if st is None:
            return {}
        return {"is_clip_tokens": float(st.clip_frac) * n_tok, "is_masked_tokens": float(st.masked_frac) * n_tok,
                "is_low_tokens": float(st.low_frac) * n_tok, "is_high_tokens": float(st.high_frac) * n_tok}

    # ------------------------------------------------------------------ supervised (rlsys sft)

    def sft_step(self, batch: TrainBatch) -> SFTMetrics:
        """One supervised update on this rank's shard of demonstrations (rlsys/sft.py): the
        token-mean NLL of the response tokens over the whole batch across ranks (prompt and
        padding masked), through the same `optimize` loop as `train_step` (ppo_epochs x
        mini_batches optimizer steps; `rlsys sft` sets both to 1)."""
        t0 = time.perf_counter()
        self.engine.train()
        lr = self.set_lr_for_step()
        update = self.optimize(batch.samples, self._sft_micro_step)
        if update.skipped and self.rank == 0:
            log.warning("sft step %d: %d optimizer step(s) skipped for a non-finite loss/gradient",
                        self.train_steps, update.skipped)
        tokens, _ = self.global_counts(batch.samples)
        return SFTMetrics(loss=update.mean("nll", per_token=True), grad_norm=float(update.grad_norm), lr=lr,
                          tokens=tokens, samples=float(self.all_reduce(torch.tensor([float(len(batch.samples))]))[0]),
                          skipped=float(update.skipped), time_s=time.perf_counter() - t0,
                          peak_mem_mb=self.peak_mem_mb())

    def _sft_micro_step(self, mb: list[TrainSample], real: bool, counts) -> SFTMicroSums:
        lp, _, mask = self._forward(mb, with_entropy=False)
        if not real:  # a padding micro-batch keeps ranks in step but contributes 0
            mask = torch.zeros_like(mask)
        loss = sft_nll_loss(lp, mask, counts[0])
        nll = float(torch.where(mask, -lp.detach(), 0.0).sum())
        bad = not bool(torch.isfinite(loss))
        if bad:  # a non-finite gradient too, so every rank drops the step (see _micro_step)
            loss = loss + lp.sum() * float("nan")
        self.backward(loss)
        return SFTMicroSums(bad=float(bad), nll=0.0 if bad else nll)

    def _mismatch(self, prox: list[torch.Tensor], samples: list[TrainSample]) -> dict:
        """Train/inference log-prob mismatch over all ranks' tokens (see LearnerMetrics), and the
        drift of the policy since the samples were drawn: KL(pi_behaviour || pi_old) per token
        (k3 estimate on the sampled tokens) and per sequence (the sum of -log rho over a
        response, averaged over sequences)."""
        diffs = [p - s.old_logprobs.float().cpu() for p, s in zip(prox, samples)]
        d = torch.cat(diffs) if diffs else torch.zeros(0)
        fin = torch.isfinite(d)
        d = d[fin]
        # Not the loss's k3 (rlsys/algorithms/kl.py caps each token at 10 to keep gradients sane):
        # a diagnostic of how far the policy moved should show the whole move.
        dc = d.clamp(-20.0, 20.0)
        seq = sum(float(-x[torch.isfinite(x)].sum()) for x in diffs)
        g = self.all_reduce(torch.tensor([d.abs().sum(), d.exp().sum(), d.numel(), (dc.exp() - 1 - dc).sum(),
                                          seq, len(diffs)], dtype=torch.float64))
        mx = self.all_reduce(torch.tensor([d.abs().max() if d.numel() else 0.0], dtype=torch.float64), op="max")
        n, n_seq = max(float(g[2]), 1.0), max(float(g[5]), 1.0)
        return {"mismatch_abs_mean": float(g[0]) / n, "mismatch_ratio_mean": float(g[1]) / n,
                "mismatch_abs_max": float(mx[0]), "drift_kl": float(g[3]) / n, "drift_seq_kl": float(g[4]) / n_seq}

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
