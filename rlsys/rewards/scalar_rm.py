"""The scalar reward model: one score per (image, prompt, response), read by a scalar head at the
sequence's last token. No Ray here (actors/reward_model.py serves it); not imported by
`rlsys.rewards` (it loads torch and transformers).

Two checkpoint kinds load:
  - rlsys's own format (what `rlsys train-rm` writes): a directory with RM_INFO_FILE
    ({"format": "rlsys-scalar-rm", "version": 1, "base": <source model>, ...}), a HF (VL)M
    checkpoint holding the trained backbone (config, weights, tokenizer, processor files) and
    the value head (rlsys.critic.VALUE_HEAD_FILE). The model is the PPO critic's
    rlsys.critic.ValueModel: sequences, images and the head are those of the critic. (Trained
    from a text-only base, it is text-only too and scores prompts as the kind below does.)
  - a HF sequence-classification checkpoint with num_labels == 1 (directory or hub id). It is
    text-only: a multimodal prompt given to it is scored on its text alone (image parts and
    images dropped before rendering). Its head is the checkpoint's `score` (or `classifier`)
    Linear, applied at the same last token, so both kinds score the same position.

Sequences are re-rendered with the RM's own processor (`rm_samples`): the prompt as the engine
renders it for this processor, then the response text + EOS (rlsys.sft.encode_response, the
demonstration encoding), so an RM whose tokenizer differs from the policy's still works; images
go through `collate`, the learner's processor path, so pixel_values are the learner's.

Shapes: N sequences in a forward, T padded length, G samples of a group.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from rlsys.protocol import ModelScores, Prompt, RewardResult, RolloutGroup, TrainSample
from rlsys.specs import ScalarRMSpec

RM_INFO_FILE = "rlsys_rm.json"
RM_FORMAT, RM_VERSION = "rlsys-scalar-rm", 1


def last_token_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values [N, T] per-position head outputs, attention_mask [N, T] (right-padded, 1 on real
    tokens) -> [N]: each sequence's value at its last real token."""
    last = attention_mask.long().sum(-1).clamp(min=1) - 1
    return values.gather(1, last[:, None]).squeeze(1)


def is_rlsys_rm(path) -> bool:
    """True when `path` is a directory in rlsys's RM format (has RM_INFO_FILE of that format)."""
    info = Path(str(path)) / RM_INFO_FILE
    try:
        return json.loads(info.read_text()).get("format") == RM_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def text_only(prompt: Prompt) -> Prompt:
    """The prompt without its images and image parts (what a text-only RM scores)."""
    def strip(content):
        if isinstance(content, str):
            return content
        return [p for p in content if not (isinstance(p, dict) and (p.get("type") in ("image", "image_url")
                                                                      or "image" in p))]

    return replace(prompt, images=[], messages=[dict(m, content=strip(m["content"])) for m in prompt.messages])


def rm_samples(processor, group: RolloutGroup, multimodal: bool = True) -> list[TrainSample]:
    """One TrainSample per rollout of `group`, in order: the prompt rendered by `processor`, then
    the response text + EOS (rlsys.sft.encode_response). `multimodal` False: the text-only
    prompt (`text_only`). The group must hold byte-holding images (resolve media refs first).
    Raises ValueError naming the prompt when it cannot be rendered for this processor."""
    from rlsys.models.forward import prompt_token_ids
    from rlsys.sft import encode_response

    prompt = group.prompt if multimodal else text_only(group.prompt)
    ids = prompt_token_ids(processor, prompt)  # once per group: its G responses share it
    return [encode_response(processor, prompt, r.response_text, prompt_ids=ids) for r in group.rollouts]


