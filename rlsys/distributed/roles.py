"""Clients of the role actors: the driver's only view of Ray.

Each client method starts remote calls and returns a `Pending`; `wait(*pending)` resolves them
all with one `ray.get`, so stages that can overlap (rewards, reference, critic) do.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rlsys.config import RunConfig
from rlsys.distributed.media_store import MediaStore
from rlsys.distributed.streaming import InFlightBatch, StreamPump
from rlsys.protocol import Prompt, RolloutGroup, TrainBatch, TrainSample


@dataclass
class Pending:
    """Object refs of remote calls and how to combine their results."""

    refs: list
    combine: Callable[[list], Any]


def wait(*pending: Optional[Pending]) -> tuple:
    import ray

    refs = [r for p in pending if p is not None for r in p.refs]
    values = iter(ray.get(refs))
    return tuple(None if p is None else p.combine([next(values) for _ in p.refs]) for p in pending)


def join(*pending: Optional[Pending], combine: Callable[..., Any]) -> Pending:
    """One Pending of several: `combine(value_1, ..., value_n)` (None for a None pending)."""
    refs = [r for p in pending if p is not None for r in p.refs]

    def combined(parts: list):
        values = iter(parts)
        return combine(*(None if p is None else p.combine([next(values) for _ in p.refs]) for p in pending))

    return Pending(refs, combined)


def scoring_samples(groups: list[RolloutGroup]) -> list[TrainSample]:
    """The sequences of `groups` as TrainSamples, for reference/critic forward passes."""
    import torch

    out = []
    for gi, g in enumerate(groups):
        for r in g.rollouts:
            ids = torch.tensor(list(r.prompt_token_ids) + list(r.response_token_ids), dtype=torch.long)
            zeros = torch.zeros(len(r.response_token_ids))
            out.append(TrainSample(ids, len(r.prompt_token_ids), g.prompt.images, zeros, zeros,
                                   policy_version=r.policy_version, group_index=gi))
    return out


def _regroup(groups: list[RolloutGroup], flat: list) -> list[list[list[float]]]:
    out, i = [], 0
    for g in groups:
        out.append([flat[i + j].tolist() for j in range(g.size)])
        i += g.size
    return out


class RolloutPool:
    """N engines; a call's prompts go to the engines with the fewest outstanding prompts.

    `prompts_done[i]`: prompts engine i has returned groups for, cumulative (counted from what
    came back, not from what was assigned); the driver logs its per-step difference.
    """

    def __init__(self, actors: list):
        self.actors = actors
        self.outstanding = [0] * len(actors)
        self.prompts_done = [0] * len(actors)

    def _split(self, prompts: list[Prompt]) -> list[list[int]]:
        """Prompt indices per engine: each prompt to the engine with the fewest outstanding."""
        shares: list[list[int]] = [[] for _ in self.actors]
        for j in range(len(prompts)):
            i = min(range(len(self.actors)), key=lambda k: (self.outstanding[k] + len(shares[k]), k))
            shares[i].append(j)
        return shares

    def stream(self, prompts: list[Prompt], sampling, window: int) -> list:
        """Start every engine's share as a streaming generator (rlsys/distributed/streaming.py);
        an engine pauses once `window` of its groups are yielded and not yet taken."""
        from rlsys.distributed.streaming import EngineStream

        out = []
        for i, share in enumerate(self._split(prompts)):
            if not share:
                continue
            gen = (self.actors[i].generate_stream
                   .options(num_returns="streaming", _generator_backpressure_num_objects=window)
                   .remote([prompts[j] for j in share], sampling))
            self.outstanding[i] += len(share)
            out.append(EngineStream(gen, share, lambda i=i: self._taken(i, 1)))
        return out

    def _taken(self, i: int, n: int) -> None:
        self.outstanding[i] -= n
        self.prompts_done[i] += n

    def generate_async(self, prompts: list[Prompt], sampling) -> Pending:
        """Every engine's share in one reply each; -> Pending of all groups in prompt order."""
        shares = self._split(prompts)
        refs, used = [], []
        for i, share in enumerate(shares):
            if share:
                refs.append(self.actors[i].generate.remote([prompts[j] for j in share], sampling))
                used.append((i, share))
                self.outstanding[i] += len(share)

        def combine(parts):
            groups: list = [None] * len(prompts)
            for (i, share), part in zip(used, parts):
                self._taken(i, len(part))
                for j, g in zip(share, part):
                    groups[j] = g
            return groups

        return Pending(refs, combine)

    def generate(self, prompts: list[Prompt], sampling) -> list[RolloutGroup]:
        return wait(self.generate_async(prompts, sampling))[0]


class RewardClient:
    def __init__(self, actor):
        self.actor = actor

    def score_async(self, groups: list[RolloutGroup]) -> Pending:
        return Pending([self.actor.score.remote(groups)], lambda parts: parts[0])


