"""GPU plans that cannot start are rejected before any actor starts, each with one line naming the
field (rlsys/config/validation.py `_check_device_plan`); the weight-sync backend follows
learner.backend; each cluster recipe fits its declared cluster, and the start-time check
(rlsys/distributed/placement.py `check_plan_against_cluster`, fed `ray.nodes()`) names what a
real cluster lacks. No Ray runs here: the start-time check reads the nodes of a cluster through
the real `ray.nodes`, replaced for the test."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlsys.config import ConfigError, load_config, weight_sync_backend
from rlsys.distributed.placement import (PlacementError, check_placement, check_plan_against_cluster, place_roles,
                                         plan_roles, role_groups)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(ROOT.glob("configs/cluster/*.yaml"))
R7B = ROOT / "configs/cluster/qwen2_5_vl_7b_grpo.yaml"
GPU = ["resources.gpus_per_learner=1", "learner.backend=nccl"]  # learner ranks on GPUs


def _one_line_error(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ rejected plans, one line each

REJECTED = [
    # tensor parallel without a GPU layout for the engines, on a GPU plan
    pytest.param(["rollout.tensor_parallel_size=2", *GPU],
                 "rollout.tensor_parallel_size = 2: the learner is on GPUs but resources.gpus_per_engine = 0 "
                 "gives the engines none; set resources.gpus_per_engine = 2", id="tp-without-engine-gpus"),
    # a TP engine bundle whose GPUs are not its TP size (the existing rule, kept)
    pytest.param(["rollout.tensor_parallel_size=2", "resources.gpus_per_engine=1", *GPU],
                 "resources.gpus_per_engine = 1.0: must equal rollout.tensor_parallel_size (2) on GPUs",
                 id="tp-not-the-bundle-gpus"),
    # tensor parallel on CPU with fewer CPUs than workers
    pytest.param(["rollout.tensor_parallel_size=2", "resources.cpus_per_engine=1"],
                 "rollout.tensor_parallel_size = 2 on CPU: each tensor-parallel worker is a process on a CPU of "
                 "its own, resources.cpus_per_engine = 1 gives the engine fewer; set resources.cpus_per_engine >= 2",
                 id="cpu-tp-too-few-cpus"),
    # fractional / surplus GPUs for NCCL ranks (auto resolves to NCCL when the ranks have GPUs)
    pytest.param(["resources.gpus_per_learner=0.5", "resources.gpus_per_engine=1"],
                 "resources.gpus_per_learner = 0.5: NCCL learner and critic ranks take exactly 1 GPU each "
                 "(NCCL cannot put two ranks of one group on one GPU)", id="fractional-nccl-rank"),
    pytest.param(["resources.gpus_per_learner=0.25", "learner.backend=nccl", "learner.weight_sync=object_store"],
                 "resources.gpus_per_learner = 0.25: NCCL learner and critic ranks take exactly 1 GPU each",
                 id="fractional-explicit-nccl"),
    pytest.param(["resources.gpus_per_learner=2", "resources.gpus_per_engine=1"],
                 "resources.gpus_per_learner = 2: NCCL learner and critic ranks take exactly 1 GPU each (a rank "
                 "computes on one GPU (cuda:0), the other 1 would sit idle)", id="two-gpus-per-rank"),
    pytest.param(["resources.gpus_per_learner=1", "learner.backend=gloo"],
                 "learner.backend = 'gloo' with resources.gpus_per_learner = 1: gloo ranks train on CPU and their "
                 "GPUs would sit idle", id="gloo-ranks-holding-gpus"),
    # a KL reference without a GPU on a GPU plan
    pytest.param(["algorithm.kl_coef=0.05", "resources.gpus_per_engine=1", *GPU],
                 "resources.gpus_reference = 0: algorithm.kl_coef = 0.05 needs a reference model and the learner "
                 "ranks are on GPUs (resources.gpus_per_learner = 1)", id="cpu-reference-on-gpu-plan"),
    # the sync backend follows learner.backend: NCCL cannot reach engines without GPUs
    pytest.param(GPU, "learner.weight_sync = 'collective': weight sync follows learner.backend = 'nccl' and the "
                 "engines have no GPU (resources.gpus_per_engine = 0)", id="nccl-sync-to-cpu-engines"),
]


@pytest.mark.parametrize("overrides, message", REJECTED)
def test_impossible_plans_fail_in_one_line(overrides, message):
    msg = _one_line_error(overrides)
    assert msg.startswith(message), msg


@pytest.mark.parametrize("overrides, message", REJECTED[::4])
def test_rlsys_train_stops_with_exit_2_and_one_line_before_anything_starts(overrides, message, tmp_path, capsys):
    from launch.cli import main

    assert main(["train", *overrides, f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlsys: config error: {err[0].removeprefix('rlsys: config error: ')}"] and message in err[0], err
    assert not (tmp_path / "runs").exists()  # no run dir: nothing was built or started


def test_plans_that_can_work_are_accepted():
    # tensor parallel on CPU (vLLM's multiprocessing executor in one actor) with a CPU per worker
    load_config(None, ["rollout.tensor_parallel_size=2", "resources.cpus_per_engine=2"])
    # a GPU plan: TP engines with their GPUs, whole-GPU NCCL ranks, the reference on a GPU
    load_config(None, ["rollout.tensor_parallel_size=2", "resources.gpus_per_engine=2", "algorithm.kl_coef=0.05",
                       "resources.gpus_reference=1", *GPU])
    # a reference may share a GPU fractionally (no NCCL group of its own)
    load_config(None, ["resources.gpus_per_engine=1", "algorithm.kl_coef=0.05", "resources.gpus_reference=0.5", *GPU])
    # NCCL learner syncing CPU engines through the object store
    load_config(None, [*GPU, "learner.weight_sync=object_store"])
    # auto with a GPU learner and CPU engines: the sync group is gloo (auto picks what both sides can use)
    load_config(None, ["resources.gpus_per_learner=1"])


@pytest.mark.parametrize("overrides, backend", [
    ([], "gloo"),  # the CPU default
    (["resources.gpus_per_learner=1", "resources.gpus_per_engine=1"], "nccl"),  # auto, both sides on GPUs
    (["resources.gpus_per_learner=1"], "gloo"),  # auto, CPU engines
    (["resources.gpus_per_learner=1", "resources.gpus_per_engine=1", "learner.backend=nccl"], "nccl"),
    (["learner.backend=gloo"], "gloo"),
    (["learner.backend=gloo", "resources.gpus_per_engine=1"], "gloo"),  # explicit gloo wins over GPU engines
])
def test_weight_sync_backend_follows_learner_backend(overrides, backend):
    assert weight_sync_backend(load_config(None, overrides)) == backend


def test_the_launcher_opens_the_sync_group_with_that_backend(monkeypatch):
    """launch/roles.py passes weight_sync_backend(cfg) to every member of the group, and the
    config's bucket size to the sender."""
    import launch.roles as roles

    calls = []

    class _Remote:
        def __init__(self, name):
            self.name = name

        def remote(self, *args):
            calls.append((self.name, args))
            return ("host", 1) if self.name == "address" else None

    class _Actor:
        weight_sync_address = _Remote("address")
        init_weight_sync = _Remote("sender")
        open_weight_sync = _Remote("receiver")

    import ray

    monkeypatch.setattr(ray, "get", lambda refs: refs)  # the calls' replies are the values here
    # Unvalidated on purpose: GPUs on both sides with an explicit gloo (validation rejects the
    # idle learner GPUs); the group still follows learner.backend, not the GPUs.
    from rlsys.config import RunConfig

    cfg = RunConfig()
    cfg.learner.backend, cfg.resources.gpus_per_learner, cfg.resources.gpus_per_engine = "gloo", 1.0, 1.0
    cfg.learner.sync_bucket_mb = 3.5
    roles._open_weight_sync(cfg, [_Actor()], [_Actor(), _Actor()])
    assert [c[1][3:] for c in calls if c[0] == "sender"] == [("gloo", 3.5)]  # bucket size from the config
    assert [c[1][4] for c in calls if c[0] == "receiver"] == ["gloo", "gloo"]
    calls.clear()
    cfg.learner.backend = "auto"
    roles._open_weight_sync(cfg, [_Actor()], [_Actor()])
    assert [c[1][3] for c in calls if c[0] == "sender"] == ["nccl"]


