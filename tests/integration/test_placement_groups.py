"""One placement group per role on a simulated two-node cluster (`ray.cluster_utils.Cluster`,
every node on 127.0.0.1): with `resources.colocate: false` each role's bundles are in that role's
own PACK group, so the learner ranks of a two-node plan land on one node when they fit (a single
SPREAD group, the earlier placement, tends to split them; Ray's SPREAD is best effort, so that
is not asserted); the colocated default keeps one group with
bundle i at index i; a cluster smaller than the recipe's `resources.nodes` is refused at start,
in one line, before any group or actor exists.

No vLLM or DeepSpeed: `Starter` reserves the groups and builds the slots without starting an
actor; a tiny task in each slot reports the node it runs on.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_nodes():
    """Head and one worker, 2 CPUs each, on 127.0.0.1 (same loopback settings as test_scale.py)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "another Ray is connected in this process"
    mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # only the node processes this fixture started
        mp.undo()


def _cfg(*overrides):
    from rlsys.config import load_config

    # 2 learner ranks x 1 CPU fill one node; the engine (1 CPU) and the reward actor (0.5) the other.
    return load_config(None, ["learner.num_ranks=2", "resources.cpus_per_learner=1", "resources.cpus_per_engine=1",
                              "logging.wandb=disabled", *overrides])


def _node_of(slot) -> str:
    import ray

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    return ray.get(where.options(**{**slot.options(), "num_cpus": 0.01}).remote())


def _live_groups() -> int:
    import ray

    return sum(1 for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED")


def _bundle_nodes(pg) -> list[str]:
    import ray

    table = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    return [table[i] for i in sorted(table)]


@pytest.mark.timeout(300)
def test_each_role_in_its_own_group_and_the_learner_ranks_together(two_nodes):
    import ray

    from launch.roles import Starter
    from rlsys.distributed.placement import release_placement

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    starter = Starter(_cfg("resources.colocate=false"), "unused")  # reserves, starts no actor
    try:
        groups = dict(starter.placement.groups)
        assert sorted(groups) == ["engine", "learner", "reward"]
        assert len({id(pg) for pg in groups.values()}) == 3
        for role in ("engine", "learner", "reward"):
            # every slot of a role is in that role's group, at its index there
            assert [s.pg for s in starter.slots[role]] == [groups[role]] * len(starter.slots[role])
            assert [s.bundle for s in starter.slots[role]] == list(range(len(starter.slots[role])))
        learner_nodes = [_node_of(s) for s in starter.slots["learner"]]
        assert len(set(learner_nodes)) == 1, f"learner ranks split over nodes: {learner_nodes}"
        assert _bundle_nodes(groups["learner"]) == learner_nodes
        # the other roles take the other node (the learners fill theirs)
        assert _node_of(starter.slots["engine"][0]) != learner_nodes[0]
    finally:
        release_placement(starter.placement)
    assert _live_groups() == 0


@pytest.mark.timeout(300)
def test_the_colocated_default_keeps_one_group_with_the_plans_indices(two_nodes):
    from launch.roles import Starter
    from rlsys.distributed.placement import release_placement

    starter = Starter(_cfg(), "unused")
    try:
        ((name, pg),) = starter.placement.groups
        assert name == "all"
        plan = starter.plan
        for role, indices in (("engine", plan.engines), ("learner", plan.learners), ("reward", [plan.reward])):
            assert [(s.pg, s.bundle) for s in starter.slots[role]] == [(pg, i) for i in indices]
    finally:
        release_placement(starter.placement)


@pytest.mark.timeout(300)
def test_a_cluster_smaller_than_the_recipe_is_refused_before_any_group(two_nodes):
    from launch.roles import start_roles
    from rlsys.distributed.placement import PlacementError

    before = _live_groups()
    with pytest.raises(PlacementError) as err:
        start_roles(_cfg("resources.colocate=false", "resources.nodes=3"), "unused")
    msg = str(err.value)
    assert msg.startswith("the cluster is smaller than the recipe: resources.nodes = 3, the cluster has 2 alive "
                          "nodes; missing 1") and "\n" not in msg, msg
    assert _live_groups() == before  # refused before any group was reserved (so before any actor)
