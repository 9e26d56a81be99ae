"""Offline and mixed sampling through the real loop: tiny model, vLLM engine, DeepSpeed learner.

An online run records its rollouts; an offline run replays them (the engine generates nothing
for training) and a mixed run takes half of each batch from them. To stay fast the three runs
share one set of actors (the roles do not depend on `sampling`); each run has its own Driver
and run directory, and "parameters changed" is measured across that run's own steps.
`rlsys rollout` records the initial policy's rollouts in the same format.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
B, G = 4, 4


def _config(task_data, out_dir, overrides=()):
    return small_loop_config(task_data, out_dir, B, G, overrides)


@pytest.fixture(scope="module")
def roles(ray_cluster, tiny_model_dir, task_data, tmp_path_factory):
    from launch.roles import start_roles

    roles = start_roles(_config(task_data, tmp_path_factory.mktemp("out")), str(tiny_model_dir))
    yield roles
    roles.shutdown()


@pytest.fixture(scope="module")
def train_prompts(task_data, tmp_path_factory):
    from launch.evaluate import load_split

    return load_split(_config(task_data, tmp_path_factory.mktemp("out")), task_data[0])


def _drive(roles, cfg, prompts, run_dir, steps=2):
    """`steps` driver steps; -> (metric rows, params digest before, after)."""
    from rlsys.driver import Driver

    digest = lambda: roles.learner.call_all(lambda a: a.params_digest.remote())[0]  # noqa: E731
    driver = Driver(cfg, roles, prompts, prompts[:2], run_dir)
    before = digest()
    rows = [driver.step() for _ in range(steps)]
    return rows, before, digest()


def _finite(rows):
    for row in rows:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"


@pytest.fixture(scope="module")
def online_run(roles, task_data, train_prompts, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("online_run")
    rows, d0, d1 = _drive(roles, _config(task_data, run_dir), train_prompts, run_dir)
    assert d0 != d1
    assert [r["sampling/generated_groups"] for r in rows] == [B, B]
    return run_dir


def test_offline_replays_an_online_run_without_generating(roles, task_data, train_prompts, online_run, tmp_path):
    import pyarrow.parquet as pq

    cfg = _config(task_data, tmp_path, ["sampling.mode=offline", f"sampling.offline_path={online_run}"])
    rows, d0, d1 = _drive(roles, cfg, train_prompts, tmp_path)
    assert d0 != d1, "policy parameters did not change"
    _finite(rows)
    for row in rows:
        # The engine generated nothing for training; every group came from the recording.
        assert row["sampling/generated_groups"] == 0 and row["throughput/gen_tokens_per_s"] == 0
        assert row["sampling/replayed_groups"] == B and row["sampling/offline_fraction"] == 1.0
        assert row["learner/samples"] == B * G
    assert rows[1]["policy/version"] == 2
    # Replayed groups are re-scored, re-recorded with their recorded policy versions, and are
    # exactly the recorded samples (same token ids), joined to the dataset by prompt_uid.
    source = pq.read_table(online_run / "rollouts").to_pylist()
    replayed = pq.read_table(tmp_path / "rollouts").to_pylist()
    assert len(replayed) == 2 * B * G
    key = lambda r: (r["prompt_uid"], tuple(r["response_token_ids"]))  # noqa: E731
    assert {key(r) for r in replayed} <= {key(r) for r in source}
    assert {r["policy_version"] for r in replayed} <= {0, 1}


def test_mixed_run_honours_the_fraction(roles, task_data, train_prompts, online_run, tmp_path):
    import pyarrow.parquet as pq

    cfg = _config(task_data, tmp_path, ["sampling.mode=mixed", f"sampling.offline_path={online_run}",
                                        "sampling.offline_fraction=0.5", "sampling.dynamic_sampling=true"])
    rows, d0, d1 = _drive(roles, cfg, train_prompts, tmp_path)
    assert d0 != d1, "policy parameters did not change"
    _finite(rows)
    for row in rows:
        assert row["sampling/offline_groups"] == 2 and row["sampling/online_groups"] == 2
        assert row["sampling/offline_fraction"] == 0.5 and row["sampling/short_batch"] == 0
        # Generated: the online half plus any all-equal-reward group re-drawn by dynamic sampling.
        assert row["sampling/generated_groups"] >= 2 and row["sampling/generated_groups"] - 2 <= row["sampling/dropped_groups"]
        assert row["learner/samples"] == B * G
    # Online samples of step 2 come from the weights synced after step 1; replayed ones keep theirs.
    versions = [r["policy_version"] for r in pq.read_table(tmp_path / "rollouts" / "step_000002.parquet").to_pylist()]
    assert versions.count(1) >= 2 * G


def test_rollout_cli_records_replayable_groups(ray_cluster, tiny_model_dir, task_data, train_prompts, tmp_path):
    from launch.rollout import record_rollouts
    from rlsys.replay import read_replay

    cfg = _config(task_data, tmp_path, ["sampling.prompts_per_step=3", "resources.cpus_per_engine=0.5",
                                        f"model.path={tiny_model_dir}"])
    run_dir = record_rollouts(cfg, max_prompts=5)
    assert [p.name for p in sorted((run_dir / "rollouts").iterdir())] == ["step_000001.parquet", "step_000002.parquet"]
    groups = read_replay(run_dir, train_prompts, min_group_size=2)
    assert [g.prompt.uid for g in groups] == [p.uid for p in train_prompts[:5]]
    assert all(g.size == G and {r.policy_version for r in g.rollouts} == {0} for g in groups)
    assert all(len(r.behaviour_logprobs) == len(r.response_token_ids) > 0 for g in groups for r in g.rollouts)
