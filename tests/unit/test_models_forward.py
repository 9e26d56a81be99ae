"""Loading, prompt rendering, collate and token_logprobs (no Ray, no vLLM)."""
from __future__ import annotations

import hashlib
import io

import pytest
import torch

from rlsys.protocol import MediaItem, Prompt, TrainSample


def media(w, h, seed):
    import numpy as np
    from PIL import Image

    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    png = buf.getvalue()
    return MediaItem(hashlib.sha256(png).hexdigest(), png, w, h)


IMG_PROMPT = Prompt("u:0", [{"role": "user", "content": [
    {"type": "image"}, {"type": "text", "text": "How many red circles?"}]}], [media(84, 56, 0)])
TXT_PROMPT = Prompt("u:1", [{"role": "user", "content": "What is 2 plus 3?"}])


@pytest.fixture(scope="module")
def vlm(tiny_model_dir):
    from rlsys.models.loading import load_policy, load_processor

    return load_policy(tiny_model_dir), load_processor(tiny_model_dir)


def make_samples(processor, prompts, lengths, seed=0, response_ids=None):
    from rlsys.models.forward import prompt_token_ids

    g = torch.Generator().manual_seed(seed)
    out = []
    for k, (p, r) in enumerate(zip(prompts, lengths)):
        ids = torch.tensor(prompt_token_ids(processor, p))
        resp = torch.randint(7, 700, (r,), generator=g) if response_ids is None else response_ids[k]
        out.append(TrainSample(torch.cat([ids, resp]), len(ids), p.images,
                               old_logprobs=-torch.rand(r, generator=g), advantages=torch.ones(r)))
    return out


def manual_logprobs(model, batch, samples, temperature=1.0, suppress=()):
    """Reference: full forward, full log-softmax over [T, V], gather each response token
    (with the engine's bias on `suppress` ids, as vLLM applies it: before temperature)."""
    from rlsys.models.forward import SUPPRESS_BIAS

    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    logits = model(**{k: batch[k] for k in keys if k in batch}).logits.float()
    logits[..., list(suppress)] += SUPPRESS_BIAS
    rows = []
    for i, s in enumerate(samples):
        st, L = s.response_start, s.input_ids.shape[0]
        lp = torch.log_softmax(logits[i, st - 1:L - 1].float() / temperature, -1)
        rows.append(lp.gather(-1, s.input_ids[st:L, None]).squeeze(-1))
    return rows


def test_load_policy_and_processor_types(vlm):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlsys.models.loading import get_tokenizer, pad_token_id

    model, proc = vlm
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration) and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert proc.image_processor is not None
    assert pad_token_id(proc) == get_tokenizer(proc).convert_tokens_to_ids("<|endoftext|>")


