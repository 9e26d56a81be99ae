"""Cold-start SFT warm start: masking, loss going down, saved checkpoint, determinism.

Fast (a few optimizer steps of the ~1M-parameter tiny model on a handful of rows); the
calibration of the real defaults is bench/warmstart_mixture.py.
"""
from __future__ import annotations

import pytest
import torch

from rlsys.data.synthetic import demonstration, generate_task_rows
from rlsys.models import warmstart as ws


@pytest.fixture(scope="module")
def rows():
    return generate_task_rows("count_color", 6, seed=0)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from rlsys.models.loading import load_processor

    return load_processor(tiny_model_dir)


def test_prompt_tokens_are_masked_and_response_ends_with_eos(processor, rows):
    from rlsys.models.forward import prompt_token_ids

    prompt = ws.as_prompts(rows[:1])[0]
    demo = demonstration(prompt)
    ex = ws.encode_example(processor, prompt, demo)
    ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
    p = len(prompt_token_ids(processor, prompt))
    # The prompt part is exactly what the rollout engine sees, and none of it is a target.
    assert ids[:p] == prompt_token_ids(processor, prompt)
    assert labels[:p] == [-100] * p
    # Every response token is a target, the end-of-turn token last (so generation stops).
    assert labels[p:] == ids[p:]
    tok = processor.tokenizer
    assert labels[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(labels[p:-1]) == demo


def test_collate_pads_labels_and_keeps_images(processor, rows):
    prompts = ws.as_prompts(rows[:3])
    exs = [ws.encode_example(processor, p, demonstration(p)) for p in prompts]
    batch = ws.collate(exs, processor.tokenizer.pad_token_id)
    width = max(e["input_ids"].shape[0] for e in exs)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, width)
    assert int((batch["labels"] != -100).sum()) == sum(int((e["labels"] != -100).sum()) for e in exs)
    assert batch["image_grid_thw"].shape[0] == 3
    left = ws.collate(exs, processor.tokenizer.pad_token_id, left=True)
    assert bool((left["attention_mask"][:, -1] == 1).all())  # generation continues from the end


def _fixed_batch_loss(model_dir, rows) -> float:
    model, processor = ws.load_model(model_dir)
    prompts = ws.as_prompts(rows)
    exs = [ws.encode_example(processor, p, demonstration(p)) for p in prompts]
    with torch.no_grad():
        return float(ws.response_loss(model, ws.collate(exs, processor.tokenizer.pad_token_id)))


def test_a_few_sft_steps_lower_the_response_loss(tiny_model_dir, rows, tmp_path):
    out = tmp_path / "warm"
    res = ws.sft_warm_start(tiny_model_dir, rows, out, steps=8, lr=3e-3, batch_size=3, seed=0,
                            demonstrate=demonstration)
    assert res.steps == 8 and res.seconds > 0 and res.out_dir == out
    assert res.final_loss < res.initial_loss
    before, after = _fixed_batch_loss(tiny_model_dir, rows), _fixed_batch_loss(out, rows)
    assert after < before - 0.5, (before, after)
    # Same files as the source checkpoint (plus the warm-start record), loadable again.
    src_files = {p.name for p in tiny_model_dir.iterdir()}
    assert src_files | {"rlsys_warmstart.json"} == {p.name for p in out.iterdir()}


def test_warm_start_is_deterministic_from_the_seed(tiny_model_dir, rows, tmp_path):
    from safetensors.torch import load_file

    def weights(seed, name):
        ws.sft_warm_start(tiny_model_dir, rows, tmp_path / name, steps=2, lr=1e-3,
                          batch_size=2, seed=seed)
        return load_file(tmp_path / name / "model.safetensors")

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_greedy_accuracy_returns_rates(tiny_model_dir, rows):
    acc, fmt = ws.greedy_accuracy(tiny_model_dir, rows, max_new_tokens=6, limit=3)
    # An untrained model cannot close the R1 tags within 6 tokens, nor write a complete
    # <answer> block or \boxed{} holding the right count.
    assert acc == 0.0 and fmt == 0.0


def test_perception_demonstration_names_each_cell_then_concludes(rows):
    from rlsys.data.synthetic import Difficulty
    from rlsys.rewards import accuracy, is_r1_format

    for row in rows + generate_task_rows("count_shape", 3, seed=1, difficulty=Difficulty(image_size=84)):
        demo = ws.perception_demonstration(row)
        meta = row["metadata"]
        grid = meta["difficulty"]["image_size"] // 28
        named = demo.removeprefix("<think>").split(". ")[0].split(", ")
        assert len(named) == grid * grid
        attr = "color" if meta["family"] == "count_color" else "shape"
        for obj in meta["objects"]:
            r, c = obj["cell"]
            assert named[r * grid + c] == obj[attr]
        assert named.count("empty") == grid * grid - len(meta["objects"])
        assert is_r1_format(demo) and accuracy(demo, row["answer"]) == 1.0
        # Same conclusion as the one-sentence demonstration.
        assert demo.endswith(demonstration(row).removeprefix("<think>"))
    sums = generate_task_rows("sum_digits", 2, seed=0)
    assert [ws.perception_demonstration(r) for r in sums] == [demonstration(r) for r in sums]


def test_zero_steps_copies_the_checkpoint(tiny_model_dir, rows, tmp_path):
    res = ws.sft_warm_start(tiny_model_dir, rows, tmp_path / "copy", steps=0)
    assert res.steps == 0
    assert _fixed_batch_loss(tmp_path / "copy", rows) == pytest.approx(
        _fixed_batch_loss(tiny_model_dir, rows), abs=1e-6)


def test_mixed_demonstrations_guess_the_configured_share_from_the_answer_distribution():
    rows = generate_task_rows("majority_color", 40, seed=3)
    prompts = ws.as_prompts(rows)
    targets = ws.mixed_demonstrations(prompts, demonstration, guess_fraction=0.6, seed=0)
    guesses = [t for t in targets if ws.is_guess(t)]
    assert len(guesses) == 24  # round(0.6 * 40), exactly
    answers = {p.answer for p in prompts}
    for t in guesses:
        assert t.startswith("<think>I will guess.</think><answer>")
        assert t.split("<answer>")[1].removesuffix("</answer>") in answers
    looked = [(p, t) for p, t in zip(prompts, targets) if not ws.is_guess(t)]
    assert len(looked) == 16 and all(t == demonstration(p) for p, t in looked)
    # Seeded: the same seed picks the same rows, another seed other rows.
    assert ws.mixed_demonstrations(prompts, demonstration, 0.6, seed=0) == targets
    assert ws.mixed_demonstrations(prompts, demonstration, 0.6, seed=1) != targets


def test_mixed_demonstrations_edges_and_bad_fraction():
    prompts = ws.as_prompts(generate_task_rows("majority_color", 5, seed=0))
    assert ws.mixed_demonstrations(prompts, demonstration, 0.0, seed=0) == [demonstration(p) for p in prompts]
    assert all(ws.is_guess(t) for t in ws.mixed_demonstrations(prompts, demonstration, 1.0, seed=0))
    with pytest.raises(ValueError, match="guess_fraction must be in"):
        ws.mixed_demonstrations(prompts, demonstration, 1.5, seed=0)
