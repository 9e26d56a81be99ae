"""Calibrate the cold-start warm start of the embedded default (rlsys.models.warmstart).

Default task and model: count_color with Difficulty() defaults (56 px images, 2x2 cells,
1-4 objects, 3 colours), 2048 train / 256 held-out rows (seed 0), tiny model (seed 0).
For both demonstration styles it sweeps SFT steps (one run each, snapshots at every sweep
point: with warm-up + constant lr a snapshot equals a fresh run of that length) and measures
held-out greedy accuracy, format rate, and how often the answer is simply the number of
objects (the shortcut the model finds first). At the chosen defaults it times a fresh
warm start, measures sampling diversity at temperature 1.0 (GRPO needs groups holding both a
right and a wrong answer) and, with --grpo, runs a minimal on-policy GRPO to check that RL
has room to raise accuracy. Writes bench/results/warmstart_calibration.md.

    .venv/bin/python bench/warmstart_calibration.py [--quick] [--grpo] [--work DIR]

About 35 minutes on 2 shared CPU cores (--quick: shorter sweeps, about 10 minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlsys.data.synthetic import demonstration, write_synthetic_dataset  # noqa: E402
from rlsys.models import warmstart as ws  # noqa: E402
from rlsys.models.tiny import ensure_tiny_model  # noqa: E402

DEMOS = {"one-sentence": demonstration, "per-cell": ws.perception_demonstration}
SWEEPS = {  # demonstration -> step counts evaluated (the last is the run's length)
    "one-sentence": [0, 25, 50, 100, 150, 200, 250, 300, 400, 1000, 2000],
    "per-cell": [0, 25, 50, 100, 150, 200, 250, 300, 400, 600, 800, 1000, 1500],
}
QUICK = {"one-sentence": [0, 50, 100, 200, 400], "per-cell": [0, 100, 200, 300, 400, 600]}


def prepare(work: Path) -> tuple[Path, list, list]:
    """The tiny model and the default task's train/held-out prompts."""
    model_dir = ensure_tiny_model("tiny", seed=0, cache_dir=work / "models")
    train, test = write_synthetic_dataset(work / "data", 2048, 256, seed=0, families=["count_color"])
    return model_dir, ws.as_prompts(train), ws.as_prompts(test)


def _count(response: str):
    """The integer in the last <answer> block, else None."""
    from rlsys.rewards import extract_answer

    ans = extract_answer(response)
    return int(ans) if ans is not None and ans.strip().isdigit() else None


def _cells_named(prompt, response: str) -> float:
    """Share of cells named correctly by a per-cell response (0 if it names none)."""
    truth = ws.perception_demonstration(prompt).split(". ")[0].removeprefix("<think>").split(", ")
    named = response.removeprefix("<think>").split(". ")[0].split(", ")
    return float(np.mean([a == b for a, b in zip(truth, named + [""] * len(truth))]))


def evaluate_model(model, processor, test: list) -> dict:
    """Greedy accuracy, format rate, the share of answers equal to the object count, and the
    share of cells named right (per-cell demonstrations only)."""
    responses = [r[0] for r in ws.generate_responses(model, processor, test, max_new_tokens=48)]
    scores = np.array([ws.score(p, r) for p, r in zip(test, responses)])
    shortcut = np.mean([_count(r) == len(p.metadata["objects"]) for p, r in zip(test, responses)])
    cells = np.mean([_cells_named(p, r) for p, r in zip(test, responses)])
    return {"accuracy": scores[:, 0].mean(), "format": scores[:, 1].mean(), "n_objects": shortcut,
            "cells": cells, "example": responses[0]}


def evaluate(model_dir: Path, test: list) -> dict:
    return evaluate_model(*ws.load_model(model_dir), test)


