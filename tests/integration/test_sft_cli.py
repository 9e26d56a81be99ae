"""`rlsys sft`: supervised fine-tuning on demonstrations with the DeepSpeed learner group, in a
subprocess as a user runs it (local Ray, CPU, gloo), on the tiny VLM and a JSONL dataset with
image files built here (both target forms: a `response` column and a final assistant turn).

What is proved here: the loss falls; the parameters change; the written directory is a complete
HF checkpoint (transformers loads model and processor from it) with a lower NLL on the
demonstrations than the model it started from, greedy generation reproduces the
demonstrations more often, and `rlsys eval --model DIR` (vLLM) answers the demonstrated prompts in
the R1 format; a bad row stops the command before anything starts, naming the row.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def write_demonstrations(folder: Path, n: int = 16) -> Path:
    """JSONL demonstrations of the synthetic count_color task, images as files next to it;
    every 4th row in the chat form (the target is the final assistant turn)."""
    from rlsys.data.synthetic import demonstration, generate_task_rows

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(generate_task_rows("count_color", n, seed=3)):
        image = folder / f"img{i}.png"
        image.write_bytes(row["images"][0])
        target = demonstration(row)
        if i % 4 == 3:
            lines.append({"id": row["id"], "images": [image.name], "answer": row["answer"], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"]}]},
                {"role": "assistant", "content": target}]})
        else:
            lines.append({"id": row["id"], "prompt": row["prompt"], "images": [image.name],
                          "answer": row["answer"], "response": target})
    path = folder / "demos.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _sft(*overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", "sft", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _nll_and_matches(model_dir, prompts) -> tuple[float, int]:
    """(mean response-token NLL of the demonstrations, greedy responses equal to them), with
    plain transformers (the warm start's encoder and loss, not the learner's code path)."""
    import torch

    from rlsys.models.warmstart import collate, encode_example, generate_responses, load_model, response_loss

    model, proc = load_model(model_dir)
    with torch.no_grad():
        examples = [encode_example(proc, p, p.response) for p in prompts]
        nll = float(response_loss(model, collate(examples, proc.tokenizer.pad_token_id)))
    greedy = generate_responses(model, proc, prompts, max_new_tokens=40)
    return nll, sum(r[0].strip() == p.response for r, p in zip(greedy, prompts))


def test_sft_cli_fits_the_demonstrations_and_writes_a_loadable_checkpoint(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlsys.data import R1_SYSTEM_PROMPT, load_prompts

    data = write_demonstrations(tmp_path / "data")
    out = tmp_path / "sft-model"
    run = _sft(f"model.path={tiny_model_dir}", f"sft.data={data}", "sft.epochs=40", "sft.batch_size=8",
               "sft.lr=2e-3", "sft.warmup_steps=2", "learner.micro_batch_size=4", "learner.zero_stage=2",
               f"sft.output={out}", f"output_dir={tmp_path / 'runs'}", "name=sft-test", "resources.num_cpus=2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    m = re.search(r"sft done: (\d+) steps .*loss ([\d.]+) -> ([\d.]+) \(final\)", run.stdout)
    assert m, run.stdout[-3000:]
    steps, first, final = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert steps == 80 and final < 0.5 * first, run.stdout[-3000:]
    assert f"sft model {out}" in run.stdout and f"rlsys train model.path={out}" in run.stdout
    (run_dir,) = (tmp_path / "runs").glob("sft-test-sft-*")
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == steps and max(losses[-5:]) < min(losses[:5])
    info = json.loads((out / "rlsys_sft.json").read_text())
    assert info["steps"] == steps and info["demonstrations"] == 16

    # A complete HF checkpoint: transformers loads it; the weights moved; the builder's files kept.
    model = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    after, before = model.state_dict(), base.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) > len(after) // 2, f"only {len(changed)} of {len(after)} tensors changed"
    assert (out / "rlsys_tiny.json").exists()

    # It learned the demonstrations (prompts rendered as in training: the R1 system turn).
    prompts = load_prompts(data, demonstrations=True, system_prompt=R1_SYSTEM_PROMPT).prompts
    nll_before, hits_before = _nll_and_matches(tiny_model_dir, prompts)
    nll_after, hits_after = _nll_and_matches(out, prompts)
    print(f"demo NLL {nll_before:.3f} -> {nll_after:.3f}; greedy exact matches {hits_before} -> {hits_after} of 16")
    assert nll_after < 0.5 * nll_before
    assert hits_after > hits_before

    # `rlsys eval --model DIR` takes it (vLLM): greedy answers to the demonstrated prompts (the same
    # generated rows, as Parquet) are in the R1 format and mostly right.
    from rlsys.data.synthetic import write_synthetic_dataset

    train, _ = write_synthetic_dataset(tmp_path / "syn", 16, 4, seed=3, families=["count_color"])
    ev = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "--model", str(out), "--data", str(train),
                         "eval.max_new_tokens=40", f"output_dir={tmp_path / 'runs'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert ev.returncode == 0, ev.stderr[-3000:]
    m = re.search(r"n=(\d+)\s+accuracy=([\d.]+)\s+format_rate=([\d.]+)", ev.stdout)
    assert m and int(m.group(1)) == 16, ev.stdout[-2000:]
    print(f"eval of the SFT model on its demonstrated prompts: {m.group(0)}")
    assert float(m.group(3)) >= 0.75 and float(m.group(2)) >= 0.5


def test_sft_cli_bad_row_fails_before_anything_starts(tiny_model_dir, tmp_path):
    data = write_demonstrations(tmp_path / "data", n=4)
    lines = data.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "no target here"})
    data.write_text("\n".join(lines) + "\n")
    run = _sft(f"model.path={tiny_model_dir}", f"sft.data={data}", f"output_dir={tmp_path / 'runs'}", timeout=300)
    assert run.returncode == 2
    assert f"{data}: line 3: response: no target response" in run.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started or written
