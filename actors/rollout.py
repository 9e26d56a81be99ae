"""Rollout actor: one vLLM engine, one method per remote call. Knows nothing of the loop."""
from __future__ import annotations

from rlsys.protocol import Prompt, RolloutGroup
from rlsys.specs import EngineSpec, SamplingSpec, generate_kwargs


class RolloutActor:
    def __init__(self, spec: EngineSpec):
        from rlsys.models.engine import VLLMEngine

        self.engine = VLLMEngine.from_spec(spec)
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

    def generate_stream(self, prompts: list[Prompt], sampling: SamplingSpec):
        """Ray streaming generator: yields (index in `prompts`, RolloutGroup) as soon as each
        prompt's samples finish, in completion order (vLLM's continuous batching)."""
        from rlsys.distributed.media_store import resolve_prompts

        for group in self.engine.generate_stream(resolve_prompts(prompts), **generate_kwargs(prompts, sampling),
                                                 policy_version=self.version):
            self.prompts_generated += 1
            index = self.engine.last_index
            group.prompt = prompts[index]  # the caller's (ref-form) prompt: no image bytes go back
            yield index, group

    def open_weight_sync(self, host: str, port: int, world_size: int, rank: int, backend: str) -> None:
        """Joins the learner's weight-sync group; blocks until every member has joined."""
        from rlsys.distributed.weight_sync import WeightSyncReceiver

        self._receiver = WeightSyncReceiver(host, port, world_size, rank, backend=backend)

    def receive_weights(self) -> int:
        """Takes one broadcast from the learner into the live engine; returns the new version."""
        self.engine.update_weights(self._receiver.receive())
        self.version = self._receiver.version
        return self.version

    def load_weights(self, named_tensors: list, version: int) -> int:
        """Object-store path of `receive_weights` (one bucket per call; version set on the last)."""
        self.engine.update_weights(iter(named_tensors))
        self.version = version
        return self.version

    def policy_version(self) -> int:
        return self.version

    def engine_info(self) -> dict:
        """This engine as seen from inside: the node it runs on, the policy version it holds, and
        how many prompts it has generated so far (checks placement, weight sync and balancing)."""
        from actors import node_id

        return {"node_id": node_id(), "policy_version": self.version,
                "prompts_generated": self.prompts_generated}

    def peak_memory_mb(self) -> dict[str, float]:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()
