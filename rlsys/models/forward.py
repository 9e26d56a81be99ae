"""Prompt rendering, batching and per-token log-probs with multimodal inputs (no Ray).

The learner, the reference and the critic all go through `collate` + `token_logprobs`, and
they re-run the same image processor on the same stored images as the rollout engine, so the
vision features and the 3-D (M-RoPE) positions match what vLLM computed while sampling.

Shapes: N sequences, T padded length, R_max longest response, V vocab, H hidden.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from rlsys.protocol import MediaItem, Prompt, TrainSample

# Optional per-token fields of TrainSample that collate pads to [N, R_max] when present.
_RESPONSE_FIELDS = ("old_logprobs", "advantages", "ref_logprobs", "returns", "values")

# The rollout engine adds this bias to the logits of the image/video placeholder tokens so a
# policy never *generates* one (a generated <|image_pad|> would be taken for an image slot by
# transformers and break the learner's forward). token_logprobs adds the same bias, before
# temperature as vLLM does, so behaviour and learner log-probs stay identical. (vLLM clamps
# logit_bias to [-100, 100]; e^-100 is zero in practice and, unlike -inf, never yields NaN.)
SUPPRESS_BIAS = -100.0


def suppressed_token_ids(processor) -> list[int]:
    """Ids never sampled: the image/video placeholders of a multimodal processor, else []."""
    ids = [getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None)]
    return sorted({int(i) for i in ids if i is not None})


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and (part.get("type") in ("image", "image_url") or "image" in part)


def count_image_parts(messages: Sequence[dict]) -> int:
    return sum(_is_image_part(p) for m in messages if isinstance(m.get("content"), list)
               for p in m["content"])


def render_prompt(processor, prompt: Prompt) -> str:
    """The prompt as text: chat template + generation prompt; one vision block per image part.

    Text-only tokenizers get list contents flattened to a string (their templates may not
    accept parts). Raises ValueError naming the prompt when image parts and images disagree.
    """
    n_parts = count_image_parts(prompt.messages)
    if n_parts != len(prompt.images):
        raise ValueError(f"prompt {prompt.uid}: {n_parts} image placeholders in messages but "
                         f"{len(prompt.images)} images")
    messages = prompt.messages
    if getattr(processor, "image_processor", None) is None:
        if n_parts:
            raise ValueError(f"prompt {prompt.uid}: has images but the model is text-only")
        messages = [dict(m, content=m["content"] if isinstance(m["content"], str) else
                         "".join(p.get("text", "") for p in m["content"])) for m in messages]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text if isinstance(text, str) else text[0]


class ProcessedImageCache:
    """The image processor's output per (processor, image hash), least recently used first out
    once `max_bytes` is exceeded. A group's G samples share one image and every PPO epoch,
    micro-batch and role pass re-reads it, so each image is processed once per process, not
    once per sample per forward (it was ~7% of a learner step on the tiny model). Processing
    images one at a time and concatenating equals processing the list: image processors treat
    each image independently (Qwen2-VL flattens patches, fixed-size ones stack along dim 0)."""

    def __init__(self, max_bytes: int = 512 << 20):
        from collections import OrderedDict

        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._items: "OrderedDict[tuple, dict]" = OrderedDict()

    def get(self, processor, item: MediaItem) -> dict:
        key = (id(processor), item.sha256)
        out = self._items.get(key)
        if out is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return out
        self.misses += 1
        raw = processor.image_processor(images=[item.to_pil()], return_tensors="pt")
        out = {"pixel_values": raw["pixel_values"], "image_grid_thw": raw["image_grid_thw"]}
        self._items[key] = out
        self.bytes += sum(t.numel() * t.element_size() for t in out.values())
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in old.values())
        return out


IMAGE_CACHE = ProcessedImageCache()


def image_inputs(processor, images: Sequence[MediaItem], cache: Optional[ProcessedImageCache] = IMAGE_CACHE) -> dict:
    """Run the image processor on decoded MediaItems, in order (each image's output cached by
    its hash, see ProcessedImageCache; cache=None processes them afresh).

    Returns {} for no images, else {"pixel_values": [sum_i patches_i, C*t*p*p] float,
    "image_grid_thw": [n_images, 3] long}.
    """
    import torch

    if not images:
        return {}
    if cache is None:
        out = processor.image_processor(images=[m.to_pil() for m in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    parts = [cache.get(processor, m) for m in images]
    if len(parts) == 1:
        return dict(parts[0])
    return {k: torch.cat([p[k] for p in parts], 0) for k in ("pixel_values", "image_grid_thw")}


def prompt_token_ids(processor, prompt: Prompt) -> list[int]:
    """Prompt ids with image pads expanded, exactly as the engine sees them (for tests and for
    recomputing old log-probs of offline data)."""
    text = render_prompt(processor, prompt)
    if prompt.images:
        out = processor(text=[text], images=[m.to_pil() for m in prompt.images], return_tensors="pt")
        return out["input_ids"][0].tolist()
    tok = getattr(processor, "tokenizer", processor)
    return tok(text, add_special_tokens=False)["input_ids"]


def pad_rows(rows: Sequence[Any], width: int, value: float = 0.0):
    """Right-pad 1-D per-sample tensors/lists [R_i] (R_i <= width) into [len(rows), width]
    float32 on CPU: the one padding helper of batching, the learners and collate."""
    import torch

    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        r = torch.as_tensor(r, dtype=torch.float32).reshape(-1)
        out[i, : r.shape[0]] = r
    return out


def collate(samples: Sequence[TrainSample], processor, pad_token_id: int) -> dict:
    """Batch TrainSamples for one forward pass.

    Returns
      input_ids [N, T] long (right-padded with pad_token_id), attention_mask [N, T] long,
      response_start [N] long, response_length [N] long, response_mask [N, R_max] float,
      and, only when some sample has images: pixel_values [sum patches, D],
      image_grid_thw [n_images, 3] (samples' images concatenated in sample order);
      mm_token_type_ids [N, T] int (0 text, 1 image, 2 video) for multimodal processors —
      transformers needs it to build the 3-D M-RoPE positions vLLM uses;
      response_ids [N, R_max] long (the tokens whose log-probs are taken; 0 where padded),
      suppress_token_ids [k] long (see SUPPRESS_BIAS; empty for text-only processors),
      plus each of old_logprobs/advantages/ref_logprobs/returns/values padded to [N, R_max]
      when every sample has it.

    A placeholder token inside a *response* (only possible when sampling did not suppress
    it) is fed to the model as pad_token_id, so it is not mistaken for an image slot; its
    log-prob is still taken for the original id.
    """
    import torch

    if not samples:
        raise ValueError("collate: empty sample list")
    n = len(samples)
    lengths = [int(s.input_ids.shape[0]) for s in samples]
    T = max(lengths)
    starts = torch.tensor([s.response_start for s in samples], dtype=torch.long)
    resp_len = torch.tensor([L - s.response_start for L, s in zip(lengths, samples)], dtype=torch.long)
    if (starts < 1).any() or (resp_len < 0).any():
        raise ValueError("collate: every sample needs 1 <= response_start <= len(input_ids)")
    r_max = max(int(resp_len.max()), 1)

    input_ids = torch.full((n, T), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : lengths[i]] = torch.as_tensor(s.input_ids, dtype=torch.long)
        attention_mask[i, : lengths[i]] = 1
    response_mask = (torch.arange(r_max)[None, :] < resp_len[:, None]).float()
    response_ids = torch.zeros((n, r_max), dtype=torch.long)
    for i, s in enumerate(samples):
        response_ids[i, : resp_len[i]] = input_ids[i, s.response_start: lengths[i]]
    suppress = suppressed_token_ids(processor)
    in_response = torch.arange(T)[None, :] >= starts[:, None]
    for tid in suppress:
        input_ids[in_response & (input_ids == tid)] = int(pad_token_id)
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, response_start=starts,
                 response_length=resp_len, response_mask=response_mask,
                 response_ids=response_ids,
                 suppress_token_ids=torch.tensor(suppress, dtype=torch.long))

    image_id = getattr(processor, "image_token_id", None)
    if image_id is not None:
        video_id = getattr(processor, "video_token_id", None)
        mm = (input_ids == image_id).int() * attention_mask.int()
        if video_id is not None:
            mm = mm + 2 * (input_ids == video_id).int() * attention_mask.int()
        batch["mm_token_type_ids"] = mm
    pixels, grids = [], []
    for i, s in enumerate(samples):
        if not s.images:
            continue
        if image_id is None:
            raise ValueError(f"collate: sample {i} has images but the processor is text-only")
        inp = image_inputs(processor, s.images)
        merge = processor.image_processor.merge_size ** 2
        want = int(inp["image_grid_thw"].prod(-1).sum()) // merge
        have = int((input_ids[i, : s.response_start] == image_id).sum())
        if want != have:
            raise ValueError(f"collate: sample {i} has {have} image tokens but its "
                             f"{len(s.images)} image(s) give {want} (resized differently?)")
        pixels.append(inp["pixel_values"])
        grids.append(inp["image_grid_thw"])
    return add_images_and_response_fields(batch, samples, pixels, grids, r_max)


def add_images_and_response_fields(batch: dict, samples: Sequence[TrainSample], pixels: list, grids: list,
                                   r_max: int) -> dict:
    """The tail both batchings share (`collate`, rlsys.models.packing.collate_packed): the images'
    pixel_values / image_grid_thw concatenated in order, and each per-token field of
    _RESPONSE_FIELDS padded to [N, R_max] when every sample has it."""
    import torch

    if pixels:
        batch["pixel_values"] = torch.cat(pixels, 0)
        batch["image_grid_thw"] = torch.cat(grids, 0)
    for name in _RESPONSE_FIELDS:
        vals = [getattr(s, name) for s in samples]
        if all(v is not None for v in vals):
            batch[name] = pad_rows(vals, r_max)
    return batch


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
                    "position_ids")


def _predicting_positions(batch: dict):
    """Indices [N, R_max] of the positions whose logits predict each response token
    (position start-1+j predicts token start+j), clamped inside the sequence for padding."""
    import torch

    start, mask = batch["response_start"], batch["response_mask"]
    j = torch.arange(mask.shape[1], device=start.device)
    return (start[:, None] - 1 + j[None, :]).clamp(max=batch["input_ids"].shape[1] - 2)


def token_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False):
    """Log-prob of every response token under `model` (softmax of logits / temperature), for a
    batch of `collate` or of `rlsys.models.packing.collate_packed` (samples in input order).

    Returns (logprobs [N, R_max] float32, entropy [N, R_max] float32 or None,
    response_mask [N, R_max] float32); padded positions hold 0. Differentiable when grad is
    enabled (call under torch.no_grad() for the reference / old log-probs).

    The suppressed placeholder tokens get the engine's logit bias (see SUPPRESS_BIAS).
    Memory: the LM head runs only on positions from the earliest response start on (via
    `logits_to_keep`), and the float32 log-softmax only on the gathered [N, R_max, V] slice,
    never a full [N, T, V] float32 copy.
    """
    import torch

    dev = next(model.parameters()).device
    inputs = {k: batch[k].to(dev) for k in MODEL_INPUT_KEYS if k in batch}
    mask = batch["response_mask"].to(dev)
    if "gather_rows" in batch:  # packed rows (rlsys/models/packing.py)
        rows, pred = batch["gather_rows"].to(dev), batch["gather_cols"].to(dev)
    else:
        pred = _predicting_positions(batch).to(dev)
        rows = torch.arange(pred.shape[0], device=dev)[:, None]
    first, last = int(pred.min()), int(pred.max())
    # logits_to_keep as an index tensor keeps positions first..last (same for every row).
    keep = torch.arange(first, last + 1, device=dev)
    try:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [rows, K, V]
    except TypeError:  # a model without `logits_to_keep`: full logits, then the same slice
        logits = model(**inputs, use_cache=False).logits[:, first:last + 1]
    logits = logits[rows, pred - first]  # [N, R_max, V]
    logits = logits.float()
    suppress = batch.get("suppress_token_ids")
    if suppress is not None and suppress.numel():
        bias = torch.zeros(logits.shape[-1], device=dev)
        bias[suppress.to(dev)] = SUPPRESS_BIAS
        logits = logits + bias
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch["response_ids"].to(dev)  # [N, R_max]
    lse = torch.logsumexp(logits, dim=-1)
    logp = (logits.gather(-1, targets[..., None]).squeeze(-1) - lse) * mask
    entropy: Optional[Any] = None
    if with_entropy:
        probs = torch.softmax(logits, dim=-1)
        entropy = (lse - (probs * logits).sum(-1)) * mask
    return logp, entropy, mask
