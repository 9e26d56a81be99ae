"""Dead actors, by `kill -9` of the real process at a chosen moment of the real loop (vLLM engine,
reward actor, DeepSpeed learner on a private Ray). The kill is the only fake: the driver-side
hook that fires it is where the moment is chosen, after the real call was sent.

- engine killed mid-generation (one group in): restarted in its bundle with the learner's
  weights, the groups it had not returned generated again; the step trains on every drawn
  prompt exactly once, and the next step's behaviour log-probs match the learner's;
- engine killed during weight sync: the same, from the sync;
- reward actor killed while scoring: restarted, the groups scored again;
- scalar reward-model actor killed while scoring: restarted in its bundle, the groups scored again;
- learner killed during its update and during weight sync: the group is rebuilt from the latest
  checkpoint in the same run directory, the lost steps run again, each step's row is there once;
- past `fault.max_restarts`: the run stops with one line and a checkpoint of the last step.
"""
from __future__ import annotations

import json
import os
import signal
from collections import Counter

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
B, G = 4, 4
LOGPROB_TOL = 2e-3


def _config(task_data, out_dir, overrides=()):
    return small_loop_config(task_data, out_dir, B, G, [f"rollout.max_num_seqs={G}", "checkpoint.export_hf=false",
                                                        *overrides])


def _pids(roles) -> dict[str, int]:
    """Process ids of the engine, the reward actor and learner rank 0, asked while they are idle
    (a busy actor answers only after its current call)."""
    import ray

    actors = {"engine": roles.rollout.actors[0], "reward": roles.reward.actor, "learner": roles.learner.actors[0]}
    return dict(zip(actors, ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors.values()])))


def _driver(cfg, task_data, run_dir):
    """A driver on freshly started roles; -> (driver, roles, a kill(role) that kill -9s it)."""
    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver

    roles = start_roles(cfg, str(_driver.model_dir))
    pids = _pids(roles)
    driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), run_dir)
    return driver, roles, lambda role: os.kill(pids[role], signal.SIGKILL)


@pytest.fixture(autouse=True)
def _model(tiny_model_dir):
    _driver.model_dir = tiny_model_dir


