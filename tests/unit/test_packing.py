"""Shared-prompt packing (rlsys/models/packing.py) on the tiny Qwen2.5-VL model: which samples
share a row, and that packed rows give the unpacked log-probs, entropies and gradients."""
from __future__ import annotations

import pytest
import torch

from test_models_forward import IMG_PROMPT, TXT_PROMPT, make_samples, media

from rlsys.protocol import Prompt


@pytest.fixture(scope="module")
def vlm(tiny_model_dir):
    from rlsys.models.loading import load_policy, load_processor

    return load_policy(tiny_model_dir), load_processor(tiny_model_dir)


OTHER_IMG = Prompt("u:2", [{"role": "user", "content": [
    {"type": "image"}, {"type": "text", "text": "How many red circles?"}]}], [media(56, 56, 3)])


def groups(proc, lengths_per_prompt, seed=0):
    """Samples prompt by prompt: lengths_per_prompt = [(prompt, [R_1, ...]), ...]."""
    out = []
    for k, (p, lens) in enumerate(lengths_per_prompt):
        out += make_samples(proc, [p] * len(lens), lens, seed=seed + k)
    return out


def test_plan_rows_packs_shared_prompts_only_when_it_saves_attention_alone(vlm):
    from rlsys.models.packing import plan_rows

    _, proc = vlm
    # Same text, different image: different prompts. Interleaved order still groups by prompt.
    s = groups(proc, [(IMG_PROMPT, [3, 5]), (OTHER_IMG, [2, 2]), (TXT_PROMPT, [4])])
    s = [s[0], s[2], s[1], s[4], s[3]]
    assert plan_rows(s) == [[0, 2], [1, 4], [3]]
    # token_weight 0 (the default): two responses of length R pack while (P + 2R)^2 <= 2 (P + R)^2,
    # i.e. R <= P / sqrt(2).
    p = s[0].response_start
    short, long_ = int(p / 2 ** 0.5), int(p / 2 ** 0.5) + 1
    assert plan_rows(groups(proc, [(IMG_PROMPT, [short, short])])) == [[0, 1]]
    assert plan_rows(groups(proc, [(IMG_PROMPT, [long_, long_])])) == [[0], [1]]


def test_plan_rows_weighs_the_tokens_packing_saves_against_attention(vlm):
    from rlsys.models.packing import packing_token_weight, plan_rows

    model, proc = vlm
    text = model.config.get_text_config()
    w = packing_token_weight(model)
    assert w == 2 * text.hidden_size + 1.5 * text.intermediate_size
    # Two responses of length R: packing saves w*P of token cost and adds (P+2R)^2 - 2(P+R)^2
    # = 2R^2 - P^2 of attention, so they pack while 2R^2 <= P^2 + w*P.
    p = groups(proc, [(IMG_PROMPT, [1])])[0].response_start
    edge = int(((p * p + w * p) / 2) ** 0.5)
    assert edge > int(p / 2 ** 0.5)  # longer responses pack than attention alone would allow
    assert plan_rows(groups(proc, [(IMG_PROMPT, [edge, edge])]), w) == [[0, 1]]
    assert plan_rows(groups(proc, [(IMG_PROMPT, [edge + 1, edge + 1])]), w) == [[0], [1]]
    assert packing_token_weight(object()) == 0.0  # no config: attention alone decides


def test_packed_logprobs_entropy_and_grads_equal_unpacked(vlm):
    from rlsys.models.forward import collate, token_logprobs
    from rlsys.models.packing import collate_packed, rope_index_fn

    model, proc = vlm
    # Images and text-only prompts mixed; one response of length 1; groups of 3, 2 and 2.
    s = groups(proc, [(IMG_PROMPT, [4, 1, 7]), (TXT_PROMPT, [3, 5]), (OTHER_IMG, [6, 2])], seed=4)
    s = [s[0], s[3], s[1], s[5], s[2], s[4], s[6]]
    plain = collate(s, proc, pad_token_id=0)
    packed = collate_packed(s, proc, 0, rope_index_fn(model))
    assert packed["input_ids"].shape[0] == 3 and packed["input_ids"].numel() < plain["input_ids"].numel()
    assert packed["image_grid_thw"].shape[0] == 2  # each row's image once, not once per sample
    assert torch.equal(packed["response_mask"], plain["response_mask"])
    assert torch.equal(packed["old_logprobs"], plain["old_logprobs"])

    def run(batch):
        model.zero_grad()
        lp, ent, mask = token_logprobs(model, batch, temperature=0.7, with_entropy=True)
        adv = torch.linspace(-1, 1, lp.shape[0])[:, None]
        (lp * adv * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return lp.detach(), ent.detach(), mask, grads

    lp_a, ent_a, mask_a, g_a = run(plain)
    lp_b, ent_b, mask_b, g_b = run(packed)
    assert torch.equal(mask_a, mask_b)
    assert (lp_a - lp_b).abs().max() < 2e-5 and (ent_a - ent_b).abs().max() < 2e-5
    assert lp_a.abs().sum() > 1  # real log-probs, not an all-zero pair
    assert g_a.keys() == g_b.keys() and any(n.startswith("model.visual") for n in g_a)
    for n in g_a:  # vision tower included: the prompt's gradient is the sum over its group
        assert (g_a[n] - g_b[n]).abs().max() <= 1e-5 * g_a[n].abs().max(), n


def test_generated_placeholder_is_fed_as_pad_like_collate(vlm):
    from rlsys.models.forward import collate, token_logprobs
    from rlsys.models.packing import collate_packed, rope_index_fn

    model, proc = vlm
    pad_id = proc.image_token_id
    resp = [torch.tensor([11, pad_id, 12]), torch.tensor([pad_id, 13])]
    s = make_samples(proc, [IMG_PROMPT, IMG_PROMPT], [3, 2], response_ids=resp)
    packed = collate_packed(s, proc, 0, rope_index_fn(model))
    assert int((packed["input_ids"] == pad_id).sum()) == int((s[0].input_ids[: s[0].response_start] == pad_id).sum())
    assert packed["response_ids"][0, 1] == pad_id  # its log-prob is still taken for the original id
    with torch.no_grad():
        a, _, _ = token_logprobs(model, collate(s, proc, pad_token_id=0))
        b, _, _ = token_logprobs(model, packed)
    assert (a - b).abs().max() < 2e-5
