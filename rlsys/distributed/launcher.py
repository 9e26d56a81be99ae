"""Starts every role's actors in one placement group and wires the weight-sync group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlsys.config import RunConfig
from rlsys.distributed.placement import bundle_options, create_placement_group, plan_roles
from rlsys.distributed.roles import (CriticGroup, LearnerGroup, ReferenceClient, RewardClient, Roles,
                                     RolloutPool)


def learner_kwargs(cfg: RunConfig) -> dict:
    a, lr = cfg.algorithm, cfg.learner
    return {
        "zero_stage": lr.zero_stage, "lr": lr.lr, "weight_decay": lr.weight_decay,
        "warmup_steps": lr.warmup_steps, "total_steps": cfg.total_steps, "lr_schedule": lr.lr_schedule,
        "grad_clip": lr.grad_clip, "micro_batch_size": lr.micro_batch_size, "ppo_epochs": lr.ppo_epochs,
        "mini_batches_per_step": lr.mini_batches, "dtype": cfg.model.dtype, "seed": cfg.seed,
        "backend": lr.backend, "gradient_checkpointing": lr.gradient_checkpointing,
        "policy_loss": a.policy_loss,
        "policy_loss_params": {"clip_low": a.clip_low, "clip_high": a.clip_high, "dual_clip": a.dual_clip,
                               "seq_clip_low": a.seq_clip_low, "seq_clip_high": a.seq_clip_high},
        # KL folded into the reward is not also a loss term.
        "kl_coef": 0.0 if a.kl_in_reward else a.kl_coef, "kl_estimator": a.kl_estimator,
        "entropy_coef": a.entropy_coef, "loss_agg": a.loss_agg, "norm_length": a.norm_length,
        "max_is_weight": a.max_is_weight, "temperature": cfg.rollout.temperature,
    }


def critic_kwargs(cfg: RunConfig) -> dict:
    c = cfg.critic
    return {"zero_stage": c.zero_stage, "lr": c.lr, "micro_batch_size": c.micro_batch_size,
            "value_clip": c.value_clip, "total_steps": cfg.total_steps, "dtype": cfg.model.dtype,
            "seed": cfg.seed, "backend": cfg.learner.backend, "grad_clip": cfg.learner.grad_clip,
            "ppo_epochs": cfg.learner.ppo_epochs, "mini_batches_per_step": cfg.learner.mini_batches}


def reward_args(cfg: RunConfig) -> tuple:
    """RewardActor's constructor arguments."""
    r = cfg.reward
    return ([(c.name, c.weight) for c in r.components], r.timeout_s, r.num_workers, r.reward_model,
            r.reward_model_weight, cfg.model.dtype)


def train_sampling(cfg: RunConfig):
    from actors.rollout import SamplingSettings

    ro = cfg.rollout
    return SamplingSettings(ro.n, ro.temperature, ro.top_p, ro.max_new_tokens)


def _rendezvous(pg, bundle: int, resources: dict) -> tuple[str, int]:
    """(node ip, free port) on the node of `bundle`, where rank 0 of a group will listen."""
    import ray

    from actors import free_port, node_ip

    @ray.remote
    def address():
        host = node_ip()
        return host, free_port(host)

    opts = bundle_options(pg, bundle, resources)
    opts.update(num_cpus=0, num_gpus=0)
    return ray.get(address.options(**opts).remote())


def _dp_group(actor_cls, pg, plan_bundles, bundles, model_path, kwargs, env):
    import ray

    host, port = _rendezvous(pg, plan_bundles[0], bundles[plan_bundles[0]])
    world = len(plan_bundles)
    remote_cls = ray.remote(actor_cls)
    return [remote_cls.options(**bundle_options(pg, b, bundles[b]), runtime_env={"env_vars": env})
            .remote(rank, world, host, port, model_path, kwargs) for rank, b in enumerate(plan_bundles)]