def test_render_prompt_and_image_inputs(vlm):
    from rlsys.models.forward import image_inputs, render_prompt

    _, proc = vlm
    text = render_prompt(proc, IMG_PROMPT)
    assert text.count("<|image_pad|>") == 1 and text.endswith("<|im_start|>assistant\n")
    assert image_inputs(proc, []) == {}
    inp = image_inputs(proc, IMG_PROMPT.images)
    assert inp["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert inp["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    bad = Prompt("u:9", IMG_PROMPT.messages, [])
    with pytest.raises(ValueError, match="u:9"):
        render_prompt(proc, bad)


def test_processed_image_cache_equals_processor_and_is_bounded(vlm):
    """Cached per-image outputs, concatenated, equal the processor run on the list; a repeat is
    a hit (not re-processed); the byte bound evicts the least recently used image."""
    from rlsys.models.forward import ProcessedImageCache, image_inputs

    _, proc = vlm
    a, b = media(84, 56, 0), media(56, 56, 1)
    fresh = image_inputs(proc, [a, b, a], cache=None)
    cache = ProcessedImageCache()
    got = image_inputs(proc, [a, b, a], cache=cache)
    assert torch.equal(got["pixel_values"], fresh["pixel_values"])
    assert torch.equal(got["image_grid_thw"], fresh["image_grid_thw"])
    assert (cache.hits, cache.misses) == (1, 2)
    one = cache.get(proc, a)
    size = sum(t.numel() * t.element_size() for t in one.values())
    small = ProcessedImageCache(max_bytes=size)  # room for one image of a's size
    small.get(proc, a)
    small.get(proc, b)
    small.get(proc, a)
    assert (small.misses, small.hits, len(small._items)) == (3, 0, 1)


def test_collate_mixed_image_and_text(vlm):
    from rlsys.models.forward import collate, image_inputs

    _, proc = vlm
    prompts = [TXT_PROMPT, IMG_PROMPT, TXT_PROMPT, IMG_PROMPT]
    samples = make_samples(proc, prompts, [3, 5, 0, 2])
    b = collate(samples, proc, pad_token_id=0)
    N, T = b["input_ids"].shape
    assert N == 4 and T == max(s.input_ids.shape[0] for s in samples)
    assert b["attention_mask"].sum(1).tolist() == [s.input_ids.shape[0] for s in samples]
    assert b["response_length"].tolist() == [3, 5, 0, 2]
    assert b["response_mask"].shape == (4, 5) and b["response_mask"].sum().item() == 10
    # Only the two image samples contribute pixels, in sample order.
    one = image_inputs(proc, IMG_PROMPT.images)
    assert torch.equal(b["pixel_values"], torch.cat([one["pixel_values"]] * 2))
    assert b["image_grid_thw"].tolist() == [[1, 4, 6]] * 2
    assert b["mm_token_type_ids"].sum(1).tolist() == [0, 6, 0, 6]
    assert b["old_logprobs"].shape == (4, 5) and b["old_logprobs"][2].abs().sum() == 0
    for i, s in enumerate(samples):
        r = s.response_length
        assert torch.equal(b["response_ids"][i, :r], s.input_ids[s.response_start:])
    # Text-only batch: no vision keys at all.
    t = collate([samples[0]], proc, pad_token_id=0)
    assert "pixel_values" not in t and "image_grid_thw" not in t


def test_collate_rejects_wrong_image_token_count(vlm):
    from rlsys.models.forward import collate

    _, proc = vlm
    s = make_samples(proc, [IMG_PROMPT], [2])[0]
    s.images = [media(112, 112, 3)]  # 16 tokens' worth of pixels for a 6-token prompt
    with pytest.raises(ValueError, match="image tokens"):
        collate([s], proc, pad_token_id=0)


def test_token_logprobs_matches_manual_and_has_grad(vlm):
    from rlsys.models.forward import collate, token_logprobs

    model, proc = vlm
    samples = make_samples(proc, [IMG_PROMPT, TXT_PROMPT], [5, 9])
    b = collate(samples, proc, pad_token_id=0)
    suppress = b["suppress_token_ids"].tolist()
    assert suppress == [proc.image_token_id, proc.video_token_id]
    for temp in (1.0, 0.7):
        with torch.no_grad():
            lp, ent, mask = token_logprobs(model, b, temperature=temp, with_entropy=True)
            ref = manual_logprobs(model, b, samples, temperature=temp, suppress=suppress)
        assert lp.shape == mask.shape == ent.shape == (2, 9)
        for i, r in enumerate(ref):
            assert torch.allclose(lp[i, : len(r)], r, atol=1e-5), (temp, lp[i], r)
            assert (lp[i, len(r):] == 0).all() and (ent[i, len(r):] == 0).all()
        assert ((ent > 0) == mask.bool()).all()
    # Without suppression: plain log-softmax of the model's logits.
    plain = dict(b, suppress_token_ids=torch.zeros(0, dtype=torch.long))
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, plain)
        ref = manual_logprobs(model, b, samples)
    for i, r in enumerate(ref):
        assert torch.allclose(lp[i, : len(r)], r, atol=1e-5)
    # Each sample alone (no padding, no neighbour) gives the same numbers as in the batch.
    with torch.no_grad():
        for i, s in enumerate(samples):
            single, _, _ = token_logprobs(model, collate([s], proc, 0))
            full, _, _ = token_logprobs(model, b)
            assert torch.allclose(single[0], full[i, : single.shape[1]], atol=1e-5)
    model.train()
    try:
        lp, _, mask = token_logprobs(model, b)
        (lp * mask).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert grads["lm_head.weight"] is not None and grads["lm_head.weight"].abs().sum() > 0
        vis = [g for n, g in grads.items() if n.startswith("model.visual.") and g is not None]
        assert vis and sum(g.abs().sum() for g in vis) > 0  # image features get gradient
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_generated_placeholder_token_is_suppressed_not_fatal(vlm):
    from rlsys.models.forward import SUPPRESS_BIAS, collate, suppressed_token_ids, token_logprobs

    model, proc = vlm
    img_id = proc.image_token_id
    assert suppressed_token_ids(proc) == sorted([img_id, proc.video_token_id])
    resp = torch.tensor([100, img_id, 101])  # a response that contains <|image_pad|>
    s = make_samples(proc, [IMG_PROMPT], [3], response_ids=[resp])[0]
    b = collate([s], proc, pad_token_id=0)
    assert b["response_ids"][0].tolist() == resp.tolist()
    assert int((b["input_ids"][0] == img_id).sum()) == 6  # only the prompt's slots remain
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b)
    assert torch.isfinite(lp).all() and lp[0, 1] < SUPPRESS_BIAS / 2


def test_text_only_causal_lm(tmp_path):
    """A text-only checkpoint loads via AutoModelForCausalLM and goes through the same path."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlsys.models.forward import collate, render_prompt, token_logprobs
    from rlsys.models.loading import load_policy, load_processor, pad_token_id
    from rlsys.models.tokenizer import build_hf_tokenizer

    tok = build_hf_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, proc = load_policy(tmp_path), load_processor(tmp_path)
    assert isinstance(model, Qwen2ForCausalLM) and not hasattr(proc, "image_processor")
    p = Prompt("t:0", [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert render_prompt(proc, p).endswith("Hi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="text-only"):
        render_prompt(proc, IMG_PROMPT)
    samples = make_samples(proc, [p, TXT_PROMPT], [4, 2])
    b = collate(samples, proc, pad_token_id(proc))
    assert "mm_token_type_ids" not in b and b["suppress_token_ids"].numel() == 0
    with torch.no_grad():
        lp, _, _ = token_logprobs(model, b)
        ref = manual_logprobs(model, b, samples)
    for i, r in enumerate(ref):
        assert torch.allclose(lp[i, : len(r)], r, atol=1e-5)
