"""Shared-prompt packing: a group's G samples share one prompt and its images, so the learner
can run that prompt once per group instead of G times (no Ray).

A packed row holds one prompt followed by the responses of every sample that shares it:
`[prompt | response_1 | response_2 | ...]`. A 4-D attention mask lets each response attend to the
prompt and to its own earlier tokens only, and each response's positions continue from the
prompt's (for Qwen2-VL-style models the 3-D M-RoPE positions, read off `get_rope_index` on the
prompt alone). Every response token therefore sees exactly the keys, values and positions of its
unpacked sequence, so the log-probs equal the unpacked forward's up to float rounding, and the
gradient reaching the prompt is the sum over the group's responses, as in the unpacked batch.

What it saves: with 112-token prompts and ~25-token responses, a group of 8 is 312 tokens
instead of 1,096 (the vision tower also runs once per group). The price is attention, quadratic in
the whole row: a row of L tokens costs about w*L + L^2 (`row_cost`; w from the model's widths,
`packing_token_weight`), and a group is packed only when its packed row costs no more than its
unpacked rows, w*(P + sum R_i) + (P + sum R_i)^2 <= sum [w*(P + R_i) + (P + R_i)^2]. Counting
attention alone (w = 0) left the small model's groups of eight 48-token responses unpacked,
2.3x the FLOPs of packing them.

Shapes: N samples, B packed rows, L longest row, R_max longest response, V vocab.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from rlsys.models.forward import add_images_and_response_fields, image_inputs, suppressed_token_ids
from rlsys.protocol import TrainSample


def _prompt_key(s: TrainSample) -> tuple:
    return (tuple(s.input_ids[: s.response_start].tolist()), tuple(m.sha256 for m in s.images))


def packing_token_weight(model) -> float:
    """w of `row_cost` for `model` (or its DeepSpeed engine): per decoder layer a row of L tokens
    costs ~2L(4h^2 + 3h*f) FLOPs in its projections and gated MLP (h hidden, f intermediate
    size) and ~4hL^2 in attention (QK^T and AV); divided by 4h that is L(2h + 1.5f) + L^2.
    0 when the config does not give both widths (attention alone then decides)."""
    base = getattr(model, "module", model)
    cfg = getattr(base, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    h, f = getattr(cfg, "hidden_size", None), getattr(cfg, "intermediate_size", None)
    if not isinstance(h, int) or not isinstance(f, int):
        return 0.0
    return 2.0 * h + 1.5 * f


def row_cost(length: int, token_weight: float) -> float:
    """Relative forward cost of one row of `length` tokens (module doc)."""
    return token_weight * length + float(length) ** 2


def plan_rows(samples: Sequence[TrainSample], token_weight: float = 0.0) -> list[list[int]]:
    """Sample indices per packed row: the samples sharing a prompt (ids and images) form one row
    when that row costs no more than their unpacked rows (`row_cost` with `token_weight`,
    module doc), else one row each; first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(_prompt_key(s), []).append(i)
    rows: list[list[int]] = []
    for idx in groups.values():
        p = samples[idx[0]].response_start
        lens = [samples[i].response_length for i in idx]
        packed = row_cost(p + sum(lens), token_weight)
        if len(idx) > 1 and packed <= sum(row_cost(p + r, token_weight) for r in lens):
            rows.append(idx)
        else:
            rows += [[i] for i in idx]
    return rows


def rope_index_fn(model) -> Optional[Callable]:
    """The model's M-RoPE position builder (Qwen2-VL / Qwen2.5-VL `get_rope_index`), or None for
    models with plain 1-D positions. Works through a DeepSpeed engine (its `.module`)."""
    base = getattr(model, "module", model)
    inner = getattr(base, "model", None)
    return getattr(inner, "get_rope_index", None)


def packable(model, processor) -> bool:
    """Packing is exact for models whose positions rlsys can build: text-only LMs (1-D
    positions) and the Qwen2-VL family (M-RoPE via get_rope_index). Other multimodal models
    (their own placeholder/position logic) take the unpacked path."""
    if getattr(processor, "image_processor", None) is None:
        return True
    return rope_index_fn(model) is not None


def collate_for_forward(samples: Sequence[TrainSample], processor, pad_token_id: int, model, pack: bool) -> dict:
    """The batch `token_logprobs` takes: packed rows when `pack` and some samples share a prompt,
    else `collate`'s padded sequences. The learner and the reference both batch through here."""
    from rlsys.models.forward import collate

    rows = plan_rows(samples, packing_token_weight(model)) if pack else []
    if any(len(r) > 1 for r in rows):
        return collate_packed(samples, processor, pad_token_id, rope_index_fn(model), rows=rows)
    return collate(samples, processor, pad_token_id)


