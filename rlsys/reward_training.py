"""Bradley-Terry training of the scalar reward model (`rlsys train-rm`). No Ray here.

The model is the PPO critic's (rlsys.critic.ValueModel: the backbone of `spec.model_path`, its
LM head dropped, + a scalar head); a sequence's score is the head's output at its last token
(rlsys.rewards.scalar_rm.last_token_scores), as the RM scores rollouts. A preference pair is
encoded as two demonstration-style TrainSamples (prompt as the engine renders it, then the
response + EOS: rlsys.sft.encode_response), so training sees exactly the sequences the RM later
scores.

Micro-batching: the unit is a pair: `micro_batch_size` pairs per forward, chosen and rejected
of a pair in the same forward (2 x micro_batch_size sequences). Every rank runs the same number
of micro-batches (DeepSpeedTrainerBase.plan_micro_batches); the loss is the mean over the
step's pairs on all ranks.

Shapes: N pairs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from rlsys.deepspeed_base import DeepSpeedTrainerBase, MicroSums, StepMetrics
from rlsys.protocol import PreferencePair, TrainSample
from rlsys.specs import TrainerSpec


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bradley-Terry pairwise loss: mean(-log sigmoid(chosen - rejected - margin)).

    chosen [N], rejected [N]: scores of the preferred and the other response; margin [N] or
    None (0): how far chosen must lead (Llama-2's margin loss). -> [] tensor."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


@dataclass
class EncodedPair:
    """A preference pair ready for the trainer: chosen / rejected as TrainSamples sharing the
    prompt (and its image list), and the margin."""

    chosen: TrainSample
    rejected: TrainSample
    margin: float = 0.0

    @property
    def response_length(self) -> int:
        # One unit in DeepSpeedTrainerBase.global_counts, so counts[0] is the step's pair count.
        return 1


def encode_pair(processor, pair: PreferencePair) -> EncodedPair:
    """Both responses of `pair` after its prompt (rendered once), as the RM scores them.
    Raises ValueError naming the prompt when it cannot be rendered for `processor`."""
    from rlsys.models.forward import prompt_token_ids
    from rlsys.sft import encode_response

    ids = prompt_token_ids(processor, pair.prompt)
    chosen = encode_response(processor, pair.prompt, pair.chosen, prompt_ids=ids)
    rejected = encode_response(processor, pair.prompt, pair.rejected, prompt_ids=ids)
    rejected.images = chosen.images  # one image list: resolved (and decoded) once per pair
    return EncodedPair(chosen, rejected, float(pair.margin))


@dataclass
class RMMicroSums(MicroSums):
    """One micro-batch's sums over its real pairs: loss (its share of the step's mean), correct
    (pairs with chosen > rejected), diff (sum of chosen - rejected)."""

    loss: float = 0.0
    correct: float = 0.0
    diff: float = 0.0


@dataclass
class RMMetrics(StepMetrics):
    """One `bt_step`, identical on every rank (global over ranks), measured in the forward that
    made the update (before it).

    loss: mean Bradley-Terry loss of the step's pairs; accuracy: share with chosen > rejected;
    score_diff: mean chosen - rejected; pairs: the step's pairs; skipped: 1 when a non-finite
    loss dropped the step."""

    loss: float = 0.0
    accuracy: float = 0.0
    score_diff: float = 0.0
    pairs: float = 0.0


class RewardModelTrainer(DeepSpeedTrainerBase):
    """The reward model on one DeepSpeed rank: ValueModel over `spec.model_path`, trained with
    the Bradley-Terry loss, one optimizer step per `bt_step` (the caller's spec has ppo_epochs =
    mini_batches = 1). Model-running methods are collectives under ZeRO-3."""

    def __init__(self, spec: TrainerSpec, backend: str):
        from rlsys.critic import ValueModel

        if spec.ppo_epochs != 1 or spec.mini_batches != 1:
            raise ValueError("RewardModelTrainer takes one optimizer step per bt_step: "
                             f"ppo_epochs and mini_batches must be 1, got {spec.ppo_epochs}, {spec.mini_batches}")
        super().__init__(spec, backend)
        policy, self.processor, self.pad_token_id = self.load_model()
        self._prefix = policy.base_model_prefix
        state = policy.state_dict()
        self._state_keys = set(state)
        shared = {t.data_ptr() for n, t in state.items() if n.startswith(self._prefix + ".")}
        # What the export needs besides the trained backbone: the LM head, untouched here, so the
        # written directory is a full checkpoint that load_policy reloads (a head tied to the
        # embeddings is left to save_pretrained's tying).
        self._frozen_rest = {n: t.detach().cpu().clone() for n, t in state.items()
                             if not n.startswith(self._prefix + ".") and t.data_ptr() not in shared}
        self._policy = policy
        self._init_engine(ValueModel(policy))

    def _scores(self, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (chosen [N], rejected [N]) float32 scores, on the model's device; one forward."""
        from rlsys.models.forward import MODEL_INPUT_KEYS, collate
        from rlsys.rewards.scalar_rm import last_token_scores

        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.processor, self.pad_token_id)
        dev = next(self.engine.module.parameters()).device
        values = self.engine(**{k: batch[k].to(dev) for k in MODEL_INPUT_KEYS if k in batch})
        s = last_token_scores(values, batch["attention_mask"].to(dev))
        return s[: len(pairs)], s[len(pairs):]

    def bt_step(self, pairs: list[EncodedPair]) -> RMMetrics:
        """One optimizer step on this rank's shard of the step's pairs (every rank needs >= 1)."""
        t0 = time.perf_counter()
        self.engine.train()
        lr = self.set_lr_for_step()
        update = self.optimize(pairs, self._micro_step)
        (step,) = update.steps
        n = max(step.sequences, 1.0)
        return RMMetrics(loss=step.sums.loss, accuracy=step.sums.correct / n, score_diff=step.sums.diff / n,
                         grad_norm=float(update.grad_norm), lr=lr, pairs=step.sequences,
                         skipped=float(update.skipped), time_s=time.perf_counter() - t0,
                         peak_mem_mb=self.peak_mem_mb())

    def _micro_step(self, mb: list[EncodedPair], real: bool, counts) -> RMMicroSums:
        chosen, rejected = self._scores(mb)
        margin = torch.tensor([p.margin for p in mb], dtype=chosen.dtype, device=chosen.device)
        # Mean over the whole step (all micro-batches, all ranks): this micro-batch's share.
        loss = bradley_terry_loss(chosen, rejected, margin) * (len(mb) / max(counts[0], 1.0))
        if not real:  # a padding micro-batch keeps ranks in step but contributes 0
            loss = loss * 0.0
        bad = not bool(torch.isfinite(loss))
        if bad:  # a non-finite gradient too, so every rank drops the step
            loss = loss + chosen.sum() * float("nan")
        self.backward(loss)
        d = (chosen - rejected).detach()
        if not real:
            return RMMicroSums(bad=float(bad))
        return RMMicroSums(bad=float(bad), loss=0.0 if bad else float(loss.detach()),
                           correct=float((d > 0).sum()), diff=float(d.sum()))

    @torch.no_grad()
    def pair_scores(self, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (chosen [N], rejected [N]) float32 CPU scores of this rank's pairs (held-out pair
        accuracy). Collective under ZeRO-3: every rank calls, each with >= 1 pair."""
        was_training = self.engine.training
        self.engine.eval()
        chosen, rejected = [], []
        for mb, real in self.plan_micro_batches(pairs, 1)[0]:
            c, r = self._scores(mb)
            if real:
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
        self.engine.train(was_training)
        return torch.cat(chosen), torch.cat(rejected)

    def export(self, out_dir: str) -> None:
        """Write the RM in rlsys's format (rlsys/rewards/scalar_rm.py) from rank 0: the backbone
        as a HF checkpoint of the source model's class (with its untouched LM head) + processor
        files, the value head, and RM_INFO_FILE ({"format", "version", "base"}).
        Collective under ZeRO-3 (the gather); other ranks return after it."""
        from rlsys.critic import save_value_head
        from rlsys.rewards.scalar_rm import RM_FORMAT, RM_INFO_FILE, RM_VERSION

        state = {n: t.detach().cpu().clone() for n, t in self.gathered_parameters()}
        if self.rank == 0:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            weights = dict(self._frozen_rest)
            weights.update({f"{self._prefix}.{n[len('backbone.'):]}": t for n, t in state.items()
                            if n.startswith("backbone.")})
            for n, b in self.engine.module.named_buffers():  # persistent buffers, as export_hf does
                name = f"{self._prefix}.{n[len('backbone.'):]}"
                if n.startswith("backbone.") and name in self._state_keys:
                    weights[name] = b.detach().cpu()
            self._policy.save_pretrained(out, state_dict=weights)
            self.processor.save_pretrained(out)
            save_value_head(state["value_head.weight"], state["value_head.bias"], out)
            meta = {"format": RM_FORMAT, "version": RM_VERSION, "base": str(self.spec.model_path)}
            (out / RM_INFO_FILE).write_text(json.dumps(meta, indent=1))
        self.barrier()
