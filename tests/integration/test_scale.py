"""Scale-out through the real loop: two engines sharing the work, and roles on different nodes.

A: two vLLM engines on the local test cluster; the balancer must give both a share of every
   step's prompts, and the weight sync must reach both (each reports the learner's version, and
   the behaviour log-probs of step 2 match the learner's recomputation).
B: a simulated three-node Ray cluster (`ray.cluster_utils.Cluster`, every node on 127.0.0.1)
   sized so the learner and the engine cannot share a node; the weight sync then crosses nodes
   (processes of different raylets; the network is still loopback on one machine).

B comes first in this file: it runs its own cluster, which cannot coexist in one driver process
with the module-scoped `ray_cluster` that A uses.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from loop_config import SIGNAL_REWARD

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# As in test_training_loop.py: float32 engine and learner agree to rounding after a sync.
LOGPROB_TOL = 2e-3
G = 4


def _config(task_data, out_dir, overrides):
    from rlsys.config import load_config

    return load_config(ROOT / "configs/default.yaml", [
        "total_steps=2", f"rollout.n={G}", "rollout.max_new_tokens=12",
        "learner.micro_batch_size=8", "learner.lr=1e-3", "logging.wandb=disabled", "logging.progress_bar=false",
        "eval.before_and_after=false", "resources.cpus_per_engine=1", "resources.cpus_per_learner=1",
        "sampling.max_staleness=0",  # on-policy: the logged mismatch is numerics alone
        f"reward.components=[{{name: '{SIGNAL_REWARD}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
        f"data.train={task_data[0]}", f"data.test={task_data[1]}", f"output_dir={out_dir}", *overrides])


def _engine_infos(roles) -> list:
    import ray

    return ray.get([e.engine_info.remote() for e in roles.rollout.actors])


def _drive(cfg, roles, task_data, run_dir, steps=2):
    """`steps` driver steps; -> (rows, engine infos after each step, params digest before, after)."""
    from launch.evaluate import load_split
    from rlsys.driver import Driver

    digest = lambda: roles.learner.call_all(lambda a: a.params_digest.remote())[0]  # noqa: E731
    driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), run_dir)
    before = digest()
    rows, infos = [], []
    for _ in range(steps):
        rows.append(driver.step())
        infos.append(_engine_infos(roles))
        # The learner's version is what the driver just had it broadcast.
        assert [i.policy_version for i in infos[-1]] == [driver.version] * len(roles.rollout.actors), infos[-1]
    return rows, infos, before, digest()


def _finite(rows):
    for row in rows:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"


# --------------------------------------------------------------------- B: three simulated nodes


@pytest.fixture
def three_nodes(monkeypatch):
    """Head (1 CPU) + two workers (1 CPU each), all on 127.0.0.1; the driver connects to it.

    With cpus_per_engine = cpus_per_learner = 1 and reward 0.5, the engine and the learner each
    fill a whole node, so no placement (SPREAD or PACK) can put them together.
    """
    # Same loopback settings as the `ray_cluster` fixture and launch/cluster.py, set before Ray is
    # imported; every node process started below inherits them.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "another Ray is connected in this process; run this test first"
    # Ray reads that variable once, when first imported. If something imported Ray before this
    # fixture, the driver would resolve the head's 127.0.0.1 address to the machine's interface
    # address and never reach the loopback-bound GCS; apply the setting to this process too.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # only the node processes this fixture started


@pytest.mark.timeout(420)  # a hung connection fails here instead of stalling the suite
def test_roles_on_different_nodes_sync_across(three_nodes, tiny_model_dir, task_data, tmp_path):
    import ray

    from launch.roles import start_roles

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 3
    cfg = _config(task_data, tmp_path, ["sampling.prompts_per_step=4", "resources.colocate=false"])
    roles = start_roles(cfg, str(tiny_model_dir))
    try:
        learner_node = roles.learner.call_all(lambda a: a.ready.remote())[0].node_id
        engine_node = _engine_infos(roles)[0].node_id
        assert learner_node in nodes and engine_node in nodes
        assert learner_node != engine_node, "learner and engine share a node"
        rows, infos, d0, d1 = _drive(cfg, roles, task_data, tmp_path)
    finally:
        roles.shutdown()
    assert d0 != d1, "policy parameters did not change"
    _finite(rows)
    assert [i[0].policy_version for i in infos] == [1, 2]
    assert infos[-1][0].node_id == engine_node  # the engine was not restarted elsewhere
    # Step 2 sampled with the weights that crossed nodes after step 1.
    assert rows[1]["learner/mismatch_abs_max"] < LOGPROB_TOL, rows[1]


# --------------------------------------------------------------------- A: two engines, one node


@pytest.mark.timeout(420)
def test_two_engines_share_every_step(ray_cluster, tiny_model_dir, task_data, tmp_path):
    import pyarrow.parquet as pq

    from launch.roles import start_roles

    B = 8
    cfg = _config(task_data, tmp_path, [f"sampling.prompts_per_step={B}", "rollout.num_engines=2"])
    roles = start_roles(cfg, str(tiny_model_dir))
    try:
        rows, infos, d0, d1 = _drive(cfg, roles, task_data, tmp_path)
    finally:
        roles.shutdown()
    assert d0 != d1, "policy parameters did not change"
    _finite(rows)
    for row in rows:
        split = [row["rollout/engine_0_prompts"], row["rollout/engine_1_prompts"]]
        assert all(n > 0 for n in split), f"an engine generated nothing this step: {split}"
        assert sum(split) == row["sampling/generated_groups"] == B
    # Counted inside each engine too: its own total equals what the driver logged for it.
    for i in range(2):
        assert infos[-1][i].prompts_generated == sum(r[f"rollout/engine_{i}_prompts"] for r in rows)
    assert [[e.policy_version for e in step] for step in infos] == [[1, 1], [2, 2]]
    # Both engines sampled step 2 with the weights synced after step 1, and agree with the learner.
    step2 = pq.read_table(tmp_path / "rollouts" / "step_000002.parquet").to_pylist()
    assert len(step2) == B * G and {r["policy_version"] for r in step2} == {1}
    assert rows[1]["learner/mismatch_abs_max"] < LOGPROB_TOL, rows[1]
