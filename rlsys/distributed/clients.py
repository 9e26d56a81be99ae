"""Clients of the role actors, one per role. Each client method starts remote calls and returns
a `Pending` (rlsys/distributed/pending.py); `wait(*pending)` resolves them all with one
`ray.get`, so stages that can overlap (rewards, reference, critic) do.
"""
from __future__ import annotations

from pathlib import Path

from rlsys.distributed.pending import Pending, wait
from rlsys.distributed.streaming import EngineStream
from rlsys.protocol import Prompt, RewardResult, RolloutGroup, TrainBatch, TrainSample
from rlsys.specs import SamplingSpec


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

    def stream(self, prompts: list[Prompt], sampling: SamplingSpec, window: int) -> list:
        """Start every engine's share as a streaming generator (rlsys/distributed/streaming.py);
        an engine pauses once `window` of its groups are yielded and not yet taken."""
        return [self.stream_on(i, [prompts[j] for j in share], share, sampling, window)
                for i, share in enumerate(self._split(prompts)) if share]

    def stream_on(self, i: int, prompts: list[Prompt], slots: list[int], sampling: SamplingSpec,
                  window: int) -> EngineStream:
        """`prompts` (batch positions `slots`) as a streaming generator on engine i."""
        gen = (self.actors[i].generate_stream
               .options(num_returns="streaming", _generator_backpressure_num_objects=window)
               .remote(prompts, sampling))
        self.outstanding[i] += len(prompts)
        return EngineStream(gen, slots, lambda: self._taken(i, 1), engine=i, actor=self.actors[i], prompts=prompts,
                            sampling=sampling)

    def _taken(self, i: int, n: int) -> None:
        self.outstanding[i] -= n
        self.prompts_done[i] += n

    def generate_async(self, prompts: list[Prompt], sampling: SamplingSpec) -> Pending:
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

    def generate(self, prompts: list[Prompt], sampling: SamplingSpec) -> list[RolloutGroup]:
        return wait(self.generate_async(prompts, sampling))[0]


class RewardClient:
    def __init__(self, actor):
        self.actor = actor

    def score_async(self, groups: list[RolloutGroup]) -> Pending:
        return Pending([self.actor.score.remote(groups)], lambda parts: parts[0])

    def score_eval(self, groups: list[RolloutGroup]) -> list[RewardResult]:
        return wait(Pending([self.actor.score_eval.remote(groups)], lambda parts: parts[0]))[0]


class RewardModelPool:
    """The replicas of one reward model (a scalar RM or a judge, actors/reward_model.py and
    actors/judge.py); each scoring call goes to the replica with the fewest groups outstanding,
    so a slow model spreads over its replicas and never holds up another role's calls.

    name / weight / normalize: the component's column, weight and batch standardisation.
    """

    def __init__(self, name: str, weight: float, normalize: bool, actors: list):
        self.name, self.weight, self.normalize = name, weight, normalize
        self.actors = actors
        self.outstanding = [0] * len(actors)

    def score_async(self, groups: list[RolloutGroup]) -> Pending:
        """-> Pending of the groups' ModelScores, in order."""
        i = min(range(len(self.actors)), key=lambda k: (self.outstanding[k], k))
        self.outstanding[i] += len(groups)

        def done(parts):
            self.outstanding[i] -= len(groups)
            return parts[0]

        return Pending([self.actors[i].score.remote(groups)], done)

    def replica_of(self, dead_id: str) -> int | None:
        """Index of the replica with actor id `dead_id`, else None."""
        from rlsys.distributed.recovery import actor_id

        for i, a in enumerate(self.actors):
            if actor_id(a) == dead_id:
                return i
        return None


class ReferenceClient:
    def __init__(self, actor):
        self.actor = actor

    def logprobs_async(self, groups: list[RolloutGroup]) -> Pending:
        ref = self.actor.compute_logprobs.remote(scoring_samples(groups))
        return Pending([ref], lambda parts: _regroup(groups, parts[0]))


def shard_samples(samples: list[TrainSample], ranks: int) -> list[list[TrainSample]]:
    """Split a batch over learner ranks with every prompt group (`group_index`) whole on one rank,
    so the learner's prompt packing (rlsys/models/packing.py) still runs each group's prompt
    once; groups go to the rank with the fewest tokens so far (largest first), and keep batch
    order within a rank. With fewer groups than ranks (e.g. SFT demonstrations, all of group
    0), samples are dealt round-robin by length instead.

    Sorting samples by length across groups, as this did before, scattered a group over the
    micro-batches: the small model's update fed ~2x the tokens it needed (bench/vs_trl.py)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group_index, []).append(i)
    if len(groups) < ranks:
        order = sorted(range(len(samples)), key=lambda i: -samples[i].input_ids.shape[0])
        return [[samples[i] for i in order[r::ranks]] for r in range(ranks)]

    # A group's tokens as packing feeds them: its prompt once, then every response.
    costed = [(samples[idx[0]].response_start + sum(samples[i].response_length for i in idx), idx)
              for idx in groups.values()]
    load, owned = [0] * ranks, [[] for _ in range(ranks)]
    for tokens, idx in sorted(costed, key=lambda c: (-c[0], c[1][0])):
        r = min(range(ranks), key=lambda k: (load[k], len(owned[k]), k))
        load[r] += tokens
        owned[r].append(idx)
    return [[samples[i] for idx in sorted(own) for i in idx] for own in owned]


class LearnerGroup:
    """DeepSpeed data-parallel ranks; every call goes to all ranks (ZeRO collectives)."""

    def __init__(self, actors: list):
        self.actors = actors

    def train_async(self, batch: TrainBatch) -> Pending:
        shards = shard_samples(batch.samples, len(self.actors))
        refs = [a.train_step.remote(TrainBatch(s, batch.policy_version)) for a, s in zip(self.actors, shards)]
        return Pending(refs, lambda parts: parts[0])

    def sft_async(self, batch: TrainBatch) -> Pending:
        """One supervised step on demonstrations (`rlsys sft`), sharded as train_async shards;
        -> Pending of the SFTMetrics (the same on every rank)."""
        shards = shard_samples(batch.samples, len(self.actors))
        refs = [a.sft_step.remote(TrainBatch(s, batch.policy_version)) for a, s in zip(self.actors, shards)]
        return Pending(refs, lambda parts: parts[0])

    def call_all(self, make_call) -> list:
        """`make_call(actor)` -> object ref, on every rank; results in rank order."""
        import ray

        return ray.get([make_call(a) for a in self.actors])

    def policy_version(self) -> int:
        """The version of the weights the ranks hold (rank 0's count of train steps)."""
        import ray

        return ray.get(self.actors[0].policy_version.remote())

    def export_hf(self, out_dir: Path) -> None:
        self.call_all(lambda a: a.export_hf.remote(str(out_dir)))


class CriticGroup(LearnerGroup):
    def values_async(self, groups: list[RolloutGroup]) -> Pending:
        samples = scoring_samples(groups)
        refs = [a.compute_values.remote(samples) for a in self.actors]
        return Pending(refs, lambda parts: _regroup(groups, parts[0]))
