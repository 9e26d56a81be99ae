"""Starting roles: the actor classes of `actors/` placed in placement-group bundles, each built
from its spec (rlsys/specs.py). The only place that constructs actors; `start_role` starts one
role and is what a restart calls again."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from actors.critic import CriticActor
from actors.judge import JudgeActor
from actors.learner import LearnerActor
from actors.reference import ReferenceActor
from actors.reward import RewardActor
from actors.reward_model import ScalarRMActor
from actors.rm_learner import RMLearnerActor
from actors.rollout import RolloutActor
from launch.cluster import runtime_env_vars
from rlsys.config import RunConfig
from rlsys.config import weight_sync_backend
from rlsys.distributed.placement import (Placement, bundle_options, place_roles, plan_learners, plan_roles,
                                         release_placement)
from rlsys.distributed.recovery import Recovery
from rlsys.distributed.clients import (CriticGroup, LearnerGroup, ReferenceClient, RewardClient, RewardModelPool,
                                      RolloutPool)
from rlsys.distributed.roles import GenerationRoles, Roles
from rlsys.specs import (CriticSpec, DistRank, EngineSpec, JudgeSpec, LearnerSpec, ReferenceSpec, RewardSpec,
                         RMTrainerSpec, ScalarRMSpec, role_specs)

# Which actor class serves which spec; a data-parallel role's actors also take a DistRank.
_ACTORS = {EngineSpec: RolloutActor, RewardSpec: RewardActor, ReferenceSpec: ReferenceActor,
           LearnerSpec: LearnerActor, CriticSpec: CriticActor, ScalarRMSpec: ScalarRMActor, JudgeSpec: JudgeActor,
           RMTrainerSpec: RMLearnerActor}
_DATA_PARALLEL = (LearnerSpec, CriticSpec, RMTrainerSpec)


@dataclass(frozen=True)
class Slot:
    """Where one actor runs: bundle `bundle` of placement group `pg`, with that bundle's
    resources, and the environment every actor of the run gets."""

    pg: Any
    bundle: int
    resources: dict
    env: dict

    def options(self) -> dict:
        return {**bundle_options(self.pg, self.bundle, self.resources), "runtime_env": {"env_vars": self.env}}


def _slots(placement: Placement, plan, env: dict):
    """-> slots(indices): the Slots of the plan's bundles `indices` (each in its role's group)."""
    def slots(indices: list) -> list[Slot]:
        return [Slot(*placement.slot(i), plan.bundles[i], env) for i in indices]

    return slots


def rm_role(column: str) -> str:
    """The restartable role name of a reward model's replicas (fault counts are per role)."""
    return f"reward_model/{column}"


def _rendezvous(slot: Slot) -> tuple[str, int]:
    """(node ip, free port) on the node of `slot`, where rank 0 of a group will listen."""
    import ray

    from actors import free_port, node_ip

    @ray.remote
    def address():
        host = node_ip()
        return host, free_port(host)

    return ray.get(address.options(**{**bundle_options(slot.pg, slot.bundle, slot.resources),
                                       "num_cpus": 0, "num_gpus": 0}).remote())


def start_role(spec, slots: list[Slot]) -> list:
    """The actors of one role, one per slot, built from `spec`. A data-parallel role (learner,
    critic) gets its ranks in slot order and a rendezvous on slot 0's node. Returns at once;
    the actors load in the background."""
    import ray

    actor_cls = ray.remote(_ACTORS[type(spec)])
    if not isinstance(spec, _DATA_PARALLEL):
        return [actor_cls.options(**slot.options()).remote(spec) for slot in slots]
    host, port = _rendezvous(slots[0])
    return [actor_cls.options(**slot.options()).remote(spec, DistRank(rank, len(slots), host, port))
            for rank, slot in enumerate(slots)]


def _open_weight_sync(cfg: RunConfig, learners: list, engines: list) -> None:
    """The learner -> engines broadcast group (collective weight sync only)."""
    import ray

    if cfg.learner.weight_sync != "collective":
        return
    backend = weight_sync_backend(cfg)  # follows learner.backend (rlsys/config/validation.py)
    host, port = ray.get(learners[0].weight_sync_address.remote())
    # Every vLLM worker is a member: engine i's TP worker t is rank 1 + i * TP + t.
    tp = cfg.rollout.tensor_parallel_size
    world = 1 + tp * len(engines)
    refs = [a.init_weight_sync.remote(host, port, world, backend, cfg.learner.sync_bucket_mb) for a in learners]
    refs += [e.open_weight_sync.remote(host, port, world, 1 + i * tp, backend) for i, e in enumerate(engines)]
    ray.get(refs)


def _ready(actors: list) -> list:
    """Wait until every actor has finished loading; -> the actors."""
    import ray

    ray.get([a.__ray_ready__.remote() for a in actors])
    return actors