def sweep(model_dir, train, test, work: Path, demo: str, lr: float, steps: list[int]) -> list[dict]:
    """Evaluate the base model and SFT snapshots after each of `steps`. Missing points come
    from one run up to the largest of them (snapshots equal fresh runs of that length); rows
    are cached per point in the work dir (delete it to re-measure)."""
    cache_file = work / f"sweep-{demo}-lr{lr:g}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    missing = [n for n in steps if str(n) not in cache]
    out = work / f"sweep-{demo}-lr{lr:g}-{max(missing, default=0)}"
    if any(missing):
        ws.sft_warm_start(model_dir, train, out, steps=max(missing), lr=lr,
                          demonstrate=DEMOS[demo], snapshot_steps=missing, seed=0)
    for n in missing:
        ckpt = model_dir if n == 0 else out if n == max(missing) else out / f"step-{n}"
        info = json.loads((ckpt / "rlsys_warmstart.json").read_text()) if n else {}
        row = dict(demo=demo, lr=lr, steps=n, seconds=info.get("seconds", 0.0),
                   loss=info.get("final_loss", float("nan")), **evaluate(ckpt, test))
        print(json.dumps({k: v for k, v in row.items() if k != "example"}, default=float), flush=True)
        cache[str(n)] = row
        cache_file.write_text(json.dumps(cache, default=float, indent=1))
    return [cache[str(n)] for n in steps]


@torch.no_grad()
def diversity(model_dir: Path, test: list, n: int = 8, limit: int = 128, seed: int = 0) -> dict:
    """At temperature 1.0, n samples per prompt: the share of prompts whose group holds both
    a right and a wrong answer (GRPO's learning signal), all right, all wrong."""
    model, processor = ws.load_model(model_dir)
    groups = ws.generate_responses(model, processor, test[:limit], max_new_tokens=48,
                                   num_samples=n, temperature=1.0, seed=seed)
    acc = np.array([[ws.score(p, r)[0] for r in g] for p, g in zip(test, groups)])
    fmt = np.array([[ws.score(p, r)[1] for r in g] for p, g in zip(test, groups)])
    right = acc.sum(1)
    return {"mixed": np.mean((right > 0) & (right < n)), "all_right": np.mean(right == n),
            "all_wrong": np.mean(right == 0), "sample_accuracy": acc.mean(),
            "sample_format": fmt.mean(), "prompts": len(groups), "n": n}


