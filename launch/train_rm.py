"""`rlsys train-rm`: Bradley-Terry training of a scalar multimodal reward model on preference
pairs, for `reward.components: [{model: scalar, path: <the printed RM dir>}]`.

    rlsys train-rm model.path=Qwen/Qwen2.5-VL-3B-Instruct train_rm.data=pairs.jsonl
    rlsys train reward.components='[{name: null, model: scalar, path: <RM dir>}]'

The pairs go through the training data pipeline (rlsys/data/datasets.py with pairs=True: the
prompt schema plus `chosen`, `rejected` and an optional `margin`; bad rows fail naming file, row
and field, or are skipped with data.on_bad_row=skip). Pair accuracy (chosen scored strictly
above rejected) is measured on `train_rm.test`, else on a seeded `train_rm.holdout` share of
the data, before and after training. The learner ranks are `learner.*` (ranks, ZeRO stage,
micro-batch size in pairs, clipping, weight decay, backend) and `resources.*_per_learner`; the
model is rlsys/reward_training.py's. Output: the RM directory (rlsys/rewards/scalar_rm.py's
format) whose `rlsys_rm.json` also records the training summary.

Exit codes: 0 done; 2 bad config or data (one line on stderr, nothing started).
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
import numpy as np

from rlsys.config import RunConfig, to_yaml


def _model_problem(path: str) -> str | None:
    """A model.path that cannot be a checkpoint: a missing local path, or a directory without a
    config.json. Hub ids (owner/name) are checked when the processor loads."""
    if path.startswith("embedded:"):
        return None
    p = Path(path).expanduser()
    if p.exists():
        return None if (p / "config.json").is_file() else f"model.path = {path!r}: no config.json in it (not a HF checkpoint)"
    if path.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        return f"model.path = {path!r}: no such directory (and not a hub id like owner/name)"
    return None


def _problem(cfg: RunConfig) -> str | None:
    """What makes this config unusable for `rlsys train-rm`, checked before anything is built."""
    t = cfg.train_rm
    if not t.data:
        return "train_rm.data = null: rlsys train-rm needs preference pairs (a dataset file in the prompt " \
               "schema with `chosen` and `rejected` columns)"
    for name, value in (("train_rm.data", t.data), ("train_rm.test", t.test)):
        if value and not Path(value).expanduser().exists():
            return f"{name} = {value!r}: no such file or directory"
    if t.batch_size < cfg.learner.num_ranks:
        return (f"train_rm.batch_size = {t.batch_size}: must be >= learner.num_ranks ({cfg.learner.num_ranks}); "
                "every rank needs a pair per step")
    if t.output:
        out = Path(t.output).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            return f"train_rm.output = {t.output!r}: exists and is not an empty directory"
    return _model_problem(cfg.model.path)


def holdout_split(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of n rows: a seeded permutation, round(share * n) held out
    (at least 1 when share > 0 and n >= 2), the rest in file order."""
    k = int(round(share * n))
    if share > 0 and n >= 2:
        k = max(k, 1)
    k = min(k, n - 1) if n >= 1 else 0
    held = sorted(np.random.default_rng([seed, 13]).permutation(n)[:k].tolist())
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def shard(items: list, ranks: int) -> list[list]:
    """Round-robin shards, one per rank."""
    return [items[r::ranks] for r in range(ranks)]


def _load_pairs(cfg: RunConfig, path: str):
    """(pairs of one dataset file, rows skipped), validated as the training prompts are."""
    from rlsys.data.datasets import load_prompts
    from rlsys.data.templates import R1_SYSTEM_PROMPT

    result = load_prompts(path, pairs=True, on_bad_row=cfg.data.on_bad_row,
                          max_prompt_tokens=cfg.model.max_prompt_tokens, min_pixels=cfg.model.min_pixels,
                          max_pixels=cfg.model.max_pixels, system_prompt=cfg.data.system_prompt or R1_SYSTEM_PROMPT)
    if result.skipped:
        print(f"{path}: skipped {result.skip_count} of {result.num_rows} rows (data.on_bad_row=skip); "
              f"first: {result.skipped[0].message}")
    return result.pairs, result.skip_count


def pair_accuracy(actors: list, pairs: list) -> float:
    """Share of `pairs` whose chosen response the RM scores strictly above the rejected one (a
    collective: every rank gets a shard, an empty one a stand-in pair whose result is dropped)."""
    import ray

    shards = shard(pairs, len(actors))
    parts = ray.get([a.pair_scores.remote(s or pairs[:1]) for a, s in zip(actors, shards)])
    wins = sum(int((c > r).sum()) for (c, r), s in zip(parts, shards) if s)
    return wins / len(pairs)


