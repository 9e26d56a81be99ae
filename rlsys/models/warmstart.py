"""Cold-start warm start: a short supervised fine-tune on task demonstrations before RL.

A randomly initialised tiny VLM never writes `<think>..</think><answer>..</answer>`, so every
GRPO group would score the same and carry no signal. SFT on demonstrations teaches the R1
format and the task.

The embedded default stands in for a pretrained model that can solve the task but often does
not try: a `guess_fraction` of its demonstrations answer without looking
(`<think>I will guess.</think>` and an answer drawn from other rows), the rest reason from the
image. The warm-started model knows both behaviours and, greedily, guesses; RL has to find
that looking pays (reward, accuracy and response length rise together). A 1M-parameter model
cannot learn to see from a few hundred sampled rewards on 2 CPU cores, but it can learn which
of its behaviours to use, which is what RL does for real R1-style models.

Plain torch + transformers (no Ray); deterministic given the seed and the thread count.
The defaults below come from bench/warmstart_mixture.py (numbers in
bench/results/warmstart_mixture.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from rlsys.data.synthetic import demonstration
from rlsys.data.templates import R1_SYSTEM_PROMPT, build_messages
from rlsys.protocol import Prompt

logger = logging.getLogger(__name__)

# Calibrated on the embedded default (tiny model, majority_color, 56 px images, 2048 train rows,
# bench/results/warmstart_mixture.md): after 300 steps at guess fraction 0.6 the greedy
# response guesses (better than chance: the answer token still sees the image), sampled
# looking is ~97% right, format ~100%; about 80 s on one CPU thread.
DEFAULT_SFT_STEPS = 300
DEFAULT_SFT_LR = 1e-3
DEFAULT_GUESS_FRACTION = 0.6
GUESS_REASONING = "I will guess."
DEFAULT_SFT_BATCH_SIZE = 16
DEFAULT_MAX_NEW_TOKENS = 48

PromptSource = Union[str, Path, Sequence[Union[dict, Prompt]]]


@dataclass
class WarmStartResult:
    """out_dir: the saved HF checkpoint; final_loss: mean response-token loss of the last
    step; initial_loss: of the first step (before any update); seconds: wall time of training."""

    out_dir: Path
    steps: int
    final_loss: float
    seconds: float
    initial_loss: float = float("nan")


# ---- demonstrations ------------------------------------------------------------------------

# Families whose answer depends on one attribute of every object: the demonstration first
# names that attribute cell by cell (reading order, "empty" for a free cell), then concludes.
_PERCEIVED_ATTRIBUTE = {"count_color": "color", "count_shape": "shape", "majority_color": "color"}


def perception_demonstration(prompt: Union[Prompt, dict]) -> str:
    """`synthetic.demonstration`, with the think block prefixed by what each cell holds:
    `<think>blue, empty, red, blue. There are 2 blue shapes.</think><answer>2</answer>`.

    Why: with the one-sentence demonstration the tiny model must read, match and count the
    objects within one token; it never learns that (3000 SFT steps: stuck at "count all
    objects", ~43%). Naming each cell first splits it into a per-cell lookup and a count over
    text, which it learns from pixels (~100% after ~1500 steps). Calibration: see the module
    docstring. Families without an entry fall back to the plain demonstration.
    """
    from rlsys.data.synthetic import CELL, FAMILIES
    from rlsys.data.templates import format_response

    meta = prompt.get("metadata") if isinstance(prompt, dict) else prompt.metadata
    meta = json.loads(meta) if isinstance(meta, str) else meta
    attr = _PERCEIVED_ATTRIBUTE.get((meta or {}).get("family"))
    if attr is None:
        return demonstration(prompt)
    grid = meta["difficulty"]["image_size"] // CELL
    cells = ["empty"] * (grid * grid)
    for obj in meta["objects"]:
        row, col = obj["cell"]
        cells[row * grid + col] = obj[attr]
    reasoning, answer = FAMILIES[meta["family"]].solve(meta["objects"], meta.get("target"))
    return format_response(f"{', '.join(cells)}. {reasoning}", answer)


def guess_demonstration(answer: str) -> str:
    """A response that answers without looking at the image."""
    from rlsys.data.templates import format_response

    return format_response(GUESS_REASONING, answer)


def is_guess(response: str) -> bool:
    return response.startswith(f"<think>{GUESS_REASONING}")


def mixed_demonstrations(prompts: Sequence[Prompt], demonstrate: Callable[[Prompt], str],
                         guess_fraction: float, seed: int) -> list[str]:
    """One target response per prompt: round(guess_fraction * len) of them (a seeded choice)
    guess an answer taken from another random prompt, so guesses follow the task's answer
    distribution whatever the family; the rest are `demonstrate(prompt)`."""
    if not 0.0 <= guess_fraction <= 1.0:
        raise ValueError(f"guess_fraction must be in [0, 1], got {guess_fraction}")
    rng = np.random.default_rng([seed, 7])  # its own stream: the SFT batch order stays the same
    n = len(prompts)
    guessing = set(rng.permutation(n)[: round(guess_fraction * n)].tolist())
    donors = rng.integers(0, n, size=n)
    return [guess_demonstration(str(prompts[int(donors[i])].answer)) if i in guessing
            else demonstrate(p) for i, p in enumerate(prompts)]


# ---- prompts -----------------------------------------------------------------------------

def as_prompts(source: PromptSource, system_prompt: Optional[str] = R1_SYSTEM_PROMPT) -> list[Prompt]:
    """Prompts from a dataset file (via `load_prompts`), Prompt objects, or generated rows
    ({prompt, images: [png bytes], answer, metadata}); the R1 system turn is added as in RL."""
    from rlsys.data.datasets import load_prompts
    from rlsys.data.media import to_media_item

    if isinstance(source, (str, Path)):
        return load_prompts(source, system_prompt=system_prompt).prompts
    out = []
    for i, row in enumerate(source):
        if isinstance(row, Prompt):
            out.append(row)
            continue
        images = [to_media_item(b) for b in row.get("images") or []]
        out.append(Prompt(uid=str(row.get("id", i)), images=images, answer=row.get("answer"),
                          messages=build_messages(row["prompt"], len(images), system_prompt),
                          metadata=dict(row.get("metadata") or {})))
    return out


def _encode_prompt(processor, prompt: Prompt) -> dict[str, torch.Tensor]:
    """Processor output for the prompt alone (image pads expanded), batch dim removed.
    Rendered by `forward.render_prompt`, the one the rollout engine and learner use."""
    from rlsys.models.forward import render_prompt

    text = render_prompt(processor, prompt)
    images = [im.to_pil() for im in prompt.images] or None
    enc = processor(text=[text], images=images, return_tensors="pt")
    return {k: (v[0] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
            for k, v in enc.items()}


def encode_example(processor, prompt: Prompt, response: str) -> dict[str, torch.Tensor]:
    """One SFT example: prompt ids + response ids + end-of-turn, labels -100 on the prompt.

    The response is tokenised separately and appended (not re-tokenised with the prompt), which
    is exactly how generated tokens follow the prompt at sampling time.
    """
    tok = processor.tokenizer
    enc = _encode_prompt(processor, prompt)
    resp = tok(response + tok.eos_token, add_special_tokens=False, return_tensors="pt").input_ids[0]
    p = enc["input_ids"].shape[0]
    enc["input_ids"] = torch.cat([enc["input_ids"], resp])
    enc["labels"] = torch.cat([torch.full((p,), -100), resp])
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    if "mm_token_type_ids" in enc:  # response tokens are text (type 0)
        enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(resp)])
    return enc


def collate(examples: list[dict], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad sequence fields (right for training, left for generation); concatenate the vision
    fields (Qwen2.5-VL packs all images' patches into one tensor)."""
    width = max(e["input_ids"].shape[0] for e in examples)
    pad_values = {"input_ids": pad_id, "labels": -100, "attention_mask": 0, "mm_token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    for key, value in pad_values.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            pad = torch.full((width - e[key].shape[0],), value, dtype=e[key].dtype)
            rows.append(torch.cat([pad, e[key]] if left else [e[key], pad]))
        batch[key] = torch.stack(rows)
    for key in ("pixel_values", "image_grid_thw"):
        parts = [e[key] for e in examples if key in e]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


@contextlib.contextmanager
def _threads(n: Optional[int]):
    """Temporarily use n intra-op threads (None: leave torch's setting). The tiny model's
    matrices are too small to gain from threads, and on a busy machine extra threads mostly
    spin: 1 thread was ~10x faster than 2 on the shared 2-core calibration machine."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- training ------------------------------------------------------------------------------

def response_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def load_model(model_dir: Union[str, Path]):
    """(model in eval mode, processor) of a HF checkpoint directory, float32."""
    from rlsys.models.loading import load_policy, load_processor

    return load_policy(model_dir, "float32"), load_processor(model_dir)


def _save(model, processor, model_dir: Path, out_dir: Path, info: dict) -> None:
    """Same files as the source checkpoint (copied first, so e.g. rlsys_tiny.json and the
    generation config survive), with the trained weights written over them."""
    if out_dir.resolve() != model_dir.resolve():
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    (out_dir / "rlsys_warmstart.json").write_text(json.dumps(info, indent=1))


def _train(model, examples: list[dict], pad_id: int, *, steps: int, lr: float, batch_size: int,
           seed: int, warmup_steps: int, max_grad_norm: float, log_every: int,
           on_step: Optional[Callable[[int, list[float]], None]] = None) -> list[float]:
    """AdamW, linear warm-up then constant lr (so a run of N steps is the prefix of a longer
    run, so a snapshot after n steps equals an n-step run). Batches are drawn without
    replacement from a seeded permutation, reshuffled each epoch. on_step(n, losses) runs
    after step n. -> per-step losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)))
    model.train()
    order: list[int] = []
    losses: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.permutation(len(examples)).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        loss = response_loss(model, collate([examples[i] for i in idx], pad_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            logger.info("warm start step %d/%d loss %.4f", step + 1, steps, losses[-1])
        if on_step is not None:
            on_step(step + 1, losses)
    model.eval()
    return losses


def sft_warm_start(
    model_dir: Union[str, Path],
    rows_or_parquet: PromptSource,
    out_dir: Union[str, Path],
    *,
    steps: int = DEFAULT_SFT_STEPS,
    lr: float = DEFAULT_SFT_LR,
    batch_size: int = DEFAULT_SFT_BATCH_SIZE,
    seed: int = 0,
    warmup_steps: int = 5,
    max_grad_norm: float = 1.0,
    system_prompt: Optional[str] = R1_SYSTEM_PROMPT,
    demonstrate: Callable[[Prompt], str] = demonstration,
    guess_fraction: float = 0.0,
    num_threads: Optional[int] = 1,
    snapshot_steps: Sequence[int] = (),
    log_every: int = 0,
) -> WarmStartResult:
    """Fine-tune `model_dir` on `demonstration(row)` responses and save it to `out_dir`.

    rows_or_parquet: synthetic rows (dicts), Prompts, or a dataset file (e.g. train.parquet);
    they need the synthetic metadata the demonstration is derived from. demonstrate(prompt)
    gives each target response (`synthetic.demonstration` for the one-sentence form);
    guess_fraction of them are replaced by guesses (`mixed_demonstrations`). The loss
    covers the response tokens and the end-of-turn token only. steps=0 just copies the
    checkpoint (the "no warm start" baseline). seconds in the result is the whole call
    (load, encode, train, save). num_threads: see `_threads` (None keeps torch's setting).
    snapshot_steps: also save the model after these step counts, to out_dir/step-<n>
    (identical to an n-step run; the calibration sweeps steps with one run this way).
    """
    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    prompts = as_prompts(rows_or_parquet, system_prompt)
    if not prompts:
        raise ValueError("sft_warm_start: no prompts to train on")
    with _threads(num_threads), torch.random.fork_rng(devices=[]):
        model, processor = load_model(model_dir)
        targets = mixed_demonstrations(prompts, demonstrate, guess_fraction, seed)
        examples = [encode_example(processor, p, t) for p, t in zip(prompts, targets)]
        info = dict(demonstration=getattr(demonstrate, "__name__", str(demonstrate)),
                    guess_fraction=guess_fraction, lr=lr,
                    batch_size=batch_size, seed=seed, num_rows=len(examples), source=str(model_dir))

        def record(n: int, losses: list[float]) -> dict:
            nan = float("nan")
            return dict(info, steps=n, seconds=time.perf_counter() - t0,
                        initial_loss=losses[0] if losses else nan,
                        final_loss=losses[-1] if losses else nan)

        def snapshot(n: int, losses: list[float]) -> None:
            if n in snapshot_steps and n != steps:
                _save(model, processor, model_dir, out_dir / f"step-{n}", record(n, losses))
                model.train()  # save_pretrained leaves the mode alone; be explicit anyway

        losses = _train(model, examples, processor.tokenizer.pad_token_id, steps=steps, lr=lr,
                        batch_size=batch_size, seed=seed, warmup_steps=warmup_steps,
                        max_grad_norm=max_grad_norm, log_every=log_every, on_step=snapshot)
        final = record(steps, losses)
        _save(model, processor, model_dir, out_dir, final)
    return WarmStartResult(out_dir=out_dir, steps=steps, final_loss=final["final_loss"],
                           seconds=time.perf_counter() - t0, initial_loss=final["initial_loss"])


# ---- evaluation ----------------------------------------------------------------------------

@torch.no_grad()
def generate_responses(model, processor, prompts: Sequence[Prompt], *, max_new_tokens: int,
                       num_samples: int = 1, temperature: float = 0.0, seed: int = 0,
                       batch_size: int = 32) -> list[list[str]]:
    """`num_samples` decoded responses per prompt (temperature 0: greedy), special tokens
    skipped as the rollout engine does (the R1 tags are ordinary tokens and stay)."""
    from rlsys.models.forward import suppressed_token_ids

    tok = processor.tokenizer
    sampling = temperature > 0
    # As the rollout engine does: never emit an image/video placeholder token.
    suppress = suppressed_token_ids(processor) or None
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            encs = [_encode_prompt(processor, p) for p in prompts[start:start + batch_size]]
            batch = collate(encs, tok.pad_token_id, left=True)
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sampling,
                                 temperature=temperature if sampling else None, top_p=None,
                                 top_k=None, num_return_sequences=num_samples,
                                 pad_token_id=tok.pad_token_id, suppress_tokens=suppress)
            texts = tok.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
    return out


def score(prompt: Prompt, response: str) -> tuple[float, float]:
    """(accuracy, r1_format) rewards of one response, by the same verifiers RL uses."""
    from rlsys.rewards import get_reward

    acc, fmt = get_reward("accuracy"), get_reward("r1_format")
    return acc(response, prompt.answer, prompt.metadata), fmt(response, prompt.answer, prompt.metadata)


def greedy_accuracy(model_dir: Union[str, Path], prompts_or_parquet: PromptSource,
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, limit: Optional[int] = None,
                    *, system_prompt: Optional[str] = R1_SYSTEM_PROMPT,
                    num_threads: Optional[int] = 1) -> tuple[float, float]:
    """(accuracy, format_rate) of greedy responses on the first `limit` prompts, scored by
    the `accuracy` and `r1_format` rewards."""
    prompts = as_prompts(prompts_or_parquet, system_prompt)[:limit]
    if not prompts:
        raise ValueError("greedy_accuracy: no prompts")
    with _threads(num_threads):
        model, processor = load_model(model_dir)
        responses = generate_responses(model, processor, prompts, max_new_tokens=max_new_tokens)
    scores = np.array([score(p, r[0]) for p, r in zip(prompts, responses)])
    return float(scores[:, 0].mean()), float(scores[:, 1].mean())
