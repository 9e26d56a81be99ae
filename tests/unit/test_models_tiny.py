"""The tiny-model builder: determinism, sizes, tokenizer, chat template, config/tokenizer ids."""
from __future__ import annotations

import json

import pytest


def test_build_is_deterministic_and_seed_changes_only_weights(tmp_path):
    from rlsys.models.tiny import build_tiny_model, directory_digest

    a = directory_digest(build_tiny_model(tmp_path / "a", "tiny", seed=0))
    b = directory_digest(build_tiny_model(tmp_path / "b", "tiny", seed=0))
    c = directory_digest(build_tiny_model(tmp_path / "c", "tiny", seed=1))
    assert a == b
    assert {"model.safetensors", "tokenizer.json", "config.json", "processor_config.json"} <= set(a)
    changed = {k for k in a if a[k] != c[k]}
    assert changed == {"model.safetensors", "rlsys_tiny.json"}


def test_ensure_tiny_model_caches(tmp_path):
    from rlsys.models.tiny import ensure_tiny_model

    p1 = ensure_tiny_model("tiny", 0, cache_dir=tmp_path)
    mtime = (p1 / "model.safetensors").stat().st_mtime_ns
    p2 = ensure_tiny_model("tiny", 0, cache_dir=tmp_path)
    assert p1 == p2 and (p2 / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [p1.name]  # no temp dirs left behind


def test_param_counts_in_range(tiny_model_dir):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rlsys.models.tiny import count_parameters, tiny_config
    from rlsys.models.tokenizer import build_hf_tokenizer

    info = json.loads((tiny_model_dir / "rlsys_tiny.json").read_text())
    assert 0.7e6 <= info["num_parameters"] <= 1.3e6
    with torch.device("meta"):  # no memory, no init time
        small = Qwen2_5_VLForConditionalGeneration(tiny_config(build_hf_tokenizer(), "small"))
    assert 20e6 <= count_parameters(small) <= 30e6
    with pytest.raises(ValueError, match="size="):
        tiny_config(build_hf_tokenizer(), "huge")


def test_config_ids_match_tokenizer(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    ids = tok.convert_tokens_to_ids
    assert cfg.image_token_id == ids("<|image_pad|>")
    assert cfg.video_token_id == ids("<|video_pad|>")
    assert cfg.vision_start_token_id == ids("<|vision_start|>")
    assert cfg.vision_end_token_id == ids("<|vision_end|>")
    assert cfg.text_config.eos_token_id == tok.eos_token_id == ids("<|im_end|>")
    assert cfg.text_config.pad_token_id == tok.pad_token_id == ids("<|endoftext|>")
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    assert cfg.text_config.vocab_size == len(tok)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {ids("<|im_end|>"), ids("<|endoftext|>")}


def test_tokenizer_round_trip_and_tags(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlsys.models.tokenizer import SPECIAL_TOKENS, TAG_TOKENS

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = ("<|im_start|>user\nHow many blue squares? 12 + 30 = 42, naïve émoji 🙂<|im_end|>\n"
            "<think>I count 3.</think><answer>3</answer>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for t in SPECIAL_TOKENS + TAG_TOKENS:  # each tag is one token, never split
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    # Reasoning tags survive skip_special_tokens (format rewards look for them); chat markup not.
    clean = tok.decode(ids, skip_special_tokens=True)
    assert "<answer>3</answer>" in clean and "<|im_end|>" not in clean
    assert 512 <= len(tok) <= 1024


def test_chat_template_image_placeholders_and_processor_expansion(tiny_model_dir):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."},
                                         {"type": "image"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Count."
                    "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    no_gen = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert not no_gen.endswith("assistant\n")
    imgs = [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 84), "blue")]
    out = proc(text=[text], images=imgs, return_tensors="pt")
    # 56x56 -> 4x4 patches -> 4 tokens; 112x84 -> 8x6 patches -> 12 tokens (2x2 merge).
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 6, 8]]
    assert int((out["input_ids"] == proc.image_token_id).sum()) == 16
    # Oversized images are scaled into the 112x112 budget.
    big = proc.image_processor(images=[Image.new("RGB", (640, 480))], return_tensors="pt")
    t, h, w = big["image_grid_thw"][0].tolist()
    assert h * w * 14 * 14 <= 112 * 112
