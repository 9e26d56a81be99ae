"""A small, fast loop config shared by the integration tests that drive the real loop
(imported as `from loop_config import ...`: pytest puts this directory on sys.path)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIGNAL_REWARD = f"{Path(__file__).with_name('signal_reward.py')}:distinct_chars"


def small_loop_config(task_data, out_dir, prompts_per_step: int, n: int, overrides=()):
    """The default config shrunk to a fast 2-step loop on `task_data`: short responses, the
    signal reward (distinct characters, so groups have reward variance) plus accuracy, no eval;
    synchronous (k = 0, the default is 1) so that the logged train/inference mismatch is the
    engine-vs-learner numerics alone. Tests of k > 0 set sampling.max_staleness themselves."""
    from rlsys.config import load_config

    return load_config(ROOT / "configs/default.yaml", [
        "total_steps=2", f"sampling.prompts_per_step={prompts_per_step}", f"rollout.n={n}",
        "rollout.max_new_tokens=12", "learner.micro_batch_size=8", "learner.lr=1e-3", "logging.wandb=disabled",
        "logging.progress_bar=false", "eval.before_and_after=false", "resources.cpus_per_engine=1",
        "sampling.max_staleness=0",
        "resources.cpus_per_learner=1",
        f"reward.components=[{{name: '{SIGNAL_REWARD}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
        f"data.train={task_data[0]}", f"data.test={task_data[1]}", f"output_dir={out_dir}", *overrides])
