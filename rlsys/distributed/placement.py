"""Placement of every role on the cluster: bundles per role, in placement groups.

On a GPU cluster each engine bundle holds `tensor_parallel_size` GPUs and each learner rank one.
`resources.colocate: true` (the CPU default) puts every bundle in one PACK placement group;
`false` gives each role a PACK placement group of its own, so a role's ranks sit on as few nodes
as possible (the ZeRO-3 collectives of the learner ranks stay inside a node when they fit) while
the roles may land on different nodes. On CPU every role takes a fraction of the node's CPUs.

Before any group is made, the plan is checked against the connected cluster's nodes
(`check_plan_against_cluster`, also what the unit tests run on each recipe's declared shape).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlsys.config import RunConfig, first_fit


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


def _declared_shape_missing(cfg: RunConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why `nodes` lack the cluster the recipe declares (resources.nodes nodes with
    resources.gpus_per_node GPUs each), in one line, or None (also when nothing is declared)."""
    r = cfg.resources
    if r.nodes is None:
        return None
    want = float(r.gpus_per_node or 0)
    gpus = sorted((n.get("GPU", 0.0) for n in nodes), reverse=True)
    have = sum(1 for g in gpus if g + 1e-9 >= want)
    if have >= r.nodes:
        return None
    if want:
        per_node = ", ".join(f"{g:g}" for g in gpus) or "none"
        return (f"the cluster is smaller than the recipe: resources.nodes = {r.nodes} x resources.gpus_per_node = "
                f"{r.gpus_per_node} ({r.nodes} x {r.gpus_per_node} GPUs), the cluster has {have} "
                f"node{'s' if have != 1 else ''} with >= {want:g} GPUs (GPUs per alive node: {per_node}); "
                f"missing {r.nodes - have} node{'s' if r.nodes - have != 1 else ''} of {want:g} GPUs")
    return (f"the cluster is smaller than the recipe: resources.nodes = {r.nodes}, the cluster has {have} alive "
            f"node{'s' if have != 1 else ''}; missing {r.nodes - have}")


def _packing_missing(plan: RolePlan, nodes: list[dict[str, float]]) -> str | None:
    """Why the bundles, each on one node, cannot all be packed onto `nodes` (first-fit
    decreasing), in one line, or None."""
    if not nodes:
        return None
    keys = sorted({k for b in plan.bundles for k in b})
    bundles = [{k: v for k, v in b.items() if k in keys} for b in plan.bundles]
    stuck = first_fit(bundles, [{k: n.get(k, 0.0) for k in keys} for n in nodes])
    if stuck is None:
        return None
    need = " + ".join(_amount(v, k) for k, v in bundles[stuck].items())
    kinds: dict[str, int] = {}
    for n in nodes:
        text = " + ".join(_amount(n.get(k, 0.0), k) for k in keys)
        kinds[text] = kinds.get(text, 0) + 1
    sizes = "; ".join(f"{count} x ({text})" for text, count in kinds.items())
    return (f"the cluster cannot host the roles: each bundle must fit on one node and after the larger ones "
            f"no node has room for one {bundle_roles(plan)[stuck]} ({need}); nodes: {sizes}")


def check_plan_against_cluster(cfg: RunConfig | None, nodes: list[dict[str, float]], plan: RolePlan | None = None,
                               autoscaler_max: dict[str, float] | None = None) -> str | None:
    """Why a cluster whose alive nodes have `nodes` (each node's total resources, as
    `ray.nodes()` reports them) cannot run `plan` (default: the training roles of `cfg`), in
    one line, or None. With `cfg`, the recipe's declared node count is compared too
    (resources.nodes x gpus_per_node). The start-time check runs this on the real nodes; the
    unit tests run it on each recipe's declared shape. With `autoscaler_max` (the most an
    autoscaler may grow the cluster to) only the totals are checked against that."""
    if plan is None:
        plan = plan_roles(cfg, needs_reference=cfg.algorithm.kl_coef > 0)
    if autoscaler_max is not None:
        return unmet_placement(plan, nodes, autoscaler_max)
    return ((_declared_shape_missing(cfg, nodes) if cfg is not None else None)
            or unmet_placement(plan, nodes) or _packing_missing(plan, nodes))


