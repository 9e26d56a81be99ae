"""The roles of a run as the driver sees them: the actors' clients (rlsys/distributed/clients.py)
together, batches launched into the stream pump, weight sync, checkpoints of the training group,
and the replacement of dead actors (rlsys/distributed/recovery.py). The driver's only view of Ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rlsys.config import RunConfig
from rlsys.distributed.clients import CriticGroup, LearnerGroup, ReferenceClient, RewardClient, RolloutPool
from rlsys.distributed.media_store import MediaStore
from rlsys.distributed.pending import Pending, join, wait
from rlsys.distributed.recovery import LearnerDied, Recovery, actor_id, dead_actor_id, is_actor_death
from rlsys.distributed.streaming import EngineStream, InFlightBatch, StreamPump
from rlsys.protocol import Prompt, RewardResult, RolloutGroup, ScoredGroup
from rlsys.specs import SamplingSpec


@dataclass
class Roles:
    cfg: RunConfig
    rollout: RolloutPool
    reward: RewardClient
    reference: Optional[ReferenceClient]
    learner: LearnerGroup
    critic: Optional[CriticGroup]
    train_sampling: SamplingSpec
    eval_sampling: SamplingSpec
    placement_group: Any = None  # a rlsys.distributed.placement.Placement (or one placement group)
    reward_models: list = field(default_factory=list)  # a RewardModelPool per model entry of reward.components
    recovery: Optional[Recovery] = None  # None: a dead actor ends the run
    pump: StreamPump = field(default_factory=StreamPump)
    media: MediaStore = field(default_factory=MediaStore)  # each image once in the object store

    wait = staticmethod(wait)
    join = staticmethod(join)

    def launch(self, replayed: list[RolloutGroup], prompts: list[Prompt], score_async, seed: int) -> InFlightBatch:
        """Start a batch: replayed groups' scoring now, and generation for `prompts` with the
        call seed `seed` (streamed into scoring group by group, or one reply per engine;
        `rollout.stream`). Nothing waits."""
        ro = self.cfg.rollout
        sampling = self.train_sampling.for_call(seed)
        streams = reply = None
        if prompts and ro.stream:
            streams = self.rollout.stream(prompts, sampling, ro.stream_window)
        elif prompts:
            reply = self.rollout.generate_async(prompts, sampling)
        return self.pump.add(InFlightBatch(replayed, len(prompts), score_async, ro.max_scoring_groups,
                                           streams=streams, reply=reply, reply_request=(prompts, sampling),
                                           recoverer=self if self.recovery else None))

    # ------------------------------------------------------------------ dead actors

    def engine_died(self, stream: EngineStream, missing: list[int]) -> list[EngineStream]:
        """Restart the stream's engine (unless another batch's stream already did) and generate
        its missing groups there (same seeds)."""
        if stream.actor is self.rollout.actors[stream.engine]:
            self.restart_engine(stream.engine)
        prompts = [stream.prompts[k] for k in missing]
        slots = [stream.slots[k] for k in missing]
        return [self.rollout.stream_on(stream.engine, prompts, slots, stream.sampling, self.cfg.rollout.stream_window)]

    def reply_died(self, prompts: list[Prompt], sampling: SamplingSpec) -> Pending:
        """Restart the dead engines; ask every engine again (seeded: live ones answer the same)."""
        for i in self.dead_engines():
            self.restart_engine(i)
        return self.rollout.generate_async(prompts, sampling)

    def scorer_died(self, err: BaseException) -> None:
        dead = dead_actor_id(err)
        if dead == actor_id(self.reward.actor):
            (self.reward.actor,) = self.recovery.restart("reward")
            return
        if self.reference is not None and dead == actor_id(self.reference.actor):
            (self.reference.actor,) = self.recovery.restart("reference")
            return
        for pool in self.reward_models:
            i = pool.replica_of(dead)
            if i is not None:
                (pool.actors[i],) = self.recovery.restart(f"reward_model/{pool.name}", i)
                pool.outstanding[i] = 0
                return
        raise LearnerDied(f"a critic rank died: {err}")  # a critic rank: the training state is gone

    def dead_engines(self) -> list[int]:
        """Engines whose process is gone (a busy live engine is waited for, not counted)."""
        return [i for i, e in enumerate(self.rollout.actors) if not _alive(e, timeout_s=None)]

    def restart_engine(self, i: int) -> None:
        """Engine i again in its bundle, holding the learner's current weights (not the disk's):
        sent through the object store, as the broadcast group still names the dead process."""
        (engine,) = self.recovery.restart("engine", i)
        t0 = time.perf_counter()
        self.rollout.actors[i] = engine
        self.rollout.outstanding[i] = 0
        self._load_buckets([engine], self.learner.policy_version())
        self.recovery.sync_group_stale = True
        self.recovery.add_seconds("engine", time.perf_counter() - t0)

    def generate(self, prompts: list[Prompt], sampling: SamplingSpec) -> list[RolloutGroup]:
        """Generate and wait (evaluation); a dead engine is restarted and the call repeated."""
        while True:
            try:
                return self.rollout.generate(prompts, sampling)
            except Exception as err:
                if self.recovery is None or not is_actor_death(err):
                    raise
                for i in self.dead_engines():
                    self.restart_engine(i)

    def evaluate(self, prompts: list[Prompt], sampling: SamplingSpec) -> tuple[list[RolloutGroup], list[RewardResult]]:
        """Held-out groups and their evaluation scores: the rule entries of the evaluation
        rewards from the reward actor, then each model entry from the run's replicas of that
        model (in eval.rewards order). A dead scorer is restarted and the scoring repeated."""
        from rlsys.rewards.combine import with_model_scores
        from rlsys.specs import component_column

        groups = self.generate(prompts, sampling)
        entries = self.cfg.eval.rewards if self.cfg.eval.rewards is not None else self.cfg.reward.components
        pools = {p.name: p for p in self.reward_models}
        models = [(pools[component_column(c)], c.weight) for c in entries if c.model is not None]
        while True:
            try:
                rules = self.reward.score_eval(groups)
                scores = wait(*[pool.score_async(groups) for pool, _ in models]) if models else ()
                break
            except Exception as err:
                if self.recovery is None or not is_actor_death(err):
                    raise
                self.scorer_died(err)
        for (pool, weight), per_group in zip(models, scores):
            rules = [with_model_scores(r, pool.name, weight, s) for r, s in zip(rules, per_group)]
        return groups, rules

    def resume_batch(self, replayed: list[ScoredGroup], generated: list[ScoredGroup]) -> InFlightBatch:
        """A batch a checkpoint carried in flight, already generated and scored."""
        return self.pump.add(InFlightBatch.completed(replayed, generated, self.cfg.rollout.max_scoring_groups))

    def sync_weights(self, version: int) -> float:
        """Learner -> every engine; returns seconds. Collective: all learner ranks take part."""
        t0 = time.perf_counter()
        if self.cfg.learner.weight_sync == "collective":
            if self.recovery is not None and self.recovery.sync_group_stale:
                self.recovery.starter.open_weight_sync(self.learner.actors, self.rollout.actors)
                self.recovery.sync_group_stale = False
            refs = [a.sync_weights.remote(version) for a in self.learner.actors]
            refs += [e.receive_weights.remote() for e in self.rollout.actors]
            self._get_sync(refs)
        else:
            self._load_buckets(self.rollout.actors, version)
        return time.perf_counter() - t0

    def _load_buckets(self, engines: list, version: int) -> None:
        """Object-store sync: learner rank 0 puts each bucket (whole fused layers) into the object
        store once; each engine pulls it by reference and loads it into every worker. The driver
        only passes ObjectRefs along: it never holds (or deserialises) any weights."""
        import ray

        refs = self.learner.call_all(lambda a: a.weight_bucket_refs.remote(self.cfg.learner.sync_bucket_mb))[0]
        for k, ref in enumerate(refs):
            ray.get([e.load_bucket.remote(ref, version, k == len(refs) - 1) for e in engines])

    def _get_sync(self, refs: list) -> None:
        """Wait for a sync; a dead engine is restarted (it loads the new weights itself)."""
        import ray

        failure, pending = None, list(refs)
        while pending and failure is None:  # stop at the first failure: the rest may never end
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready)
            except Exception as err:
                failure = err
        if failure is None:
            return
        if self.recovery is None:
            raise failure
        dead = self.dead_engines()
        learners_dead = [a for a in self.learner.actors if not _alive(a)]
        if learners_dead or not dead:
            raise LearnerDied(f"weight sync failed: {failure}") if learners_dead or is_actor_death(failure) else failure
        # The learner's broadcast failed with the dead peer; the live engines got nothing either.
        for i in dead:
            self.restart_engine(i)
        self.recovery.starter.open_weight_sync(self.learner.actors, self.rollout.actors)
        self.recovery.sync_group_stale = False
        version = self.learner.policy_version()
        refs = [a.sync_weights.remote(version) for a in self.learner.actors]
        ray.get(refs + [e.receive_weights.remote() for e in self.rollout.actors])

    def learner_died(self, err: BaseException) -> bool:
        """Whether `err` is the death of a learner or critic rank (and the run can recover)."""
        if self.recovery is None:
            return False
        if isinstance(err, LearnerDied):
            return True
        group = self.learner.actors + (self.critic.actors if self.critic else [])
        return is_actor_death(err) and (dead_actor_id(err) in {actor_id(a) for a in group}
                                        or not all(_alive(a) for a in group))

    def restart_learners(self) -> None:
        """The whole training group (learner ranks, and critic ranks) again, at its initial
        weights, with the broadcast group reopened; the caller loads a checkpoint into it."""
        import ray

        for a in self.learner.actors + (self.critic.actors if self.critic else []):
            ray.kill(a)
        actors = self.recovery.restart("learner")
        n = len(self.learner.actors)
        self.learner.actors = actors[:n]
        if self.critic is not None:
            self.critic.actors = actors[n:]
        self.recovery.starter.open_weight_sync(self.learner.actors, self.rollout.actors)
        self.recovery.sync_group_stale = False

    def offload_media(self, prompts: list[Prompt]) -> list[Prompt]:
        """`prompts` with ref-form images: each distinct image put into the object store once
        (rlsys/distributed/media_store.py), so the driver holds and ships no image bytes."""
        return self.media.offload(prompts)

    def peak_memory_mb(self) -> dict[str, float]:
        import ray

        engines = [e.peak_memory_mb.remote() for e in self.rollout.actors]
        models = [(f"memory/reward_model_{pool.name}{i}_host_mb", a.peak_memory_mb.remote())
                  for pool in self.reward_models for i, a in enumerate(pool.actors)]
        values = ray.get(engines + [self.reward.actor.peak_memory_mb.remote()] + [ref for _, ref in models])
        out = {f"memory/engine{i}_host_mb": v.host_mb for i, v in enumerate(values[:len(engines)])}
        out["memory/reward_host_mb"] = values[len(engines)].host_mb
        out.update({key: v.host_mb for (key, _), v in zip(models, values[len(engines) + 1:])})
        return out

    def save_checkpoint(self, path: Path) -> None:
        self.learner.call_all(lambda a: a.save_checkpoint.remote(str(path / "learner")))
        if self.critic is not None:
            self.critic.call_all(lambda a: a.save_checkpoint.remote(str(path / "critic")))

    def load_checkpoint(self, path: Path) -> None:
        self.learner.call_all(lambda a: a.load_checkpoint.remote(str(path / "learner")))
        if self.critic is not None:
            self.critic.call_all(lambda a: a.load_checkpoint.remote(str(path / "critic")))

    def shutdown(self) -> None:
        import ray

        from rlsys.distributed.placement import release_placement

        actors = list(self.rollout.actors) + [self.reward.actor] + list(self.learner.actors)
        actors += [self.reference.actor] if self.reference else []
        actors += [a for pool in self.reward_models for a in pool.actors]
        actors += list(self.critic.actors) if self.critic else []
        for a in actors:
            ray.kill(a)
        if self.placement_group is not None:
            release_placement(self.placement_group)


@dataclass
class GenerationRoles:
    """Engines and the reward actor without a learner (`rlsys rollout`)."""

    rollout: RolloutPool
    reward: RewardClient
    train_sampling: SamplingSpec
    placement_group: Any

    def shutdown(self) -> None:
        import ray

        from rlsys.distributed.placement import release_placement

        for a in list(self.rollout.actors) + [self.reward.actor]:
            ray.kill(a)
        release_placement(self.placement_group)


def _alive(actor, timeout_s: Optional[float] = 30.0) -> bool:
    """Whether `actor` answers (after the calls queued before this one); a learner that does not
    within `timeout_s` is as good as dead (e.g. stuck in a broadcast to a dead peer)."""
    import ray

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False
