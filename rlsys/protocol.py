"""The records that flow between stages. Plain dataclasses, no Ray, no torch at import time.

Shapes use: G = samples per prompt, B = prompts per step, N = B*G sequences,
T = padded sequence length (prompt + response), P = prompt length, R = response length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class MediaItem:
    """One image, decoded once, resized to the model's pixel budget and content-hashed.

    sha256: hex digest of `png` (the identity used in logs, Parquet records and caches).
    png:    the resized image, PNG-encoded (lossless, so every consumer decodes the same pixels).
    width, height: size of the resized image in pixels.
    """

    sha256: str
    png: bytes = field(repr=False)  # keeps logs and tracebacks free of raw image bytes
    width: int
    height: int

    def to_pil(self):
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(self.png))
        img.load()
        return img.convert("RGB")


@dataclass
class Prompt:
    """One task instance as the sampler hands it out.

    uid:      stable id, "<source>:<row>" — names the row in errors and records.
    messages: chat messages [{"role": str, "content": str | list[part]}]; an image part is
              {"type": "image"} and refers, in order, to `images`.
    images:   the prompt's images (0..k), in placeholder order.
    answer:   the reference answer a verifier checks against; None when the reward needs none.
    metadata: free-form per-row data passed to reward functions (task type, difficulty, ...).
    """

    uid: str
    messages: list[dict[str, Any]]
    images: list[MediaItem] = field(default_factory=list)
    answer: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout:
    """One sampled response.

    prompt_token_ids:    [P] prompt ids as the engine saw them (image pads expanded).
    response_token_ids:  [R] generated ids (includes EOS when finished by it).
    response_text:       decoded response (special tokens skipped).
    behaviour_logprobs:  [R] log-prob of each generated token under the sampling policy.
    finish_reason:       "stop" | "length" | "abort".
    policy_version:      learner version whose weights produced this sample.
    """

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_text: str
    behaviour_logprobs: list[float]
    finish_reason: str
    policy_version: int


@dataclass
class RolloutGroup:
    """The G samples of one prompt (the unit that streams between actors)."""

    prompt: Prompt
    rollouts: list[Rollout]

    @property
    def size(self) -> int:
        return len(self.rollouts)


@dataclass
class RewardResult:
    """Scores of one group.

    rewards:    [G] combined (weighted) scalar reward per sample.
    components: name -> [G] per-component scores, before weighting.
    failures:   number of reward calls that raised or timed out (each scored 0).
    """

    rewards: list[float]
    components: dict[str, list[float]]
    failures: int = 0


@dataclass
class ScoredGroup:
    """A rollout group with its rewards and (when the algorithm needs them) reference log-probs.

    ref_logprobs: G lists of [R_i] reference log-probs, or None when KL is off.
    values:       G lists of [R_i] critic values (PPO), or None.
    """

    group: RolloutGroup
    reward: RewardResult
    ref_logprobs: Optional[list[list[float]]] = None
    values: Optional[list[list[float]]] = None


@dataclass
class TrainSample:
    """One sequence ready for the learner. Token-level fields cover the response only.

    input_ids:      [P+R] long, prompt ids (image pads expanded) then response ids.
    response_start: P, index in input_ids of the first response token.
    images:         the prompt's images; the learner/reference re-run the image processor on
                    them, so pixel_values match what the engine saw.
    old_logprobs:   [R] float, behaviour log-probs (from the engine, or recomputed).
    advantages:     [R] float.
    ref_logprobs:   [R] float or None.
    returns:        [R] float or None (PPO critic target).
    values:         [R] float or None (critic values at sampling time, for value clipping).
    policy_version: version of the weights that sampled it (for staleness metrics).
    group_index:    which prompt group of the batch it belongs to.
    """

    input_ids: Any  # torch.LongTensor [P+R]
    response_start: int
    images: list[MediaItem]
    old_logprobs: Any  # torch.FloatTensor [R]
    advantages: Any  # torch.FloatTensor [R]
    ref_logprobs: Any = None
    returns: Any = None
    values: Any = None
    policy_version: int = 0
    group_index: int = 0

    @property
    def response_length(self) -> int:
        return int(self.input_ids.shape[0]) - self.response_start


@dataclass
class TrainBatch:
    """The samples of one optimisation step; the learner group splits it across ranks."""

    samples: list[TrainSample]
    policy_version: int = 0