# ------------------------------------------------------------------ recipes and real clusters

def _nodes(count: int, gpus: float, cpus: float = 96.0) -> list[dict[str, float]]:
    """`count` nodes of `gpus` GPUs; 96 CPUs is an assumption (a common 8-GPU node): the recipes
    declare GPUs per node only."""
    return [{"CPU": cpus, "GPU": gpus, "memory": 1e12}] * count


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_recipe_fits_its_declared_cluster(path):
    cfg = load_config(path)  # validation packs the GPU plan onto resources.nodes x gpus_per_node
    r = cfg.resources
    assert r.nodes and r.gpus_per_node and not r.colocate
    assert check_plan_against_cluster(cfg, _nodes(r.nodes, r.gpus_per_node)) is None
    # one node fewer than declared is named at start, before any actor
    msg = check_plan_against_cluster(cfg, _nodes(r.nodes - 1, r.gpus_per_node))
    assert msg.startswith(f"the cluster is smaller than the recipe: resources.nodes = {r.nodes} x "
                          f"resources.gpus_per_node = {r.gpus_per_node}") and "\n" not in msg, msg


def test_the_7b_recipe_validates_and_uses_all_32_gpus():
    cfg = load_config(R7B)
    plan = plan_roles(cfg, needs_reference=False)
    assert [plan.bundles[i] for i in plan.engines] == [{"CPU": 4, "GPU": 2}] * 8
    assert [plan.bundles[i] for i in plan.learners] == [{"CPU": 4, "GPU": 1}] * 16
    assert sum(b.get("GPU", 0) for b in plan.bundles) == 32 == cfg.resources.nodes * cfg.resources.gpus_per_node
    assert weight_sync_backend(cfg) == "nccl"
    assert check_plan_against_cluster(cfg, _nodes(4, 8)) is None
    # a larger cluster is fine; extra CPU-only nodes (a head) do not count as GPU nodes
    assert check_plan_against_cluster(cfg, [{"CPU": 8.0}] + _nodes(5, 8)) is None


