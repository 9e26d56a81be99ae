"""Exact resume: a run resumed from its step-2 checkpoint, on freshly started actors, repeats the
uninterrupted run's steps 3-4 bit for bit: sampled token ids, rewards, losses, the final
parameters. For synchronous training (k = 0) and asynchronous (k = 1, where the batch generated
ahead with the older weights is part of the checkpoint), with dynamic sampling on (its extra
draw rounds are seeded by step and round like the first)."""
from __future__ import annotations

import pytest

from loop_config import SIGNAL_REWARD, small_loop_config

pytestmark = pytest.mark.integration
B, G, STEPS = 4, 4, 4
COMPARED = ("reward/mean", "learner/policy_loss", "learner/grad_norm", "learner/entropy",
            "batch/advantage_abs_mean", "sampling/batch_groups", "sampling/rounds", "async/version_lag_max")


def _config(task_data, out_dir, k):
    return small_loop_config(task_data, out_dir, B, G, [
        f"total_steps={STEPS}", "checkpoint.save_every=2", "checkpoint.export_hf=false",
        "sampling.dynamic_sampling=true", "sampling.max_resample_rounds=2",
        f"sampling.max_staleness={k}", *(["algorithm.max_is_weight=2.0"] if k else []),
        f"reward.components=[{{name: '{SIGNAL_REWARD.replace('distinct_chars', 'length_mod3')}', weight: 1.0}}]"])


def _run(cfg, model_dir, task_data, run_dir, resume_from=None):
    """A run on freshly started roles; -> (metrics rows by step, final parameter digest)."""
    import json

    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver

    roles = start_roles(cfg, str(model_dir))
    try:
        driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), run_dir)
        if resume_from is not None:
            driver.load_checkpoint(resume_from)
        driver.run()
        digest = roles.learner.call_all(lambda a: a.params_digest.remote())[0]
    finally:
        roles.shutdown()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}, digest


def _samples(run_dir, step):
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet")
    return [(r["prompt_uid"], r["response_token_ids"], r["reward"]) for r in table.to_pylist()]


@pytest.mark.parametrize("k", [0, 1])
def test_resumed_run_repeats_the_uninterrupted_one_exactly(ray_cluster, tiny_model_dir, task_data, tmp_path, k):
    import shutil

    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    cfg = _config(task_data, tmp_path, k)
    full, full_digest = _run(cfg, tiny_model_dir, task_data, full_dir)
    ckpt = full_dir / "checkpoints" / "step_2"
    assert ckpt.is_dir() and ((ckpt / "inflight.pkl").is_file() == (k > 0))
    # The interrupted run as it stood at its checkpoint: metrics and rollouts of steps 1-2 only.
    shutil.copytree(full_dir, resumed_dir, ignore=shutil.ignore_patterns("step_00000[34].parquet", "final"))
    resumed, resumed_digest = _run(cfg, tiny_model_dir, task_data, resumed_dir,
                                   resume_from=resumed_dir / "checkpoints" / "step_2")

    assert sorted(resumed) == sorted(full) == list(range(1, STEPS + 1))  # each step's row once
    for step in (3, 4):
        assert _samples(resumed_dir, step) == _samples(full_dir, step), f"step {step} sampled differently"
        for key in COMPARED:
            assert resumed[step].get(key) == full[step].get(key), (step, key)
    assert resumed_digest == full_digest
    # Not vacuous: the policy trained, and dynamic sampling ran extra rounds on a resumed step.
    assert all(full[s]["learner/grad_norm"] > 0 for s in (3, 4))
    assert max(full[s]["sampling/rounds"] for s in (3, 4)) > 1
