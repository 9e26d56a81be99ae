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
    return plan


def create_placement_group(plan: RolePlan, colocate: bool, timeout_s: float = 300.0):
    """Reserves the bundles; raises with the unmet request if the cluster cannot host them."""
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(plan.bundles, strategy="PACK" if colocate else "SPREAD")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(f"the cluster cannot host the requested roles within {timeout_s:.0f}s: "
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