def test_what_a_real_cluster_lacks_is_named_in_one_line():
    cfg = load_config(R7B)
    # four nodes, one with half its GPUs: the declared shape is missing a node of 8 GPUs
    msg = check_plan_against_cluster(cfg, [{"CPU": 8.0}] + _nodes(3, 8) + _nodes(1, 4))
    assert msg == ("the cluster is smaller than the recipe: resources.nodes = 4 x resources.gpus_per_node = 8 "
                   "(4 x 8 GPUs), the cluster has 3 nodes with >= 8 GPUs (GPUs per alive node: 8, 8, 8, 4, 0); "
                   "missing 1 node of 8 GPUs"), msg
    # the declared nodes are there but have too few CPUs: the totals say so, per role
    msg = check_plan_against_cluster(cfg, _nodes(4, 8, cpus=16))
    assert msg.startswith("the cluster cannot host the roles: needs 96.5 CPU, cluster has 64 CPU: "
                          "8 engines 32 CPU, 16 learners 64 CPU, reward 0.5 CPU"), msg


def test_bundles_that_fit_in_total_but_not_per_node_are_named():
    # 3 engines of 2 GPUs on 2 nodes of 3 GPUs: 6 GPUs in total, but each node holds one engine
    cfg = load_config(None, ["rollout.num_engines=3", "rollout.tensor_parallel_size=2", "resources.gpus_per_engine=2"])
    nodes = [{"CPU": 4.0, "GPU": 3.0}, {"CPU": 4.0, "GPU": 3.0}]
    msg = check_plan_against_cluster(cfg, nodes)
    assert msg == ("the cluster cannot host the roles: each bundle must fit on one node and after the larger ones "
                   "no node has room for one engine (0.5 CPU + 2 GPU); nodes: 2 x (4 CPU + 3 GPU)"), msg
    assert check_plan_against_cluster(cfg, nodes + [{"CPU": 1.0, "GPU": 2.0}]) is None


def test_the_start_time_check_runs_on_ray_nodes_before_any_group(monkeypatch):
    """check_placement (what place_roles and so Starter call first) feeds the alive nodes of
    `ray.nodes()` to check_plan_against_cluster; nothing is reserved when it fails, and when it
    passes each role's group is reserved. No Ray runs: the real `ray.nodes` is replaced by the
    nodes of a cluster (3 alive nodes of 8 GPUs and a dead one), the reservation by a record."""
    import ray

    from rlsys.distributed import placement

    alive = {"Alive": True, "Resources": {"CPU": 96.0, "GPU": 8.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [alive] * 3 + [{**alive, "Alive": False}])
    monkeypatch.setattr(placement, "_autoscaler_max", lambda: None)  # a fixed cluster
    reserved = []
    monkeypatch.setattr(placement, "_reserve", lambda bundles, strategy, timeout_s, what:
                        reserved.append((bundles, strategy, what)) or what)
    monkeypatch.delenv("RLSYS_WAIT_FOR_RESOURCES", raising=False)
    cfg = load_config(R7B)
    plan = plan_roles(cfg, needs_reference=False)
    with pytest.raises(PlacementError, match=r"^the cluster is smaller than the recipe: .*the cluster has 3 nodes"):
        place_roles(plan, cfg.resources.colocate, cfg)
    # without the recipe (rlsys rollout / sft start their own plans): only the plan is checked
    with pytest.raises(PlacementError, match=r"^the cluster cannot host the roles: needs 32 GPU, cluster has 24 GPU"):
        check_placement(plan)
    assert reserved == []
    # a cluster that holds it passes the check, and then each role's group is reserved
    monkeypatch.setattr(ray, "nodes", lambda: [alive] * 4)
    check_placement(plan, cfg)
    assert cfg.resources.colocate is False
    placed = place_roles(plan, cfg.resources.colocate, cfg)
    expected = [([plan.bundles[i] for i in idx], "PACK", f"the {role} group") for role, idx in role_groups(plan)]
    assert reserved == expected and [g for _, g in placed.groups] == [what for *_, what in expected]


# ------------------------------------------------------------------ one placement group per role

def test_each_role_gets_its_own_group_biggest_talkers_first(tmp_path):
    cfg = load_config(None, ["learner.num_ranks=2", "rollout.num_engines=2", "algorithm.kl_coef=0.1",
                             "algorithm.name=ppo", "critic.enabled=true", "algorithm.advantage_estimator=gae"])
    plan = plan_roles(cfg, needs_reference=True)
    groups = role_groups(plan)
    assert [role for role, _ in groups] == ["learner", "critic", "engine", "reference", "reward"]
    assert dict(groups) == {"learner": plan.learners, "critic": plan.critics, "engine": plan.engines,
                            "reference": [plan.reference], "reward": [plan.reward]}
    assert sorted(i for _, idx in groups for i in idx) == list(range(len(plan.bundles)))  # each bundle once