def grpo_check(model_dir: Path, train: list, test: list, *, steps: int = 30, prompts: int = 16,
               n: int = 8, lr: float = 2e-4, seed: int = 0) -> list[dict]:
    """Minimal on-policy GRPO (one update per batch, so the PPO ratio is 1): reward accuracy +
    0.5 format, group-normalised advantages, token-mean policy-gradient loss. Only a check
    that the warm start leaves RL something to learn; the real loop is rlsys.driver."""
    model, processor = ws.load_model(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng, pad = np.random.default_rng(seed), processor.tokenizer.pad_token_id
    curve = [{"step": 0, **evaluate_model(model, processor, test)}]
    for step in range(1, steps + 1):
        batch = [train[i] for i in rng.choice(len(train), prompts, replace=False)]
        groups = ws.generate_responses(model, processor, batch, max_new_tokens=48, num_samples=n,
                                       temperature=1.0, seed=seed + step)
        examples, advantages = [], []
        for p, g in zip(batch, groups):
            r = np.array([sum(w * s for w, s in zip((1.0, 0.5), ws.score(p, x))) for x in g])
            adv = (r - r.mean()) / (r.std() + 1e-6)
            for x, a in zip(g, adv):
                examples.append(ws.encode_example(processor, p, x))
                advantages.append(a)
        model.train()
        opt.zero_grad(set_to_none=True)
        n_tokens = sum(int((e["labels"] != -100).sum()) for e in examples)
        for i in range(0, len(examples), 16):  # accumulate micro-batches
            mb = ws.collate(examples[i:i + 16], pad)
            logits = model(**{k: v for k, v in mb.items() if k != "labels"}).logits[:, :-1]
            labels = mb["labels"][:, 1:]
            mask = labels != -100
            lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            adv = torch.tensor(advantages[i:i + 16], dtype=torch.float32)[:, None]
            loss = -(lp * adv * mask).sum() / n_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.eval()
        if step % 10 == 0:
            curve.append({"step": step, **evaluate_model(model, processor, test)})
            print(json.dumps({k: v for k, v in curve[-1].items() if k != "example"}, default=float),
                  flush=True)
    return curve


def write_report(path: Path, rows: list[dict], chosen: dict, div: dict, grpo) -> None:
    lines = ["# Warm-start calibration (embedded default)", "",
             "Generated by `bench/warmstart_calibration.py`; see its docstring for the setup.",
             f"Held-out: {chosen['test_size']} count_color prompts, greedy, max 48 new tokens. "
             "`= #objects`: share of answers equal to the number of objects in the image "
             "(the colour-blind shortcut). Seconds: wall time of an SFT call of that length "
             "(load, encode, train; 1 thread).", "",
             "| demonstration | lr | SFT steps | seconds | final loss | accuracy | format | = #objects | cells named |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['demo']} | {r['lr']:g} | {r['steps']} | {r['seconds']:.0f} | "
                     f"{r['loss']:.3f} | {r['accuracy']:.1%} | {r['format']:.1%} | {r['n_objects']:.1%} | "
                     f"{r['cells']:.1%} |")
    lines += ["", "## Chosen defaults", "",
              f"`DEFAULT_SFT_STEPS={chosen['steps']}`, `DEFAULT_SFT_LR={chosen['lr']:g}`, batch "
              f"{chosen['batch_size']}, per-cell demonstration: fresh run {chosen['seconds']:.0f} s, "
              f"greedy accuracy {chosen['accuracy']:.1%}, format {chosen['format']:.1%}.", "",
              f"Sampling at temperature 1.0, {div['n']} samples on {div['prompts']} held-out prompts: "
              f"mixed groups (>=1 right and >=1 wrong) {div['mixed']:.1%}, all right "
              f"{div['all_right']:.1%}, all wrong {div['all_wrong']:.1%}; per-sample accuracy "
              f"{div['sample_accuracy']:.1%}, format {div['sample_format']:.1%}."]
    if grpo:
        lines += ["", "## Minimal GRPO from the chosen checkpoint", "",
                  "16 prompts x 8 samples per step, lr 2e-4, reward accuracy + 0.5 format "
                  "(`grpo_check`; a proxy for the real loop).", "",
                  "| GRPO step | accuracy | format |", "|---|---|---|"]
        lines += [f"| {c['step']} | {c['accuracy']:.1%} | {c['format']:.1%} |" for c in grpo]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rlsys-warmstart-work/calibration"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/warmstart_calibration.md")
    ap.add_argument("--quick", action="store_true", help="shorter sweeps (no headroom runs)")
    ap.add_argument("--grpo", action="store_true", help="also run the minimal GRPO check")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_dir, train, test = prepare(a.work)
    rows = []
    for demo, steps in (QUICK if a.quick else SWEEPS).items():
        rows += sweep(model_dir, train, test, a.work, demo, ws.DEFAULT_SFT_LR, steps)
    # The defaults, as the embedded default runs them: a fresh, timed call.
    t0 = time.perf_counter()
    res = ws.sft_warm_start(model_dir, train, a.work / "default")
    chosen = dict(steps=res.steps, lr=ws.DEFAULT_SFT_LR, batch_size=ws.DEFAULT_SFT_BATCH_SIZE,
                  seconds=time.perf_counter() - t0, test_size=len(test), **evaluate(res.out_dir, test))
    div = diversity(res.out_dir, test)
    print(json.dumps({**chosen, **div}, default=float), flush=True)
    grpo = grpo_check(res.out_dir, train, test) if a.grpo else None
    write_report(a.out, rows, chosen, div, grpo)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