class Starter:
    """Starts each role of a run in its bundles, the first time and after a death
    (rlsys/distributed/recovery.py: RoleStarter)."""

    def __init__(self, cfg: RunConfig, model_path: str):
        self.cfg = cfg
        self.specs = role_specs(cfg, model_path)
        self.plan = plan_roles(cfg, needs_reference=self.specs.reference is not None)
        # The plan is checked against the connected cluster (and the recipe's declared nodes)
        # before any group is reserved or actor started.
        self.placement = place_roles(self.plan, cfg.resources.colocate, cfg)
        slot = _slots(self.placement, self.plan, runtime_env_vars(cfg))
        self.slots = {"engine": slot(self.plan.engines), "reward": slot([self.plan.reward]),
                      "learner": slot(self.plan.learners), "critic": slot(self.plan.critics),
                      "reference": slot([self.plan.reference]) if self.specs.reference else []}
        self.role_spec = {"engine": self.specs.engine, "reward": self.specs.reward, "learner": self.specs.learner,
                          "critic": self.specs.critic, "reference": self.specs.reference}
        # Reward models: role "reward_model/<column>", one slot per replica.
        for rm, replicas in zip(self.specs.reward_models, self.plan.reward_models):
            self.slots[rm_role(rm.name)] = slot(replicas)
            self.role_spec[rm_role(rm.name)] = rm.spec

    def start(self, role: str, slots: list[Slot]) -> list:
        return start_role(self.role_spec[role], slots) if slots and self.role_spec[role] else []

    def start_reward_models(self) -> list[RewardModelPool]:
        """Every reward model's replicas (not yet ready), one pool per model entry."""
        return [RewardModelPool(rm.name, rm.weight, rm.normalize, self.start(rm_role(rm.name), self.slots[rm_role(rm.name)]))
                for rm in self.specs.reward_models]

    def restart(self, role: str, index: int) -> list:
        if role == "learner":  # the whole group: ZeRO shards and the rendezvous are shared
            return _ready(self.start("learner", self.slots["learner"])) + _ready(self.start("critic", self.slots["critic"]))
        return _ready(self.start(role, [self.slots[role][index]]))

    def open_weight_sync(self, learners: list, engines: list) -> None:
        _open_weight_sync(self.cfg, learners, engines)


def start_roles(cfg: RunConfig, model_path: str) -> Roles:
    """Every role of a training run placed (one PACK group, or one per role: place_roles), ready, with weight sync open, and
    restartable within `fault.max_restarts`."""
    starter = Starter(cfg, model_path)
    engines = starter.start("engine", starter.slots["engine"])
    (reward,) = starter.start("reward", starter.slots["reward"])
    learners = starter.start("learner", starter.slots["learner"])
    critics = starter.start("critic", starter.slots["critic"]) or None
    reference = (starter.start("reference", starter.slots["reference"]) or [None])[0]
    reward_models = starter.start_reward_models()
    _ready(learners + (critics or []) + ([reference] if reference else []) + engines + [reward]
           + [a for pool in reward_models for a in pool.actors])
    _open_weight_sync(cfg, learners, engines)
    specs = starter.specs
    return Roles(cfg=cfg, rollout=RolloutPool(engines), reward=RewardClient(reward), reward_models=reward_models,
                 reference=ReferenceClient(reference) if reference else None, learner=LearnerGroup(learners),
                 critic=CriticGroup(critics) if critics else None, train_sampling=specs.train_sampling,
                 eval_sampling=specs.eval_sampling, placement_group=starter.placement,
                 recovery=Recovery(starter, cfg.fault.max_restarts))


def start_generation(cfg: RunConfig, model_path: str) -> GenerationRoles:
    """Engines and the reward actor, no learner (`rlsys rollout`)."""
    import ray

    specs = role_specs(cfg, model_path)
    plan = plan_roles(cfg, needs_reference=False, training=False)
    placement = place_roles(plan, cfg.resources.colocate)
    slot = _slots(placement, plan, runtime_env_vars(cfg))
    engines = start_role(specs.engine, slot(plan.engines))
    (reward,) = start_role(specs.reward, slot([plan.reward]))
    ray.get([e.policy_version.remote() for e in engines])
    return GenerationRoles(RolloutPool(engines), RewardClient(reward), specs.train_sampling, placement)


def start_learners(cfg: RunConfig, spec: LearnerSpec | RMTrainerSpec) -> tuple[LearnerGroup, Any]:
    """Learner ranks alone (`learner.num_ranks`, placed as in training), ready, in a placement
    group of their own: the policy learner of `rlsys sft` or the reward-model trainer of
    `rlsys train-rm`; -> (the group, its Placement). Stop them with `stop_learners`."""
    plan = plan_learners(cfg)
    placement = place_roles(plan, cfg.resources.colocate)
    learners = _ready(start_role(spec, _slots(placement, plan, runtime_env_vars(cfg))(plan.learners)))
    return LearnerGroup(learners), placement


@contextmanager
def learners_on_ray(cfg: RunConfig, spec: LearnerSpec | RMTrainerSpec):
    """`start_learners` on the run's Ray (launch.cluster.connect); on exit the ranks stop, and a
    Ray this call started is shut down (a caller's Ray, in tests or notebooks, stays up).
    Yields the group."""
    import ray

    from launch.cluster import connect

    owns_ray = not ray.is_initialized()
    connect(cfg)
    try:
        group, pg = start_learners(cfg, spec)
        try:
            yield group
        finally:
            stop_learners(group, pg)
    finally:
        if owns_ray and not cfg.resources.address:
            ray.shutdown()


def stop_learners(group: LearnerGroup, placement: Placement) -> None:
    import ray

    for a in group.actors:
        ray.kill(a)
    release_placement(placement)