class ReferenceClient:
    def __init__(self, actor):
        self.actor = actor

    def logprobs_async(self, groups: list[RolloutGroup]) -> Pending:
        ref = self.actor.compute_logprobs.remote(scoring_samples(groups))
        return Pending([ref], lambda parts: _regroup(groups, parts[0]))


def _shard(samples: list[TrainSample], ranks: int) -> list[list[TrainSample]]:
    """Round-robin over samples sorted by length, so every rank gets similar token counts."""
    order = sorted(range(len(samples)), key=lambda i: -samples[i].input_ids.shape[0])
    shards = [[] for _ in range(ranks)]
    for k, i in enumerate(order):
        shards[k % ranks].append(samples[i])
    return shards


class LearnerGroup:
    """DeepSpeed data-parallel ranks; every call goes to all ranks (ZeRO collectives)."""

    def __init__(self, actors: list):
        self.actors = actors

    def train_async(self, batch: TrainBatch) -> Pending:
        shards = _shard(batch.samples, len(self.actors))
        refs = [a.train_step.remote(TrainBatch(s, batch.policy_version)) for a, s in zip(self.actors, shards)]
        return Pending(refs, lambda parts: parts[0])

    def call_all(self, make_call) -> list:
        """`make_call(actor)` -> object ref, on every rank; results in rank order."""
        import ray

        return ray.get([make_call(a) for a in self.actors])

    def export_hf(self, out_dir: Path) -> None:
        self.call_all(lambda a: a.export_hf.remote(str(out_dir)))


class CriticGroup(LearnerGroup):
    def values_async(self, groups: list[RolloutGroup]) -> Pending:
        samples = scoring_samples(groups)
        refs = [a.compute_values.remote(samples) for a in self.actors]
        return Pending(refs, lambda parts: _regroup(groups, parts[0]))


@dataclass
class Roles:
    cfg: RunConfig
    rollout: RolloutPool
    reward: RewardClient
    reference: Optional[ReferenceClient]
    learner: LearnerGroup
    critic: Optional[CriticGroup]
    train_sampling: Any
    eval_sampling: Any
    placement_group: Any = None
    sync_backend: str = "gloo"
    pump: StreamPump = field(default_factory=StreamPump)
    media: MediaStore = field(default_factory=MediaStore)  # each image once in the object store

    wait = staticmethod(wait)
    join = staticmethod(join)

    def launch(self, replayed: list[RolloutGroup], prompts: list[Prompt], score_async) -> InFlightBatch:
        """Start a batch: replayed groups' scoring now, and generation for `prompts` (streamed
        into scoring group by group, or one reply per engine; `rollout.stream`). Nothing waits."""
        ro = self.cfg.rollout
        streams = reply = None
        if prompts and ro.stream:
            streams = self.rollout.stream(prompts, self.train_sampling, ro.stream_window)
        elif prompts:
            reply = self.rollout.generate_async(prompts, self.train_sampling)
        return self.pump.add(InFlightBatch(replayed, len(prompts), score_async, ro.max_scoring_groups,
                                           streams=streams, reply=reply))

    def sync_weights(self, version: int) -> float:
        """Learner -> every engine; returns seconds. Collective: all learner ranks take part."""
        import ray

        t0 = time.perf_counter()
        if self.cfg.learner.weight_sync == "collective":
            refs = [a.sync_weights.remote(version) for a in self.learner.actors]
            refs += [e.receive_weights.remote() for e in self.rollout.actors]
            ray.get(refs)
        else:
            refs = [a.weight_buckets.remote(self.cfg.learner.sync_bucket_mb) for a in self.learner.actors]
            buckets = ray.get(refs)[0]
            for bucket in buckets:
                ray.get([e.load_weights.remote(bucket, version) for e in self.rollout.actors])
        return time.perf_counter() - t0

    def offload_media(self, prompts: list[Prompt]) -> list[Prompt]:
        """`prompts` with ref-form images: each distinct image put into the object store once
        (rlsys/distributed/media_store.py), so the driver holds and ships no image bytes."""
        return self.media.offload(prompts)

    def peak_memory_mb(self) -> dict[str, float]:
        import ray

        refs = [e.peak_memory_mb.remote() for e in self.rollout.actors] + [self.reward.actor.peak_memory_mb.remote()]
        values = ray.get(refs)
        out = {f"memory/engine{i}_host_mb": v["host_mb"] for i, v in enumerate(values[:-1])}
        out["memory/reward_host_mb"] = values[-1]["host_mb"]
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
        from ray.util.placement_group import remove_placement_group

        actors = list(self.rollout.actors) + [self.reward.actor] + list(self.learner.actors)
        actors += [self.reference.actor] if self.reference else []
        actors += list(self.critic.actors) if self.critic else []
        for a in actors:
            ray.kill(a)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