class ScalarRewardModel:
    """A scalar RM replica as `spec` (rlsys.specs.ScalarRMSpec) describes it; see the module
    docstring for the checkpoint kinds. device: "auto" = the current CUDA device if there is
    one, else CPU."""

    def __init__(self, spec: ScalarRMSpec, device: str = "auto"):
        from rlsys.critic import ValueModel
        from rlsys.models.loading import load_processor, pad_token_id

        self.spec = spec
        if device == "auto":
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        path, trust = str(spec.model_path), spec.trust_remote_code
        self.processor = load_processor(path, trust_remote_code=trust)
        self.multimodal = getattr(self.processor, "image_processor", None) is not None
        if is_rlsys_rm(path):
            self.kind = "rlsys"
            model = ValueModel.from_pretrained(path, spec.dtype, trust_remote_code=trust)
        else:
            self.kind = "sequence_classification"
            model = ValueModel(*_sequence_classifier(path, spec.dtype, trust))
            self.multimodal = False
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.pad_token_id = pad_token_id(self.processor)

    def samples(self, groups: list[RolloutGroup]) -> tuple[list[Optional[TrainSample]], list[Optional[str]]]:
        """(the sequences this RM scores, one per rollout in group order; why each cannot be
        scored, None where it can): a group whose prompt cannot be rendered for this processor,
        or a sequence over spec.max_length, gets the reason (and no sample for the former)."""
        samples: list[Optional[TrainSample]] = []
        errors: list[Optional[str]] = []
        limit = self.spec.max_length
        for g in groups:
            try:
                got = rm_samples(self.processor, g, self.multimodal)
            except ValueError as err:
                samples += [None] * g.size
                errors += [str(err).splitlines()[0]] * g.size
                continue
            samples += got
            errors += [f"sequence of {s.input_ids.shape[0]} tokens is over max_length={limit}"
                       if s.input_ids.shape[0] > limit else None for s in got]
        return samples, errors

    def rm_batch(self, groups: list[RolloutGroup]) -> dict:
        """The collated model inputs of all of `groups`' scorable sequences in one batch
        (rlsys.models.forward.collate): what the RM's forward gets, e.g. pixel_values
        [sum patches, D]."""
        from rlsys.models.forward import collate

        samples, errors = self.samples(groups)
        return collate([s for s, e in zip(samples, errors) if e is None], self.processor, self.pad_token_id)

    @torch.no_grad()
    def score_samples(self, samples: list[TrainSample]) -> torch.Tensor:
        """-> [N] float32 CPU scores, `spec.batch_size` sequences per forward."""
        from rlsys.models.forward import MODEL_INPUT_KEYS, collate

        out = []
        for i in range(0, len(samples), self.spec.batch_size):
            batch = collate(samples[i:i + self.spec.batch_size], self.processor, self.pad_token_id)
            values = self.model(**{k: batch[k].to(self.device) for k in MODEL_INPUT_KEYS if k in batch})
            out.append(last_token_scores(values, batch["attention_mask"].to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score_groups(self, groups: list[RolloutGroup]) -> list[ModelScores]:
        """One ModelScores per group: [G] scores. A sequence longer than spec.max_length (it is
        not cut: a cut sequence would score another text) or whose prompt could not be rendered
        fails: score 0, counted in `failures`, the first one in `first_failure`."""
        samples, errors = self.samples(groups)
        ok = [s for s, e in zip(samples, errors) if e is None]
        scores = iter(self.score_samples(ok).tolist())
        out, k = [], 0
        for g in groups:
            res = ModelScores(scores=[])
            for j in range(g.size):
                err = errors[k + j]
                res.scores.append(next(scores) if err is None else 0.0)
                if err is not None:
                    res.failures += 1
                    if res.first_failure is None:
                        res.first_failure = RewardResult.Failure(err, g.prompt.uid, j)
            out.append(res)
            k += g.size
        return out


def _sequence_classifier(path: str, dtype, trust_remote_code: bool):
    """(sequence-classification model, its scalar head) of a HF checkpoint with one label."""
    from transformers import AutoModelForSequenceClassification

    from rlsys.models.loading import _torch_dtype

    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise ValueError(f"reward model {path}: not an `rlsys train-rm` directory (no {RM_INFO_FILE}) and not a "
                         f"sequence-classification checkpoint with num_labels=1 (found {model.config.num_labels})")
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"reward model {path}: no Linear `score`/`classifier` head on {type(model).__name__}")
    return model, head
