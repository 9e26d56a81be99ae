"""Rollout actor: one vLLM engine, one method per remote call. Knows nothing of the loop."""
from __future__ import annotations

from typing import Iterator

from rlsys.protocol import EngineInfo, PeakMemory, Prompt, RolloutGroup, WorkerInfo, WorkerMemory, WorkerSyncReport
from rlsys.specs import EngineSpec, SamplingSpec, generate_kwargs


class RolloutActor:
    def __init__(self, spec: EngineSpec):
        from rlsys.distributed.runtime import actor_cpu_share
        from rlsys.models.engine import VLLMEngine

        cpus, slot = actor_cpu_share()
        self.engine = VLLMEngine.from_spec(spec, cpus=cpus, cpu_slot=slot)
        self.version = 0
        self._receiver = None
        self.prompts_generated = 0  # every generate call's prompts, evaluation included

    def generate(self, prompts: list[Prompt], sampling: SamplingSpec) -> list[RolloutGroup]:
        from rlsys.distributed.media_store import resolve_prompts

        # The engine gets image bytes (fetched once per image into this process's cache); the
        # groups go back with the caller's prompts, so ref-form prompts return no image bytes.
        groups = self.engine.generate(resolve_prompts(prompts), **generate_kwargs(prompts, sampling),
                                      policy_version=self.version)
        for group, prompt in zip(groups, prompts):
            group.prompt = prompt
        self.prompts_generated += len(groups)
        return groups

    def generate_stream(self, prompts: list[Prompt], sampling: SamplingSpec) -> Iterator[tuple[int, RolloutGroup]]:
        """Ray streaming generator: yields (index in `prompts`, RolloutGroup) as soon as each
        prompt's samples finish, in completion order (vLLM's continuous batching)."""
        from rlsys.distributed.media_store import resolve_prompts

        for group in self.engine.generate_stream(resolve_prompts(prompts), **generate_kwargs(prompts, sampling),
                                                 policy_version=self.version):
            self.prompts_generated += 1
            index = self.engine.last_index
            group.prompt = prompts[index]  # the caller's (ref-form) prompt: no image bytes go back
            yield index, group

    def sync_ranks(self) -> int:
        """How many ranks this engine takes in the weight-sync group (its TP workers)."""
        return self.engine.num_workers

    def open_weight_sync(self, host: str, port: int, world_size: int, rank: int, backend: str) -> list[int]:
        """Every vLLM worker of the engine joins the learner's weight-sync group, worker t as
        rank `rank` + t (rank = 1 + the ranks of the engines before this one); blocks until every
        member has joined. Returns the workers' ranks."""
        self._receiver = (host, port, world_size, rank, backend)
        return self.engine.open_weight_sync(host, port, world_size, rank, backend)

    def receive_weights(self, verify: bool = False) -> int:
        """Takes one broadcast from the learner into every worker of the live engine (each loads
        the buckets as they arrive); returns the new version. verify=True: every worker also
        hashes what it received (see `last_sync`)."""
        self.last_reports = self.engine.receive_weights(digest=verify)
        self.version = self.engine.policy_version
        return self.version

    def last_sync(self) -> list[WorkerSyncReport]:
        """Each worker's report of the last `receive_weights`: rank, version, bytes, seconds,
        largest bucket held (MiB) and, with verify, the digest of what it received."""
        return list(getattr(self, "last_reports", []))

    def weight_checksums(self) -> list[float]:
        """Each worker's parameter sum (changes when its weights change)."""
        return self.engine.weight_checksums()

    def load_bucket(self, named_tensors: list, version: int, last: bool) -> int:
        """Lean object-store path: one bucket of whole fused layers (`bucketize`), pulled by this
        actor from the object store (the caller passes its ObjectRef) and loaded into every worker
        at once, so no process holds a second full copy of the model. `version` applies with
        the last bucket."""
        self.engine.load_bucket(named_tensors, policy_version=version if last else None)
        if last:
            self.version = version
        return self.version

    def policy_version(self) -> int:
        return self.version

    def engine_info(self) -> EngineInfo:
        """This engine as seen from inside: the node it runs on, the policy version it holds, and
        how many prompts it has generated so far (checks placement, weight sync and balancing)."""
        from actors import node_id

        return EngineInfo(node_id(), self.version, self.prompts_generated)

    def peak_memory_mb(self) -> PeakMemory:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()

    def workers_memory_mb(self) -> list[WorkerMemory]:
        """Each vLLM worker's memory: peak (lifetime), current RSS, rank. At TP 1 the worker is
        this process."""
        return self.engine.workers_memory()

    def workers_info(self) -> list[WorkerInfo]:
        """Each vLLM worker's pid, rank, cores and device (rlsys_worker_info)."""
        return self.engine.workers_info()

    def reset_peak_memory(self) -> None:
        """Resets the peak RSS (Linux VmHWM) of this process and of every worker (bench)."""
        from rlsys.models.worker_extension import reset_peak_rss

        reset_peak_rss()
        self.engine.collective_rpc("rlsys_reset_peak_memory")