def _start_engines_and_reward(cfg: RunConfig, model_path: str, plan, pg) -> tuple[list, object]:
    """The rollout engines and the reward actor in their bundles (training and `rlsys rollout`)."""
    import ray

    from actors.reward import RewardActor
    from actors.rollout import RolloutActor
    from launch.cluster import runtime_env_vars
    from launch.evaluate import engine_kwargs

    env = {"env_vars": runtime_env_vars(cfg)}
    engines = [ray.remote(RolloutActor).options(**bundle_options(pg, i, plan.bundles[i]), runtime_env=env)
               .remote(model_path, engine_kwargs(cfg)) for i in plan.engines]
    reward = (ray.remote(RewardActor).options(**bundle_options(pg, plan.reward, plan.bundles[plan.reward]),
                                               runtime_env=env).remote(*reward_args(cfg)))
    return engines, reward


def start_roles(cfg: RunConfig, model_path: str) -> Roles:
    import ray

    from actors.critic import CriticActor
    from actors.learner import LearnerActor
    from actors.reference import ReferenceActor
    from actors.rollout import SamplingSettings
    from launch.cluster import runtime_env_vars

    env = runtime_env_vars(cfg)
    needs_reference = cfg.algorithm.kl_coef > 0
    plan = plan_roles(cfg, needs_reference)
    pg = create_placement_group(plan, cfg.resources.colocate)
    b = plan.bundles

    def place(index):
        return {**bundle_options(pg, index, b[index]), "runtime_env": {"env_vars": env}}

    engines, reward = _start_engines_and_reward(cfg, model_path, plan, pg)
    learners = _dp_group(LearnerActor, pg, plan.learners, b, model_path, learner_kwargs(cfg), env)
    critics = (_dp_group(CriticActor, pg, plan.critics, b, cfg.critic.path or model_path, critic_kwargs(cfg), env)
               if cfg.critic.enabled else None)
    reference = (ray.remote(ReferenceActor).options(**place(plan.reference))
                 # Same temperature as the learner: the KL compares the two tempered distributions.
                 .remote(cfg.reference.path or model_path, cfg.model.dtype,
                         temperature=cfg.rollout.temperature) if needs_reference else None)
    ready = [a.ready.remote() for a in learners + (critics or [])] + ([reference.ready.remote()] if reference else [])
    ready += [e.policy_version.remote() for e in engines]
    ray.get(ready)

    gpu = cfg.resources.gpus_per_learner > 0 and cfg.resources.gpus_per_engine > 0
    backend = "nccl" if gpu else "gloo"
    if cfg.learner.weight_sync == "collective":
        host, port = ray.get(learners[0].weight_sync_address.remote())
        world = 1 + len(engines)
        refs = [a.init_weight_sync.remote(host, port, world, backend, cfg.learner.sync_bucket_mb) for a in learners]
        refs += [e.open_weight_sync.remote(host, port, world, i + 1, backend) for i, e in enumerate(engines)]
        ray.get(refs)
    return Roles(
        cfg=cfg, rollout=RolloutPool(engines), reward=RewardClient(reward),
        reference=ReferenceClient(reference) if reference else None, learner=LearnerGroup(learners),
        critic=CriticGroup(critics) if critics else None,
        train_sampling=train_sampling(cfg),
        eval_sampling=SamplingSettings(1, 0.0, 1.0, cfg.eval.max_new_tokens),
        placement_group=pg, sync_backend=backend)


@dataclass
class GenerationRoles:
    """Engines and the reward actor without a learner (`rlsys rollout`)."""

    rollout: RolloutPool
    reward: RewardClient
    train_sampling: Any
    placement_group: Any

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in list(self.rollout.actors) + [self.reward.actor]:
            ray.kill(a)
        remove_placement_group(self.placement_group)


def start_generation(cfg: RunConfig, model_path: str) -> GenerationRoles:
    import ray

    plan = plan_roles(cfg, needs_reference=False, training=False)
    pg = create_placement_group(plan, cfg.resources.colocate)
    engines, reward = _start_engines_and_reward(cfg, model_path, plan, pg)
    ray.get([e.policy_version.remote() for e in engines])
    return GenerationRoles(RolloutPool(engines), RewardClient(reward), train_sampling(cfg), pg)
