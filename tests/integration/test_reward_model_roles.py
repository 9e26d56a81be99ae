"""Reward models as roles of the real loop: a scalar RM actor group and a vLLM judge beside the
rule reward actor, on a real local Ray with the tiny model.

- Both kinds score every streamed group; the combined reward is the weighted sum, each model's
  raw score is its own column, and the judge's critiques are in the rollout Parquet and the
  evaluation samples table; `normalize` standardises the RM's share of the trained reward.
- The judge here is the untrained tiny model, so its output is garbled: every judgement gets the
  fallback and is counted, and the run goes on (the failure guard never stops on a judge).
- An RM slower than generation (a delay injected into the real actor) spreads over its two
  replicas and overlaps generation; the step still completes with the same scores.
"""
from __future__ import annotations

import json
import math
import time

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
B, G = 4, 4


def _config(task_data, out_dir, rm_dir, extra_entries="", overrides=(), normalize=False):
    return small_loop_config(task_data, out_dir, B, G, overrides=[
        f"reward.components=[{{name: accuracy, weight: 0.0}}, "
        f"{{name: null, model: scalar, path: '{rm_dir}', weight: 1.0, cpus: 0.5, batch_size: 8, "
        f"normalize: {str(normalize).lower()}}}{extra_entries}]",
        *overrides])


def test_scalar_rm_and_garbled_judge_in_the_loop(ray_cluster, tiny_model_dir, task_data, tiny_rm_dir, tmp_path):
    import pyarrow.parquet as pq

    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver

    cfg = _config(task_data, tmp_path, tiny_rm_dir,
                  extra_entries=", {name: null, model: judge, path: reference, weight: 0.5, max_new_tokens: 16, "
                                "fallback: -1.0}",
                  overrides=["eval.before_and_after=true", "eval.max_prompts=4", "eval.max_new_tokens=12",
                             "eval.rewards=[{name: accuracy}, {name: null, model: judge, path: reference}]"],
                  normalize=True)
    roles = start_roles(cfg, str(tiny_model_dir))
    try:
        driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), tmp_path)
        summary = driver.run()
    finally:
        roles.shutdown()
    assert summary.steps == 2 and summary.stopped is None  # a judge that never scores stops nothing
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["reward/judge"] == -1.0 and r["reward/failed/judge"] == B * G
        assert r["memory/reward_model_scalar0_host_mb"] > 0 and r["memory/reward_model_judge0_host_mb"] > 0
        # normalize: the RM's share of the trained reward is standardised over the batch (mean 0,
        # std 1 at weight 1); the judge adds a constant 0.5 * -1, accuracy weighs 0.
        assert r["batch/reward_mean"] == pytest.approx(-0.5, abs=1e-5)
        assert r["batch/reward_std"] == pytest.approx(1.0, abs=1e-4)
        assert r["reward/failed/scalar"] == 0 and math.isfinite(r["reward/scalar"])
    recorded = pq.read_table(tmp_path / "rollouts").to_pylist()
    assert len(recorded) == 2 * B * G
    for row in recorded:
        parts = dict(row["reward_components"])
        assert set(parts) == {"accuracy", "scalar", "judge"} and parts["judge"] == -1.0
        # the record keeps the raw weighted sum (what the models said), not the standardised one
        assert row["reward"] == pytest.approx(0.0 * parts["accuracy"] + parts["scalar"] + 0.5 * -1.0, abs=1e-9)
        assert set(dict(row["reward_texts"])) == {"judge"}  # the critique beside its sample
    assert len({round(dict(r["reward_components"])["scalar"], 6) for r in recorded}) > 1
    assert any(dict(r["reward_texts"])["judge"] for r in recorded)
    # The samples table of the held-out evaluation shows the judge's critiques.
    table = [json.loads(line) for line in (tmp_path / "eval" / "step_2" / "samples.jsonl").read_text().splitlines()]
    assert table and all(len(t["critiques"]["judge"]) == len(t["responses"]) for t in table)
    assert table[0]["components"]["judge"] == [-1.0] * len(table[0]["responses"])
    assert summary.eval_after.components["judge"] == -1.0 and summary.eval_after.reward_failures > 0


class SlowScalarRM:
    """The real scalar RM actor with a delay before each call: an RM slower than generation
    (the injected fault; scores stay the real model's)."""

    def __init__(self, spec, delay_s: float):
        from actors.reward_model import ScalarRMActor

        self.inner = ScalarRMActor(spec)
        self.delay_s = delay_s

    def score(self, groups):
        time.sleep(self.delay_s)
        return self.inner.score(groups)

    def call_log(self):
        return self.inner.call_log()

    def peak_memory_mb(self):
        return self.inner.peak_memory_mb()


def test_an_rm_slower_than_generation_spreads_over_replicas(ray_cluster, tiny_model_dir, task_data, tiny_rm_dir,
                                                             tmp_path):
    import pyarrow.parquet as pq
    import ray

    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver
    from rlsys.rewards.scalar_rm import ScalarRewardModel

    import sys

    # The actor class lives in this test module, which Ray's workers cannot import by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = _config(task_data, tmp_path, tiny_rm_dir, overrides=["total_steps=1", "rollout.max_scoring_groups=2",
                                                          f"sampling.prompts_per_step={2 * B}"])
    roles = start_roles(cfg, str(tiny_model_dir))
    (pool,) = roles.reward_models
    spec = roles.recovery.starter.role_spec["reward_model/scalar"]
    for a in pool.actors:
        ray.kill(a)
    pool.actors = [ray.remote(SlowScalarRM).options(num_cpus=0.25).remote(spec, 1.5) for _ in range(2)]
    pool.outstanding = [0, 0]
    try:
        driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), tmp_path)
        row = driver.step()
        logs = ray.get([a.call_log.remote() for a in pool.actors])
    finally:
        for a in pool.actors:
            ray.kill(a)
        roles.shutdown()
    assert all(logs), "both replicas scored groups"
    assert sum(len(x) for x in logs) >= 2
    assert row["stream/peak_scoring_groups"] <= 2  # the scoring channel bounded what was in flight
    assert row["stream/scoring_overlap"] > 0  # scoring started while groups still generated
    # The slow replicas gave the real model's scores.
    recorded = pq.read_table(tmp_path / "rollouts").to_pylist()
    prompts = {p.uid: p for p in load_split(cfg, task_data[0])}
    from rlsys.protocol import Rollout, RolloutGroup

    first = recorded[0]["prompt_uid"]
    mine = [r for r in recorded if r["prompt_uid"] == first]
    group = RolloutGroup(prompts[first], [Rollout(r["prompt_token_ids"], r["response_token_ids"], r["response_text"],
                                                   [], "stop", 0) for r in mine])
    (direct,) = ScalarRewardModel(spec).score_groups([group])
    assert [dict(r["reward_components"])["scalar"] for r in mine] == pytest.approx(direct.scores, abs=1e-5)
