"""Streaming and asynchronous generation through the real loop (vLLM engine, reward and
reference actors, DeepSpeed learner on a private Ray).

- Streaming: with `rollout.max_num_seqs = G` the engine decodes one group at a time, so groups
  finish one after another; the reward and reference actors' own call logs must show work that
  started before the last group finished generating. The bounded channels are set small
  (window 1, two groups in scoring) so backpressure is exercised, and the batch still comes out
  complete and in draw order.
- Async: `sampling.max_staleness = 2` keeps every trained sample at most 2 policy versions
  behind the learner; the lag goes 0, 1, 2, 2 over four steps (hand-derived below).
- k = 0 is the synchronous loop: a streamed run and a run with `rollout.stream = false` (each
  engine answers its whole share in one reply, scoring after) give identical rewards, losses
  and final parameters for the same seed, each on freshly started actors.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
B, G = 6, 4


def _config(task_data, out_dir, overrides=()):
    return small_loop_config(task_data, out_dir, B, G, [
        f"rollout.max_num_seqs={G}", "rollout.stream_window=1", "rollout.max_scoring_groups=2",
        "algorithm.kl_coef=0.01",  # so the reference actor scores too
        *overrides])


@pytest.fixture(scope="module")
def train_prompts(task_data, tmp_path_factory):
    from launch.evaluate import load_split

    return load_split(_config(task_data, tmp_path_factory.mktemp("out")), task_data[0])


def _start(cfg, model_dir):
    from launch.roles import start_roles

    return start_roles(cfg, str(model_dir))


def _digest(roles):
    return roles.learner.call_all(lambda a: a.params_digest.remote())[0]


def _run(roles, cfg, prompts, run_dir, steps):
    from rlsys.driver import Driver

    driver = Driver(cfg, roles, prompts, prompts[:2], run_dir)
    rows = [driver.step() for _ in range(steps)]
    assert not driver.ahead and not roles.pump.batches, "batches left in flight after the last step"
    return rows


@pytest.fixture(scope="module")
def roles(ray_cluster, tiny_model_dir, task_data, tmp_path_factory):
    roles = _start(_config(task_data, tmp_path_factory.mktemp("out")), tiny_model_dir)
    yield roles
    roles.shutdown()


def test_scoring_starts_while_later_groups_still_generate(roles, task_data, train_prompts, tmp_path):
    import ray

    from rlsys.driver import Driver

    driver = Driver(_config(task_data, tmp_path), roles, train_prompts, train_prompts[:2], tmp_path)
    prompts = train_prompts[:B]
    batch = roles.launch([], prompts, driver.score_async, seed=1)
    replayed, scored = roles.pump.finish(batch)

    assert replayed == [] and [sg.group.prompt.uid for sg in scored] == [p.uid for p in prompts]
    assert all(sg.group.size == G and sg.ref_logprobs is not None for sg in scored)
    # The driver's own event order: with at most 2 groups in scoring, group 3 can be taken only
    # after a group was fully scored (rewards and reference), so scoring overlapped generation.
    events = batch.events
    assert [k for k, _ in events].count("arrived") == B == [k for k, _ in events].count("scored")
    first_scored = events.index(next(e for e in events if e[0] == "scored"))
    last_arrived = max(i for i, e in enumerate(events) if e[0] == "arrived")
    assert first_scored < last_arrived, f"no group was scored before the last one arrived: {events}"
    assert max(_in_scoring(events)) <= 2  # rollout.max_scoring_groups
    # One reward call and one reference call per group, each made by its actor.
    assert len(ray.get(roles.reward.actor.call_log.remote())) >= B
    assert len(ray.get(roles.reference.actor.call_log.remote())) >= B
    s = batch.stats
    assert 0 < s.first_group_s <= s.first_scored_s < s.generation_s
    assert 0 < s.overlap_fraction <= 1
    assert s.peak_scoring == max(_in_scoring(events))


def _in_scoring(events: list[tuple[str, int]]) -> list[int]:
    """How many groups were in scoring after each event."""
    out, n = [], 0
    for kind, _ in events:
        n += 1 if kind == "arrived" else -1
        out.append(n)
    return out


def test_max_staleness_two_bounds_the_version_lag(roles, task_data, train_prompts, tmp_path):
    import pyarrow.parquet as pq

    cfg = _config(task_data, tmp_path, ["total_steps=4", "sampling.max_staleness=2", "algorithm.max_is_weight=2.0"])
    before = _digest(roles)
    rows = _run(roles, cfg, train_prompts, tmp_path, steps=4)
    # Step 1 launches the batches of steps 1-3 with version v0; step 2 launches step 4's after
    # the first sync (v0+1). Learner versions at steps 1-4 are v0..v0+3, so the lags are:
    assert [r["async/version_lag_max"] for r in rows] == [0.0, 1.0, 2.0, 2.0]
    assert [r["async/version_lag_mean"] for r in rows] == [0.0, 1.0, 2.0, 2.0]
    assert _digest(roles) != before, "policy parameters did not change"
    # Step 1 is on-policy: learner and engine log-probs agree, no importance weight hits the cap.
    assert rows[0]["learner/is_weight_clip_frac"] == 0.0
    for r in rows:
        assert all(math.isfinite(v) for k, v in r.items() if not k.startswith("stream/")), r
    # Every recorded sample carries the version that generated it.
    step3 = pq.read_table(tmp_path / "rollouts" / "step_000003.parquet").column("policy_version").to_pylist()
    assert set(step3) == {0}


def test_k0_streamed_equals_the_synchronous_loop(ray_cluster, tiny_model_dir, task_data, train_prompts, tmp_path):
    results = {}
    for stream in (True, False):
        # No KL: reference log-probs batched per group vs per batch may differ in the last bit.
        cfg = _config(task_data, tmp_path / str(stream), [f"rollout.stream={str(stream).lower()}",
                                                           "algorithm.kl_coef=0.0"])
        fresh = _start(cfg, tiny_model_dir)
        try:
            rows = _run(fresh, cfg, train_prompts, tmp_path / str(stream), steps=2)
            results[stream] = (rows, _digest(fresh))
        finally:
            fresh.shutdown()
    (streamed, d_stream), (synchronous, d_sync) = results[True], results[False]
    for key in ("reward/mean", "learner/policy_loss", "learner/grad_norm", "batch/advantage_abs_mean"):
        assert [r[key] for r in streamed] == [r[key] for r in synchronous], key
    assert d_stream == d_sync
    assert streamed[0]["stream/scoring_overlap"] > 0 and synchronous[0]["stream/scoring_overlap"] == 0