def _trained_exactly_once(run_dir, step: int) -> None:
    """The step's recording holds every drawn prompt's G samples once (sample_index 0..G-1)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()
    per_prompt = Counter(r["prompt_uid"] for r in rows)
    assert len(per_prompt) == B and set(per_prompt.values()) == {G}, per_prompt
    assert sorted((r["prompt_uid"], r["sample_index"]) for r in rows) == sorted(
        (uid, j) for uid in per_prompt for j in range(G))


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kill_at(monkeypatch, cls, name: str, fire, after: bool = True) -> None:
    """`cls.name` calls `fire(*its arguments)` after (or before) itself: where the kill goes."""
    original = getattr(cls, name)

    def wrapped(*args, **kwargs):
        if not after:
            fire(*args, **kwargs)
        out = original(*args, **kwargs)
        if after:
            fire(*args, **kwargs)
        return out

    monkeypatch.setattr(cls, name, wrapped)


def _run(driver, roles, run_dir) -> dict[int, dict]:
    """Run to the end on `roles`, stop them; -> the metrics rows by step (the last of a step)."""
    try:
        driver.run()
    finally:
        roles.shutdown()
    return {r["step"]: r for r in _rows(run_dir)}


def test_engine_killed_mid_generation(ray_cluster, task_data, tmp_path, monkeypatch, fault_record):
    from rlsys.distributed.streaming import InFlightBatch

    driver, roles, kill = _driver(_config(task_data, tmp_path, ["total_steps=2"]), task_data, tmp_path)
    fired = []

    def after_first_group(batch, slots, groups):
        if not fired:
            fired.append(batch.arrived)
            kill("engine")

    _kill_at(monkeypatch, InFlightBatch, "_arrive", after_first_group)
    rows = _run(driver, roles, tmp_path)
    assert fired == [1] and rows[1]["faults/restarts/engine"] == 1.0 and rows[1]["faults/recovery_s/engine"] > 0
    _trained_exactly_once(tmp_path, 1)
    # The restarted engine holds the learner's weights: step 2's samples are the learner's policy.
    assert rows[2]["learner/mismatch_abs_max"] < LOGPROB_TOL, rows[2]
    fault_record(fault="kill -9 of the vLLM engine during generation (1 of 4 groups in)",
                 outcome="engine restarted with the learner's weights; 3 groups re-issued; step completed",
                 recovery_s=rows[1]["faults/recovery_s/engine"], lost="nothing")


def test_engine_killed_during_weight_sync(ray_cluster, task_data, tmp_path, monkeypatch, fault_record):
    from rlsys.distributed.roles import Roles

    driver, roles, kill = _driver(_config(task_data, tmp_path, ["total_steps=2"]), task_data, tmp_path)
    fired = []

    def once(roles_, refs):
        if not fired:
            fired.append(True)
            kill("engine")

    _kill_at(monkeypatch, Roles, "_get_sync", once, after=False)  # the sync's calls are out
    rows = _run(driver, roles, tmp_path)
    assert rows[2]["faults/restarts/engine"] == 1.0
    assert rows[2]["policy/version"] == 2 and rows[2]["learner/mismatch_abs_max"] < LOGPROB_TOL, rows[2]
    _trained_exactly_once(tmp_path, 2)
    fault_record(fault="kill -9 of the vLLM engine during weight sync",
                 outcome="engine restarted with the new weights, broadcast group reopened; next step on-policy",
                 recovery_s=rows[2]["faults/recovery_s/engine"], lost="nothing")


def test_reward_actor_killed_while_scoring(ray_cluster, task_data, tmp_path, monkeypatch, fault_record):
    from rlsys.distributed.streaming import InFlightBatch

    driver, roles, kill = _driver(_config(task_data, tmp_path, ["total_steps=1"]), task_data, tmp_path)
    calls = []

    def on_second_group(batch, slots, groups, online):
        calls.append(slots)
        if len(calls) == 2:
            kill("reward")

    _kill_at(monkeypatch, InFlightBatch, "_start_scoring", on_second_group)
    row = _run(driver, roles, tmp_path)[1]
    assert row["faults/restarts/reward"] == 1.0
    _trained_exactly_once(tmp_path, 1)
    fault_record(fault="kill -9 of the reward actor while scoring", outcome="restarted; the groups scored again",
                 recovery_s=row["faults/recovery_s/reward"], lost="nothing")


def test_reward_model_actor_killed_while_scoring(ray_cluster, task_data, tmp_path, monkeypatch, fault_record,
                                                 tiny_rm_dir):
    import pyarrow.parquet as pq
    import ray

    from rlsys.distributed.streaming import InFlightBatch

    entries = (f"reward.components=[{{name: accuracy, weight: 1.0}}, "
               f"{{name: null, model: scalar, path: '{tiny_rm_dir}', weight: 1.0}}]")
    driver, roles, _ = _driver(_config(task_data, tmp_path, ["total_steps=1", entries]), task_data, tmp_path)
    (pool,) = roles.reward_models
    pid = ray.get(pool.actors[0].__ray_call__.remote(lambda self: os.getpid()))
    calls = []

    def on_second_group(batch, slots, groups, online):
        calls.append(slots)
        if len(calls) == 2:
            os.kill(pid, signal.SIGKILL)

    _kill_at(monkeypatch, InFlightBatch, "_start_scoring", on_second_group)
    row = _run(driver, roles, tmp_path)[1]
    assert row["faults/restarts/reward_model/scalar"] == 1.0 and row["reward/failed/scalar"] == 0
    _trained_exactly_once(tmp_path, 1)
    scores = [dict(r["reward_components"])["scalar"] for r in pq.read_table(tmp_path / "rollouts").to_pylist()]
    assert len(scores) == B * G and len(set(scores)) > 1  # every sample scored by the (restarted) model
    fault_record(fault="kill -9 of the scalar reward-model actor while scoring",
                 outcome="restarted in its bundle; the groups scored again",
                 recovery_s=row["faults/recovery_s/reward_model/scalar"], lost="nothing")


@pytest.mark.parametrize("moment, step, save_every", [("update", 3, 2), ("sync", 3, 2), ("update", 2, 10)])
def test_learner_killed_goes_back_to_the_checkpoint(ray_cluster, task_data, tmp_path, monkeypatch, moment, step,
                                                    save_every, fault_record):
    """With save_every=10 nothing is saved before the kill: the run goes back to its start."""
    from rlsys.distributed.clients import LearnerGroup
    from rlsys.distributed.roles import Roles

    cfg = _config(task_data, tmp_path, ["total_steps=4", f"checkpoint.save_every={save_every}"])
    driver, roles, kill = _driver(cfg, task_data, tmp_path)
    fired = []

    def in_the_step(*args):
        if driver.step_index == step and not fired:
            fired.append(True)
            kill("learner")

    if moment == "update":  # the update's call is out: the learner is mid-train_step
        _kill_at(monkeypatch, LearnerGroup, "train_async", in_the_step)
    else:
        _kill_at(monkeypatch, Roles, "_get_sync", in_the_step, after=False)
    _run(driver, roles, tmp_path)
    assert fired and driver.step_index == 4
    rows = [r for r in _rows(tmp_path) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the lost steps ran again, each logged once
    back_to = (step - 1) // save_every * save_every
    assert rows[back_to]["faults/restarts/learner"] == 1.0 and rows[back_to]["faults/recovery_s/learner"] > 0
    assert rows[3]["policy/version"] == 4 and rows[3]["learner/mismatch_abs_max"] < LOGPROB_TOL
    assert (tmp_path / "checkpoints" / "final").is_dir()
    where = f"checkpoints/step_{back_to}" if back_to else "the start (no checkpoint yet)"
    fault_record(fault=f"kill -9 of the DeepSpeed learner during {'the update' if moment == 'update' else 'weight sync'}"
                 f" of step {step} (checkpoint.save_every = {save_every})",
                 outcome=f"learner group rebuilt from {where} in the same run; "
                         + (f"step {step} ran again" if back_to + 1 == step else f"steps {back_to + 1}-{step} ran again"),
                 recovery_s=rows[back_to]["faults/recovery_s/learner"],
                 lost="nothing (the lost steps are redone; each row is written once)")


def test_past_the_restart_budget_the_run_stops_with_one_line_and_a_checkpoint(ray_cluster, task_data, tmp_path,
                                                                              monkeypatch, fault_record):
    from rlsys import checkpoint
    from rlsys.distributed.recovery import RoleFailure
    from rlsys.distributed.streaming import InFlightBatch

    cfg = _config(task_data, tmp_path, ["total_steps=3", "fault.max_restarts=0"])
    driver, roles, kill = _driver(cfg, task_data, tmp_path)

    def first_group_of_step_2(batch, slots, groups):
        if driver.step_index == 2 and batch.arrived == 1:
            kill("engine")

    _kill_at(monkeypatch, InFlightBatch, "_arrive", first_group_of_step_2)
    with pytest.raises(RoleFailure) as err:
        _run(driver, roles, tmp_path)
    assert str(err.value) == "engine 0 died with its restarts used up (fault.max_restarts = 0); stopping"
    ckpt = err.value.checkpoint
    assert ckpt == tmp_path / "checkpoints" / "step_1"
    state = checkpoint.validate(ckpt, has_critic=False)
    assert state.step == 1 and state.sampler["position"] == B  # step 2's draw undone
    fault_record(fault="an engine dies past fault.max_restarts (0)", outcome=f"stopped: '{err.value}'; checkpoint step_1",
                 recovery_s=None, lost="nothing (step 2 is drawn again on resume)")