def run_train_rm(cfg: RunConfig) -> int:
    import ray

    from launch.embedded import policy_path
    from launch.roles import learners_on_ray
    from launch.sft import copy_extra_files
    from launch.train import new_run_dir
    from rlsys.data import DataError
    from rlsys.distributed.media_store import MediaStore
    from rlsys.models.loading import load_processor
    from rlsys.reward_training import encode_pair
    from rlsys.rewards.scalar_rm import RM_INFO_FILE
    from rlsys.sft import step_plan
    from rlsys.specs import rm_trainer_spec

    t0 = time.perf_counter()
    problem = _problem(cfg)
    if problem:
        print(f"rlsys: config error: {problem}", file=sys.stderr)
        return 2
    t = cfg.train_rm
    try:
        pairs, skipped = _load_pairs(cfg, t.data)
        if t.test:
            train, test = pairs, _load_pairs(cfg, t.test)[0]
        else:
            tr, te = holdout_split(len(pairs), t.holdout, cfg.seed)
            train, test = [pairs[i] for i in tr], [pairs[i] for i in te]
    except DataError as err:
        print(f"rlsys: {err}", file=sys.stderr)
        return 2
    if not train:
        print(f"rlsys: train_rm.data = {t.data!r}: no preference pairs to train on", file=sys.stderr)
        return 2
    model_path = policy_path(cfg)
    try:
        processor = load_processor(model_path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as err:
        print(f"rlsys: config error: model.path = {cfg.model.path!r}: cannot load it: "
              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    encoded = {}
    for name, rows in (("train", train), ("test", test)):
        try:
            encoded[name] = [encode_pair(processor, p) for p in rows]
        except ValueError as err:  # e.g. images for a text-only model; the message names the row's uid
            print(f"rlsys: {t.test if name == 'test' and t.test else t.data}: {err}", file=sys.stderr)
            return 2
    del pairs, train, test
    train_pairs, test_pairs = encoded["train"], encoded["test"]
    plan = step_plan(len(train_pairs), t.batch_size, t.epochs, t.max_steps, cfg.seed, shuffle=cfg.data.shuffle,
                     min_batch=cfg.learner.num_ranks)
    run_dir = new_run_dir(cfg, "rm")
    out_dir = Path(t.output).expanduser().resolve() if t.output else run_dir / "model"
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    print(f"[rlsys] train-rm run dir {run_dir}; model {model_path}; {len(train_pairs)} training pairs, "
          f"{len(test_pairs)} held out{f', {skipped} rows skipped' if skipped else ''}; {len(plan)} steps "
          f"of <= {t.batch_size} pairs", flush=True)

    losses, skipped_steps, acc_before, acc_after = [], 0, None, None
    with learners_on_ray(cfg, rm_trainer_spec(cfg, model_path, total_steps=len(plan))) as group:
        actors = group.actors
        store = MediaStore()  # each image into the object store once, not once per step
        for p in train_pairs + test_pairs:
            p.chosen.images = p.rejected.images = [store.ref_item(m) for m in p.chosen.images]
        if test_pairs:
            acc_before = pair_accuracy(actors, test_pairs)
        every = max(1, len(plan) // 10)
        with open(run_dir / "metrics.jsonl", "w") as log:
            for step, rows in enumerate(plan, start=1):
                shards = shard([train_pairs[i] for i in rows], len(actors))
                m = ray.get([a.bt_step.remote(s) for a, s in zip(actors, shards)])[0]
                losses.append(m.loss)
                skipped_steps += int(m.skipped)
                log.write(json.dumps({"step": step, **m.as_dict()}) + "\n")
                log.flush()
                if step % every == 0 or step in (1, len(plan)):
                    print(f"[rlsys] train-rm step {step}/{len(plan)}  loss {m.loss:.4f}  pair_acc {m.accuracy:.3f}  "
                          f"grad_norm {m.grad_norm:.3f}  lr {m.lr:.2e}  {m.time_s:.2f} s", flush=True)
        if test_pairs:
            acc_after = pair_accuracy(actors, test_pairs)
        ray.get([a.export.remote(str(out_dir)) for a in actors])
    copy_extra_files(Path(model_path), out_dir)
    info_path = out_dir / RM_INFO_FILE
    info = json.loads(info_path.read_text())
    info.update({"data": str(t.data), "test": str(t.test) if t.test else None, "train_pairs": len(train_pairs),
                 "n_pairs": len(test_pairs), "pair_accuracy": acc_after, "pair_accuracy_before": acc_before,
                 "steps": len(plan), "initial_loss": losses[0], "final_loss": losses[-1],
                 "skipped_steps": skipped_steps})
    info_path.write_text(json.dumps(info, indent=1))
    held = (f"held-out pair accuracy {acc_after:.3f} ({len(test_pairs)} pairs; before training {acc_before:.3f})"
            if test_pairs else "no held-out pairs (train_rm.holdout = 0 and no train_rm.test)")
    print(f"[rlsys] train-rm done: {len(plan)} steps in {time.perf_counter() - t0:.1f} s; loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f} (final){f'; {skipped_steps} steps skipped (non-finite loss)' if skipped_steps else ''}\n"
          f"[rlsys] {held}\n"
          f"[rlsys] reward model {out_dir}\n"
          f"[rlsys] use it: rlsys train reward.components='[{{name: null, model: scalar, path: {out_dir}}}]'",
          flush=True)
    return 0