def check_placement(plan: RolePlan, cfg: RunConfig | None = None) -> None:
    """Raises PlacementError at once when the connected cluster can never host `plan` (resources
    of its alive nodes, or the autoscaler's maximum) or, with `cfg`, lacks the nodes the recipe
    declares; skipped with RLSYS_WAIT_FOR_RESOURCES=1."""
    import os

    import ray

    if os.environ.get(WAIT_ENV, "").lower() in ("1", "true", "yes"):
        return
    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    reason = check_plan_against_cluster(cfg, nodes, plan, _autoscaler_max())
    if reason:
        raise PlacementError(f"{reason} (lower resources.cpus_* / gpus_*, or start the cluster with more; "
                             f"{WAIT_ENV}=1 waits for an autoscaler instead)")


def create_placement_group(plan: RolePlan, colocate: bool, timeout_s: float = 300.0):
    """Reserves the bundles in one placement group (PACK when `colocate`, else SPREAD). Fails at
    once (PlacementError) when the cluster can never host them (check_placement); otherwise
    waits up to `timeout_s` for resources in use to free up. Roles are placed with
    `place_roles`; this is the single-group form."""
    check_placement(plan)
    return _reserve(plan.bundles, "PACK" if colocate else "SPREAD", timeout_s, "the requested roles")


def _reserve(bundles: list[dict[str, float]], strategy: str, timeout_s: float, what: str):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(f"the cluster cannot host {what} within {timeout_s:.0f}s: "
                             f"bundles {bundles}; available {ray.available_resources()}")
    return pg


# Order in which per-role groups are reserved: the roles whose ranks talk to each other most
# (and need the most GPUs) first, so they get whole nodes before the small roles take room.
_ROLE_ORDER = ("learner", "critic", "engine", "reference", "reward model", "reward")


def role_groups(plan: RolePlan) -> list[tuple[str, list[int]]]:
    """(role, its bundle indices) of each per-role placement group, in reservation order; each
    reward-model entry is a group of its own."""
    groups = [("learner", plan.learners), ("critic", plan.critics), ("engine", plan.engines),
              ("reference", [plan.reference] if plan.reference is not None else []),
              *[("reward model", replicas) for replicas in plan.reward_models],
              ("reward", [plan.reward] if plan.reward is not None else [])]
    groups = [(role, indices) for role, indices in groups if indices]
    return sorted(groups, key=lambda g: _ROLE_ORDER.index(g[0]))


@dataclass
class Placement:
    """The reserved placement groups of a plan: `slot(i)` is (group, index inside it) of the
    plan's bundle i; `groups` are (role, group) pairs ("all" for the one colocated group)."""

    groups: list[tuple[str, Any]]
    slots: list[tuple[Any, int]]

    def slot(self, bundle: int) -> tuple[Any, int]:
        return self.slots[bundle]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for _, pg in self.groups:
            remove_placement_group(pg)


def place_roles(plan: RolePlan, colocate: bool, cfg: RunConfig | None = None,
                timeout_s: float = 300.0) -> Placement:
    """Reserves the plan's bundles after the pre-check (check_placement; with `cfg`, also the
    recipe's declared nodes). colocate: one PACK group of every bundle, bundle i at index i (the
    single-node default). Otherwise one PACK group per role (role_groups), each reserved and
    ready before the next, so a role's ranks stay together."""
    check_placement(plan, cfg)
    if colocate:
        pg = _reserve(plan.bundles, "PACK", timeout_s, "the requested roles")
        return Placement([("all", pg)], [(pg, i) for i in range(len(plan.bundles))])
    slots: list[tuple[Any, int] | None] = [None] * len(plan.bundles)
    groups: list[tuple[str, Any]] = []
    try:
        for role, indices in role_groups(plan):
            pg = _reserve([plan.bundles[i] for i in indices], "PACK", timeout_s, f"the {role} group")
            groups.append((role, pg))
            for local, i in enumerate(indices):
                slots[i] = (pg, local)
    except BaseException:
        Placement(groups, []).remove()
        raise
    return Placement(groups, slots)


def release_placement(placement) -> None:
    """Removes a `Placement`'s groups, or one placement group."""
    if isinstance(placement, Placement):
        placement.remove()
        return
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(placement)


def bundle_options(pg, index: int, resources: dict[str, float]) -> dict:
    """ray.remote options placing an actor on bundle `index` with that bundle's resources."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": resources.get("CPU", 0),
        "num_gpus": resources.get("GPU", 0),
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index),
    }
