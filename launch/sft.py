"""`rlsys sft`: cold-start supervised fine-tuning on demonstrations, the step before RL in R1's
recipe.

    rlsys sft model.path=Qwen/Qwen2.5-VL-3B-Instruct sft.data=demos.jsonl sft.epochs=2
    rlsys train model.path=<the printed model dir>

The demonstrations go through the training data pipeline (rlsys/data/datasets.py with
demonstrations=True: a `response` column or `messages` ending with the assistant turn; bad rows
fail naming file, row and field, or are skipped with data.on_bad_row=skip). The policy learner
group of `rlsys train` (actors/learner.py, DeepSpeed, `learner.*` placement and ZeRO settings)
minimises the mean NLL of the response tokens (rlsys/sft.py); the result is written as a HF
checkpoint (model + processor + tokenizer) that `rlsys train model.path=` and `rlsys eval
--model` take.

Exit codes: 0 done; 2 bad config or data (one line on stderr, nothing started).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from rlsys.config import RunConfig, to_yaml

# Files of a source checkpoint that the export rewrites (weights) and must not be copied over.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def _problem(cfg: RunConfig) -> str | None:
    """What makes this config unusable for `rlsys sft`, checked before anything is built."""
    s = cfg.sft
    if not s.data:
        return "sft.data = null: rlsys sft needs demonstrations (a dataset file with a `response` column or " \
               "`messages` ending with the assistant turn)"
    if not Path(s.data).expanduser().exists():
        return f"sft.data = {s.data!r}: no such file or directory"
    if s.batch_size < cfg.learner.num_ranks:
        return (f"sft.batch_size = {s.batch_size}: must be >= learner.num_ranks ({cfg.learner.num_ranks}); "
                "every rank needs a demonstration per step")
    if s.output:
        out = Path(s.output).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            return f"sft.output = {s.output!r}: exists and is not an empty directory"
    return None


def copy_extra_files(src: Path, dst: Path) -> None:
    """Files of the source checkpoint the export did not write (e.g. a builder's notes), so the
    output is a complete checkpoint like its source; weights are never copied."""
    if not src.is_dir():
        return
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)


def run_sft(cfg: RunConfig) -> int:
    from launch.embedded import policy_path
    from launch.evaluate import load_split_counted
    from launch.roles import learners_on_ray
    from launch.train import new_run_dir
    from rlsys.data import DataError
    from rlsys.distributed.media_store import MediaStore
    from rlsys.distributed.pending import wait
    from rlsys.models.loading import load_processor
    from rlsys.protocol import TrainBatch
    from rlsys.sft import encode_demonstration, step_plan
    from rlsys.specs import sft_learner_spec

    t0 = time.perf_counter()
    problem = _problem(cfg)
    if problem:
        print(f"rlsys: config error: {problem}", file=sys.stderr)
        return 2
    s = cfg.sft
    try:
        demos, skipped = load_split_counted(cfg, cfg.sft.data, demonstrations=True)
    except DataError as err:
        print(f"rlsys: {err}", file=sys.stderr)
        return 2
    if not demos:
        print(f"rlsys: sft.data = {s.data!r}: no demonstrations to train on", file=sys.stderr)
        return 2
    model_path = policy_path(cfg)
    processor = load_processor(model_path, trust_remote_code=cfg.model.trust_remote_code)
    samples = []
    for p in demos:
        try:
            samples.append(encode_demonstration(processor, p))
        except ValueError as err:  # e.g. images for a text-only model; the message names the row's uid
            print(f"rlsys: {s.data}: {err}", file=sys.stderr)
            return 2
    del demos
    plan = step_plan(len(samples), s.batch_size, s.epochs, s.max_steps, cfg.seed, shuffle=cfg.data.shuffle,
                     min_batch=cfg.learner.num_ranks)
    run_dir = new_run_dir(cfg, "sft")
    out_dir = Path(s.output).expanduser().resolve() if s.output else run_dir / "model"
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    tokens = sum(x.response_length for x in samples)
    print(f"[rlsys] sft run dir {run_dir}; model {model_path}; {len(samples)} demonstrations "
          f"({tokens} response tokens{f', {skipped} rows skipped' if skipped else ''}); {len(plan)} steps "
          f"of <= {s.batch_size}", flush=True)

    losses, skipped_steps = [], 0
    with learners_on_ray(cfg, sft_learner_spec(cfg, model_path, total_steps=len(plan))) as group:
        store = MediaStore()  # each image into the object store once, not once per step
        for x in samples:
            x.images = [store.ref_item(m) for m in x.images]
        every = max(1, len(plan) // 10)
        with open(run_dir / "metrics.jsonl", "w") as log:
            for step, rows in enumerate(plan, start=1):
                (m,) = wait(group.sft_async(TrainBatch([samples[i] for i in rows])))
                losses.append(m.loss)
                skipped_steps += int(m.skipped)
                log.write(json.dumps({"step": step, **m.as_dict()}) + "\n")
                log.flush()
                if step % every == 0 or step in (1, len(plan)):
                    print(f"[rlsys] sft step {step}/{len(plan)}  loss {m.loss:.4f}  grad_norm {m.grad_norm:.3f}  "
                          f"lr {m.lr:.2e}  {m.time_s:.2f} s", flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        group.export_hf(out_dir)
    copy_extra_files(Path(model_path), out_dir)
    (out_dir / "rlsys_sft.json").write_text(json.dumps(
        {"source": model_path, "data": str(s.data), "steps": len(plan), "demonstrations": len(samples),
         "initial_loss": losses[0], "final_loss": losses[-1], "skipped_steps": skipped_steps}, indent=1))
    print(f"[rlsys] sft done: {len(plan)} steps in {time.perf_counter() - t0:.1f} s; loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f} (final){f'; {skipped_steps} steps skipped (non-finite loss)' if skipped_steps else ''}\n"
          f"[rlsys] sft model {out_dir}\n"
          f"[rlsys] RL from it: rlsys train model.path={out_dir}   evaluate: rlsys eval --model {out_dir}",
          flush=True)
    return 0
