"""Training entry point: `rlsys train` and `python -m launch.train` (what `ray job submit` runs).

    python -m launch.train --config configs/default.yaml rollout.n=8 total_steps=10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rlsys.config import ConfigError, RunConfig, load_config, to_yaml


def _run_dir(cfg: RunConfig, kind: str = "") -> Path:
    """<output_dir>/<name>[-<kind>]-<timestamp>, never an existing directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{cfg.name}-{kind}" if kind else cfg.name
    path = Path(cfg.output_dir).expanduser().resolve() / f"{base}-{stamp}"
    suffix = 1
    while path.exists():
        path = path.with_name(f"{base}-{stamp}-{suffix}")
        suffix += 1
    path.mkdir(parents=True)
    return path


def run_training(cfg: RunConfig) -> int:
    from launch.cluster import connect
    from launch.embedded import resolve
    from launch.evaluate import load_split
    from rlsys.distributed.launcher import start_roles
    from rlsys.data import DataError
    from rlsys.driver import Driver
    from rlsys.sampling import replay_source

    t0 = time.perf_counter()
    assets = resolve(cfg)
    model_path = str(assets.model_dir) if assets.model_dir else cfg.model.path
    train = load_split(cfg, assets.train_path or cfg.data.train)
    test = load_split(cfg, assets.test_path or cfg.data.test)
    try:
        replay = replay_source(cfg, train)  # before any actor starts: a bad recording fails fast
    except DataError as err:
        print(f"rlsys: offline rollouts: {err}", file=sys.stderr)
        return 2
    run_dir = _run_dir(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    print(f"[rlsys] run dir {run_dir}; model {model_path} (assets ready in {assets.build_seconds:.1f} s); "
          f"{len(train)} train / {len(test)} test prompts"
          + (f"; {len(replay.items)} recorded groups to replay" if replay is not None else ""), flush=True)
    ray = connect(cfg)
    roles = start_roles(cfg, model_path)
    try:
        driver = Driver(cfg, roles, train, test, run_dir, replay=replay)
        del train, test  # the driver keeps the prompts with object-store image refs, not bytes
        if cfg.checkpoint.resume_from:
            driver.load_checkpoint(Path(cfg.checkpoint.resume_from))
        summary = driver.run()
    finally:
        roles.shutdown()
        if not cfg.resources.address:
            ray.shutdown()
    before, after = summary.eval_before, summary.eval_after
    if before and after:
        print(f"[rlsys] held-out accuracy {before.accuracy:.3f} -> {after.accuracy:.3f} "
              f"(format rate {before.format_rate:.3f} -> {after.format_rate:.3f}, n={after.n})")
    print(f"[rlsys] {summary.steps} steps in {time.perf_counter() - t0:.1f} s; metrics {run_dir / 'metrics.jsonl'}; "
          f"curves {run_dir / 'curves.png'}; checkpoint {run_dir / 'checkpoints' / 'final'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.train")
    parser.add_argument("--config", help="YAML file mirroring the config tree")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlsys: config error: {err}", file=sys.stderr)
        return 2
    return run_training(cfg)


if __name__ == "__main__":
    sys.exit(main())
