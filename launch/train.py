"""Training entry point: `rlsys train` and `python -m launch.train` (what `ray job submit` runs).

    python -m launch.train --config configs/default.yaml rollout.n=8 total_steps=10
    python -m launch.train --resume runs/default-20261201-093000     # continue that run exactly

Exit codes: 0 done; 2 bad config, data or checkpoint (one line on stderr, nothing started);
3 a role died more than fault.max_restarts times, or a reward component kept failing
(reward.max_failure_frac / max_failed_steps): one line, a checkpoint to resume from;
75 stopped by SIGTERM / SIGINT (or `ray job stop`) with a checkpoint to resume from.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from launch.outputs import job_note, resolve_output_path
from rlsys.config import ConfigError, RunConfig, load_config, to_yaml

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request; resumable
EXIT_FAILED = 3  # a role died too often, or a reward kept failing: resumable once fixed


def new_run_dir(cfg: RunConfig, kind: str = "") -> Path:
    """<output_dir>/<name>[-<kind>]-<timestamp>, never an existing directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{cfg.name}-{kind}" if kind else cfg.name
    path = resolve_output_path(cfg.output_dir) / f"{base}-{stamp}"
    suffix = 1
    while path.exists():
        path = path.with_name(f"{base}-{stamp}-{suffix}")
        suffix += 1
    path.mkdir(parents=True)
    return path


def _resume_point(cfg: RunConfig) -> tuple[Optional[Path], Optional[Path]]:
    """(checkpoint, the run directory it belongs to) for `checkpoint.resume_from`: a checkpoint
    directory, or 'latest' (the newest checkpoint of this config's runs under output_dir)."""
    from rlsys import checkpoint

    spec = cfg.checkpoint.resume_from
    if not spec:
        return None, None
    if spec == "latest":
        runs = sorted(resolve_output_path(cfg.output_dir).glob(f"{cfg.name}-*"))
        found = [(c.stat().st_mtime, c) for c in map(checkpoint.latest, runs) if c is not None]
        if not found:
            raise checkpoint.CheckpointError(f"latest: no checkpoint under {cfg.output_dir}/{cfg.name}-*")
        ckpt = max(found)[1]
    else:
        ckpt = resolve_output_path(spec)
    checkpoint.validate(ckpt, has_critic=cfg.critic.enabled)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return ckpt, run_dir