def collate_packed(samples: Sequence[TrainSample], processor, pad_token_id: int,
                   rope_index: Optional[Callable] = None, rows: Optional[list[list[int]]] = None) -> dict:
    """Batch TrainSamples as packed rows (module doc) for one forward pass.

    Returns input_ids [B, L] long, attention_mask [B, 1, L, L] bool (True = may attend),
    position_ids [3, B, L] (M-RoPE, with `rope_index`) or [B, L] long, pixel_values /
    image_grid_thw (each row's images once, rows in order) when there are images (no
    mm_token_type_ids: the positions are given), and per sample, in input order:
    gather_rows / gather_cols [N, R_max] long (the logit position predicting each response
    token), response_ids, response_mask [N, R_max], suppress_token_ids, and the padded
    per-token fields of `collate`.
    """
    import torch

    if not samples:
        raise ValueError("collate_packed: empty sample list")
    rows = plan_rows(samples) if rows is None else rows  # the caller's plan, when it made one
    n = len(samples)
    resp_len = torch.tensor([s.response_length for s in samples], dtype=torch.long)
    if any(s.response_start < 1 for s in samples) or (resp_len < 0).any():
        raise ValueError("collate_packed: every sample needs 1 <= response_start <= len(input_ids)")
    r_max = max(int(resp_len.max()), 1)
    lengths = [samples[r[0]].response_start + sum(samples[i].response_length for i in r) for r in rows]
    L = max(lengths)
    B = len(rows)
    input_ids = torch.full((B, L), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((B, 1, L, L), dtype=torch.bool)
    pos = torch.zeros((3 if rope_index else 1, B, L), dtype=torch.long)
    gather_rows = torch.zeros((n, r_max), dtype=torch.long)
    gather_cols = torch.zeros((n, r_max), dtype=torch.long)
    response_ids = torch.zeros((n, r_max), dtype=torch.long)
    suppress = suppressed_token_ids(processor)
    image_id = getattr(processor, "image_token_id", None)
    pixels, grids = [], []
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    for b, row in enumerate(rows):
        first = samples[row[0]]
        p = first.response_start
        prompt = torch.as_tensor(first.input_ids[:p], dtype=torch.long)
        input_ids[b, :p] = prompt
        mask[b, 0, :p, :p] = causal[:p, :p]
        img = image_inputs(processor, first.images) if first.images else {}
        if img:
            if image_id is None:
                raise ValueError(f"collate_packed: sample {row[0]} has images but the processor is text-only")
            pixels.append(img["pixel_values"])
            grids.append(img["image_grid_thw"])
        if rope_index is not None:
            mm = (prompt == image_id).int()[None] if image_id is not None else torch.zeros((1, p), dtype=torch.int)
            prompt_pos, _ = rope_index(prompt[None], mm_token_type_ids=mm,
                                       image_grid_thw=img.get("image_grid_thw"),
                                       attention_mask=torch.ones((1, p), dtype=torch.long))
            pos[:, b, :p] = prompt_pos[:, 0, :]
            tail = int(prompt_pos[:, 0, -1].max()) + 1
        else:
            pos[0, b, :p] = torch.arange(p)
            tail = p
        at = p
        for i in row:
            s = samples[i]
            r = s.response_length
            resp = torch.as_tensor(s.input_ids[p:], dtype=torch.long)
            response_ids[i, :r] = resp
            fed = resp.clone()
            for tid in suppress:  # a generated placeholder is not an image slot (see collate)
                fed[fed == tid] = int(pad_token_id)
            input_ids[b, at:at + r] = fed
            mask[b, 0, at:at + r, :p] = True
            mask[b, 0, at:at + r, at:at + r] = causal[:r, :r]
            pos[:, b, at:at + r] = tail + torch.arange(r)
            gather_rows[i] = b
            # Token j of the response is predicted at the previous token: the prompt's last
            # position for j = 0, else the response's own position j - 1.
            gather_cols[i, 0] = p - 1
            if r > 1:
                gather_cols[i, 1:r] = at + torch.arange(r - 1)
            gather_cols[i, r:] = p - 1  # padding: any valid position, masked out
            at += r
        for j in range(at, L):  # padding attends to itself only (an empty row would give NaN)
            mask[b, 0, j, j] = True
    batch = dict(input_ids=input_ids, attention_mask=mask,
                 position_ids=pos if rope_index is not None else pos[0],
                 gather_rows=gather_rows, gather_cols=gather_cols, response_ids=response_ids,
                 response_length=resp_len,
                 response_mask=(torch.arange(r_max)[None, :] < resp_len[:, None]).float(),
                 suppress_token_ids=torch.tensor(suppress, dtype=torch.long))
    return add_images_and_response_fields(batch, samples, pixels, grids, r_max)
