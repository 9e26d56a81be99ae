"""`rlsys rollout`: sample the training prompts once with the initial policy (`model.path`) and
record them as `<output_dir>/<name>-rollouts-<timestamp>/rollouts/step_*.parquet`, the format
`rlsys train` writes, so `sampling.mode=offline sampling.offline_path=<that dir>` replays them.

Uses the training roles' engines and reward actor (no learner); one file per
`sampling.prompts_per_step` prompts, in dataset order (replay shuffles with the run's seed).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from rlsys.config import RunConfig, to_yaml


def record_rollouts(cfg: RunConfig, max_prompts: Optional[int] = None) -> Path:
    """Generates, scores and records; returns the run directory."""
    import ray as ray_module

    from launch.cluster import connect
    from launch.embedded import resolve
    from launch.evaluate import load_split
    from launch.train import new_run_dir
    from launch.roles import start_generation
    from rlsys.distributed.pending import wait
    from rlsys.protocol import ScoredGroup
    from rlsys.recording import RolloutRecorder

    assets = resolve(cfg)
    model_path = str(assets.model_dir) if assets.model_dir else cfg.model.path
    prompts = load_split(cfg, assets.train_path or cfg.data.train)[:max_prompts]
    run_dir = new_run_dir(cfg, "rollouts")
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    recorder = RolloutRecorder(run_dir / "rollouts")
    owns_ray = not ray_module.is_initialized()  # a caller's Ray (tests, notebooks) stays up
    ray = connect(cfg)
    try:
        roles = start_generation(cfg, model_path)
    except BaseException:  # e.g. PlacementError: the cluster cannot host the engines
        if owns_ray and not cfg.resources.address:
            ray.shutdown()
        raise
    try:
        from rlsys.distributed.media_store import MediaStore

        prompts = MediaStore().offload(prompts)  # each image into the object store once
        b = cfg.sampling.prompts_per_step
        for step, start in enumerate(range(0, len(prompts), b), start=1):
            groups = roles.rollout.generate(prompts[start:start + b], roles.train_sampling)
            (rewards,) = wait(roles.reward.score_async(groups))
            recorder.write(step, [ScoredGroup(g, r) for g, r in zip(groups, rewards)])
            print(f"[rlsys] rollout step {step}: {len(groups)} groups", flush=True)
    finally:
        roles.shutdown()
        if owns_ray and not cfg.resources.address:
            ray.shutdown()
    return run_dir


def rollout_cli(cfg: RunConfig, max_prompts: Optional[int]) -> int:
    if max_prompts is not None and max_prompts < 1:
        print(f"rlsys: rollout --max-prompts = {max_prompts}: must be >= 1", file=sys.stderr)
        return 2
    from rlsys.distributed.placement import PlacementError

    t0 = time.perf_counter()
    models = [c for c in cfg.reward.components if c.model is not None]
    if models:  # said, not silently left out: the recording's rewards are the rules' only
        print(f"[rlsys] rollout records the rule rewards only; the {len(models)} reward model(s) of "
              "reward.components run in `rlsys train`, which re-scores replayed groups with all its rewards",
              flush=True)
    try:
        run_dir = record_rollouts(cfg, max_prompts)
    except PlacementError as err:
        print(f"rlsys: {err}", file=sys.stderr)
        return 2
    print(f"[rlsys] rollouts recorded in {time.perf_counter() - t0:.1f} s: {run_dir / 'rollouts'}\n"
          f"[rlsys] replay them: rlsys train sampling.mode=offline sampling.offline_path={run_dir}",
          file=sys.stdout, flush=True)
    return 0