class StopOnSignal:
    """SIGTERM / SIGINT ask the run to stop at the next step boundary with a checkpoint; a
    second one exits at once. It replaces Python's default handlers and Ray's (which end the
    process with a C++ signal dump); the processes the run starts do not take the signal
    (rlsys/signals.py)."""

    def __init__(self):
        self.reason: Optional[str] = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            print(f"\n[rlsys] {name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.reason = name
        print(f"\n[rlsys] {name}: stopping after this step with a checkpoint ({name} again to exit at once)",
              file=sys.stderr, flush=True)

    def __call__(self) -> Optional[str]:
        return self.reason


def run_training(cfg: RunConfig) -> int:
    from rlsys.rewards import RewardSpecError, check_reward_forms

    # Reward signatures first, before the imports below load torch (seconds) and before any
    # asset or data work: a reward no form accepts stops the run in about a second.
    try:
        check_reward_forms([(c.name, c.weight) for c in [*cfg.reward.components, *(cfg.eval.rewards or [])]
                            if c.model is None])
    except RewardSpecError as err:
        print(f"rlsys: {err}", file=sys.stderr)
        return 2
    from launch.cluster import connect
    from launch.embedded import resolve
    from launch.evaluate import load_split_counted
    from launch.roles import start_roles
    from rlsys import checkpoint
    from rlsys.algorithms import ADVANTAGES
    from rlsys.data import DataError
    from rlsys.distributed.placement import PlacementError
    from rlsys.distributed.recovery import RoleFailure
    from rlsys.driver import Driver
    from rlsys.plugins import PluginError
    from rlsys.rewards import RewardFailureError, probe_rewards
    from rlsys.plugins import resolve as resolve_function
    from rlsys.sampling import replay_source
    from rlsys.signals import stop_signals_held

    t0 = time.perf_counter()
    try:  # a relative output_dir inside a Ray job's temporary working dir goes to a stable place
        resolve_output_path(cfg.output_dir)
    except ConfigError as err:
        print(f"rlsys: config error: output_dir: {err}", file=sys.stderr)
        return 2
    if job_note(cfg.output_dir):
        print(job_note(cfg.output_dir), flush=True)
    try:  # before anything is built or started: a bad checkpoint costs nothing
        resume_ckpt, resume_dir = _resume_point(cfg)
    except checkpoint.CheckpointError as err:
        print(f"rlsys: checkpoint.resume_from: {err}", file=sys.stderr)
        return 2
    try:  # a user estimator file is imported now, not at the first step
        resolve_function(ADVANTAGES, cfg.advantage_estimator)
    except PluginError as err:
        print(f"rlsys: config error: algorithm.advantage_estimator: {err}", file=sys.stderr)
        return 2
    assets = resolve(cfg)
    model_path = str(assets.model_dir) if assets.model_dir else cfg.model.path
    try:
        train, train_skipped = load_split_counted(cfg, assets.train_path or cfg.data.train)
        test, test_skipped = load_split_counted(cfg, assets.test_path or cfg.data.test)
        replay = replay_source(cfg, train)  # before any actor starts: a bad recording fails fast
        probe_rewards([(c.name, c.weight) for c in [*cfg.reward.components, *(cfg.eval.rewards or [])]
                       if c.model is None], train[0], timeout_s=cfg.reward.timeout_s)
    except (DataError, RewardSpecError) as err:
        print(f"rlsys: {err}", file=sys.stderr)
        return 2
    run_dir = resume_dir or new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    print(f"[rlsys] run dir {run_dir}; model {model_path} (assets ready in {assets.build_seconds:.1f} s); "
          f"{len(train)} train / {len(test)} test prompts"
          + (f"; {len(replay.items)} recorded groups to replay" if replay is not None else "")
          + (f"; resuming from {resume_ckpt}" if resume_ckpt else ""), flush=True)
    stop = StopOnSignal()
    with stop_signals_held():  # Ray's processes ignore a signal meant for the whole group
        ray = connect(cfg)
        stop.install()  # after ray.init, which installs handlers of its own
    try:  # a cluster that can never host the roles fails here in seconds, with one line
        roles = start_roles(cfg, model_path)
    except PlacementError as err:
        print(f"rlsys: {err}", file=sys.stderr)
        if not cfg.resources.address:
            ray.shutdown()
        return 2
    try:
        driver = Driver(cfg, roles, train, test, run_dir, replay=replay, stop_requested=stop,
                        skipped_rows={"train": train_skipped, "test": test_skipped})
        del train, test  # the driver keeps the prompts with object-store image refs, not bytes
        if resume_ckpt:
            driver.load_checkpoint(resume_ckpt)
        summary = driver.run()
    except (RoleFailure, RewardFailureError) as err:
        print(f"rlsys: {err}; checkpoint {err.checkpoint}; resume: rlsys train --resume {run_dir}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        roles.shutdown()
        if not cfg.resources.address:
            ray.shutdown()
    if summary.stopped:
        print(f"[rlsys] stopped by {summary.stopped} after step {summary.steps}; checkpoint {summary.checkpoint}\n"
              f"[rlsys] resume: rlsys train --resume {run_dir}", flush=True)
        return EXIT_STOPPED
    before, after = summary.eval_before, summary.eval_after
    if before and after:
        print(f"[rlsys] held-out accuracy {before.accuracy:.3f} -> {after.accuracy:.3f} "
              f"(format rate {before.format_rate:.3f} -> {after.format_rate:.3f}, n={after.n})")
    print(f"[rlsys] {summary.steps} steps in {time.perf_counter() - t0:.1f} s; metrics {run_dir / 'metrics.jsonl'}; "
          f"curves {run_dir / 'curves.png'}; checkpoint {run_dir / 'checkpoints' / 'final'}", flush=True)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML file mirroring the config tree (configs/*.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its newest checkpoint, with its config.yaml "
                             "(overrides still apply, e.g. total_steps=60)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config: --config + overrides, or with --resume the run directory's own config
    with resume_from set to its newest checkpoint."""
    if not getattr(args, "resume", None):
        return load_config(args.config, args.overrides)
    from rlsys import checkpoint

    run_dir = resolve_output_path(args.resume)
    if args.config:
        raise ConfigError("--resume RUN_DIR uses RUN_DIR/config.yaml; drop --config")
    ckpt = checkpoint.latest(run_dir) if run_dir.is_dir() else None
    if ckpt is None:
        raise ConfigError(f"--resume {run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
    return load_config(run_dir / "config.yaml", [*args.overrides, f"checkpoint.resume_from={ckpt}"])


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="python -m launch.train")).parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"rlsys: config error: {err}", file=sys.stderr)
        return 2
    return run_training(cfg)


if __name__ == "__main__":
    sys.exit(main())
