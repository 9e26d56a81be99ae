"""Placement of every role on the cluster: one placement group, bundles per role.

On a GPU cluster each engine bundle holds `tensor_parallel_size` GPUs and each learner rank one;
SPREAD lets Ray put roles on different nodes, PACK keeps them together. On CPU every role takes a
fraction of the node's CPUs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlsys.config import RunConfig


@dataclass
class RolePlan:
    """Bundle indices of each role inside the placement group."""

    bundles: list[dict[str, float]] = field(default_factory=list)
    engines: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)
    critics: list[int] = field(default_factory=list)
    reference: int | None = None
    reward: int | None = None
    reward_models: list[list[int]] = field(default_factory=list)  # per model entry, per replica

    def add(self, resources: dict[str, float]) -> int:
        self.bundles.append({k: v for k, v in resources.items() if v > 0})
        return len(self.bundles) - 1


def plan_roles(cfg: RunConfig, needs_reference: bool, training: bool = True) -> RolePlan:
    """Bundles of every role; `training=False`: engines and the reward actor only (`rlsys rollout`)."""
    res = cfg.resources
    plan = RolePlan()
    for _ in range(cfg.rollout.num_engines):
        plan.engines.append(plan.add({"CPU": res.cpus_per_engine, "GPU": res.gpus_per_engine}))
    if not training:
        plan.reward = plan.add({"CPU": res.cpus_reward})
        return plan
    for _ in range(cfg.learner.num_ranks):
        plan.learners.append(plan.add({"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner}))
    if cfg.critic.enabled:
        for _ in range(cfg.critic.num_ranks):
            plan.critics.append(plan.add({"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner}))
    if needs_reference:
        plan.reference = plan.add({"CPU": res.cpus_reference, "GPU": res.gpus_reference})
    plan.reward = plan.add({"CPU": res.cpus_reward})
    for comp in cfg.reward.components:
        if comp.model is not None:
            plan.reward_models.append([plan.add({"CPU": comp.cpus, "GPU": comp.gpus}) for _ in range(comp.replicas)])
    return plan


def plan_learners(cfg: RunConfig) -> RolePlan:
    """The policy learner ranks alone (`rlsys sft`)."""
    res, plan = cfg.resources, RolePlan()
    for _ in range(cfg.learner.num_ranks):
        plan.learners.append(plan.add({"CPU": res.cpus_per_learner, "GPU": res.gpus_per_learner}))
    return plan


class PlacementError(RuntimeError):
    """The cluster cannot host the roles' bundles; the message is one line."""


# The env var that turns the pre-check off for a cluster whose autoscaler Ray does not report
# (the pre-check trusts the autoscaler config in the GCS: KubeRay, autoscaler v2).
WAIT_ENV = "RLSYS_WAIT_FOR_RESOURCES"


def bundle_roles(plan: RolePlan) -> list[str]:
    """The role of each bundle, in bundle order."""
    names = [""] * len(plan.bundles)
    for role, indices in (("engine", plan.engines), ("learner", plan.learners), ("critic", plan.critics),
                          ("reference", [plan.reference]), ("reward", [plan.reward])):
        for i in indices:
            if i is not None:
                names[i] = role
    for replicas in plan.reward_models:
        for i in replicas:
            names[i] = "reward model"
    return names


def _amount(value: float, key: str) -> str:
    return f"{value:g} {key}"


def unmet_placement(plan: RolePlan, nodes: list[dict[str, float]],
                    autoscaler_max: dict[str, float] | None = None) -> str | None:
    """Why `nodes` (each node's total resources) can never host `plan`, in one line, or None.

    With `autoscaler_max` (the most the autoscaler may grow the cluster to, per resource) the
    totals are checked against that instead, and a bundle bigger than every current node is left
    to the autoscaler."""
    roles = bundle_roles(plan)
    need: dict[str, float] = {}
    for bundle in plan.bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    have = dict(autoscaler_max) if autoscaler_max is not None else {}
    if autoscaler_max is None:
        for node in nodes:
            for key, value in node.items():
                have[key] = have.get(key, 0.0) + value
    short = [k for k in need if need[k] > have.get(k, 0.0) + 1e-9]
    if short:
        per_role: dict[str, list] = {}
        for role, bundle in zip(roles, plan.bundles):
            entry = per_role.setdefault(role, [0, {}])
            entry[0] += 1
            for key in short:
                entry[1][key] = entry[1].get(key, 0.0) + bundle.get(key, 0.0)
        parts = []
        for role, (count, amounts) in per_role.items():
            text = " + ".join(_amount(v, k) for k, v in amounts.items() if v > 0)
            if text:
                parts.append(f"{role} {text}" if count == 1 else f"{count} {role}s {text}")
        where = "the autoscaler's maximum is" if autoscaler_max is not None else "cluster has"
        return (f"the cluster cannot host the roles: needs {' + '.join(_amount(need[k], k) for k in short)}, "
                f"{where} {' + '.join(_amount(have.get(k, 0.0), k) for k in short)}: {', '.join(parts)}")
    if autoscaler_max is not None or not nodes:
        return None
    for role, bundle in zip(roles, plan.bundles):
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in nodes):
            largest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in bundle))
            return (f"the cluster cannot host the roles: one {role} needs "
                    f"{' + '.join(_amount(v, k) for k, v in bundle.items())} on one node, the largest node has "
                    f"{' + '.join(_amount(largest.get(k, 0.0), k) for k in bundle)}")
    return None


def _autoscaler_max() -> dict[str, float] | None:
    """The most resources the cluster's autoscaler may provide, from the cluster config it
    publishes in the GCS (None: no autoscaler config, a fixed cluster)."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # an older Ray, or no such record: treat the cluster as fixed
        return None
    return {k: float(v) for k, v in found.items()} if found else None


def check_placement(plan: RolePlan) -> None:
    """Raises PlacementError at once when the connected cluster can never host `plan` (resources
    of its alive nodes, or the autoscaler's maximum); skipped with RLSYS_WAIT_FOR_RESOURCES=1."""
    import os

    import ray

    if os.environ.get(WAIT_ENV, "").lower() in ("1", "true", "yes"):
        return
    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    reason = unmet_placement(plan, nodes, _autoscaler_max())
    if reason:
        raise PlacementError(f"{reason} (lower resources.cpus_* / gpus_*, or start the cluster with more; "
                             f"{WAIT_ENV}=1 waits for an autoscaler instead)")


def create_placement_group(plan: RolePlan, colocate: bool, timeout_s: float = 300.0):
    """Reserves the bundles. Fails at once (PlacementError) when the cluster can never host them
    (check_placement); otherwise waits up to `timeout_s` for resources in use to free up."""
    import ray
    from ray.util.placement_group import placement_group

    check_placement(plan)
    pg = placement_group(plan.bundles, strategy="PACK" if colocate else "SPREAD")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise PlacementError(f"the cluster cannot host the requested roles within {timeout_s:.0f}s: "
                             f"bundles {plan.bundles}; available {ray.available_resources()}")
    return pg


def bundle_options(pg, index: int, resources: dict[str, float]) -> dict:
    """ray.remote options placing an actor on bundle `index` with that bundle's resources."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": resources.get("CPU", 0),
        "num_gpus": resources.get("GPU", 0),
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index),
    }
