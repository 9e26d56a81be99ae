"""The rollout engine: a thin wrapper over `vllm.LLM` (no Ray; vLLM imported lazily).

- `generate` / `generate_stream`: prompts -> RolloutGroups (G samples per prompt) with each
  sampled token's log-prob (behaviour log-probs) and the prompt ids exactly as vLLM saw them.
- Weights: `open_weight_sync` / `receive_weights` take the learner's broadcast into every worker
  (the collective path); `load_bucket` reloads one bucket of whole layers in place (the object-store
  path). Both run in the workers through the extension of rlsys/models/worker_extension.py.

The executor (uni / mp / ray), the CPU workers' cores and the /dev/shm hand-off to worker
processes: rlsys/models/executor.py.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

from rlsys.models.executor import configure_platform, prepare_executor, write_handoff
from rlsys.models.worker_extension import EXTENSION, as_records
from rlsys.protocol import Prompt, Rollout, RolloutGroup, WorkerInfo, WorkerMemory, WorkerSyncReport


class VLLMEngine:
    """One vLLM engine (possibly tensor-parallel) that turns Prompts into RolloutGroups."""

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, dtype: str = "float32",
                 max_model_len: int = 2048, gpu_memory_utilization: float = 0.5, seed: int = 0,
                 kv_cache_space_gib: Optional[float] = 1.0, enforce_eager: bool = True,
                 max_images_per_prompt: int = 4, logprobs_mode: str = "processed_logprobs",
                 worker_extension_cls: str = EXTENSION, trust_remote_code: bool = False,
                 distributed_executor_backend: str = "auto", cpu_binding: Optional[str] = None,
                 ray_bundle_indices: Optional[Sequence[int]] = None, cpus: Optional[float] = None,
                 cpu_slot: int = 0, **llm_kwargs: Any):
        """
        logprobs_mode: "processed_logprobs" (default) returns log-probs of the distribution
            actually sampled from — after temperature, and after top-k/top-p truncation when
            those are on — so with top_p=1 they equal `token_logprobs(..., temperature)`.
            "raw_logprobs" gives the untempered model distribution (vLLM's own default).
        distributed_executor_backend: "auto" (uni for TP 1, mp for TP > 1), "uni", "mp" or "ray"
            (rlsys/models/executor.py).
        cpu_binding: VLLM_CPU_OMP_THREADS_BIND for an "mp" engine on CPU (default: from
            `cpu_thread_binding` with `cpus` and `cpu_slot`; a value the environment already holds
            with one entry per worker wins).
        cpus, cpu_slot: the CPUs the engine's actor was given and its bundle index in its placement
            group (rlsys/distributed/runtime.py actor_cpu_share); None, 0 outside Ray.
        ray_bundle_indices: "ray" executor: the bundles of the actor's placement group the TP
            workers take (VLLM_RAY_BUNDLE_INDICES); default 0..TP-1.
        llm_kwargs: passed to vllm.LLM unchanged (e.g. enable_prefix_caching, max_num_seqs).
        """
        tp = int(tensor_parallel_size)
        self.executor = prepare_executor(tp, distributed_executor_backend, kv_cache_space_gib)
        self.tensor_parallel_size = tp
        from vllm import LLM

        from rlsys.models.loading import load_processor

        self.model_path = str(model_path)
        self.processor = load_processor(self.model_path, trust_remote_code=trust_remote_code)
        self.multimodal = getattr(self.processor, "image_processor", None) is not None
        if self.multimodal:
            # No videos: skips profiling/allocating for them.
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images_per_prompt, "video": 0})
        configure_platform(self.executor, tp, llm_kwargs, cpu_binding=cpu_binding, cpus=cpus, cpu_slot=cpu_slot,
                           ray_bundle_indices=ray_bundle_indices)
        t0 = time.perf_counter()
        self.llm = LLM(
            model=self.model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            seed=seed, enforce_eager=enforce_eager, logprobs_mode=logprobs_mode,
            worker_extension_cls=worker_extension_cls, trust_remote_code=trust_remote_code,
            **llm_kwargs,
        )
        self.load_seconds = time.perf_counter() - t0
        from rlsys.models.forward import SUPPRESS_BIAS, suppressed_token_ids

        # Placeholders are never sampled; the learner applies the same bias (forward.py).
        self.logit_bias = {i: SUPPRESS_BIAS for i in suppressed_token_ids(self.processor)}
        self.policy_version = 0
        self.last_index = -1  # index in `prompts` of the group generate_stream yielded last

    # ------------------------------------------------------------------ generation
    @classmethod
    def from_spec(cls, spec, cpus: Optional[float] = None, cpu_slot: int = 0) -> "VLLMEngine":
        """The engine an `rlsys.specs.EngineSpec` describes (cpus, cpu_slot: see __init__)."""
        extra = {"max_num_seqs": spec.max_num_seqs} if spec.max_num_seqs else {}
        return cls(spec.model_path, tensor_parallel_size=spec.tensor_parallel_size, dtype=spec.dtype,
                   max_model_len=spec.max_model_len, gpu_memory_utilization=spec.gpu_memory_utilization,
                   seed=spec.seed, kv_cache_space_gib=spec.kv_cache_space_gib, enforce_eager=spec.enforce_eager,
                   trust_remote_code=spec.trust_remote_code,
                   distributed_executor_backend=spec.distributed_executor_backend, cpus=cpus, cpu_slot=cpu_slot,
                   **extra)

    def _engine_input(self, prompt: Prompt) -> dict:
        from rlsys.models.forward import render_prompt

        item: dict[str, Any] = {"prompt": render_prompt(self.processor, prompt)}
        if prompt.images:
            item["multi_modal_data"] = {"image": [m.to_pil() for m in prompt.images]}
        return item

    def _sampling_params(self, n, temperature, top_p, max_tokens, top_k, seed, stop):
        from vllm import SamplingParams

        return SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                              max_tokens=max_tokens, logprobs=0, seed=seed,
                              stop_token_ids=list(stop) if stop else None,
                              logit_bias=dict(self.logit_bias) or None,
                              skip_special_tokens=True)

    def generate_stream(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 1.0,
                        top_p: float = 1.0, max_tokens: int = 256,
                        policy_version: Optional[int] = None, top_k: int = -1,
                        seed: Optional[int] | Sequence[Optional[int]] = None,
                        stop_token_ids: Optional[Sequence[int]] = None) -> Iterator[RolloutGroup]:
        """Yield one RolloutGroup per prompt as soon as all its n samples finish (completion
        order, not prompt order). `seed` (one for every prompt, or one per prompt) makes sampling
        reproducible per request: vLLM seeds sample j of a request with seed + j.

        Each group's `generation_s` is this call's time so far, less the time it sat paused at a
        yield (a streaming consumer's backpressure): the engine's own generation time."""
        if not prompts:
            return
        started, paused = time.perf_counter(), 0.0
        version = self.policy_version if policy_version is None else int(policy_version)
        seeds = seed if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
        params = [self._sampling_params(n, temperature, top_p, max_tokens, top_k, s, stop_token_ids)
                  for s in seeds]
        inputs = []
        for p in prompts:
            try:
                inputs.append(self._engine_input(p))
            except Exception as e:  # name the row: the caller decides to skip or fail
                raise ValueError(f"prompt {p.uid}: cannot render: {e}") from e
        ids = self.llm.enqueue(inputs, params, use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<external>-<8 random chars>"); finished
        # outputs carry the external id (the LLM's request counter). Accept either.
        by_id = {}
        for i, rid in enumerate(ids):
            by_id[str(rid)] = i
            by_id[str(rid).rsplit("-", 1)[0]] = i
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for out in engine.step():
                if getattr(out, "finished", False):
                    idx = by_id.get(str(out.request_id))
                    if idx is None:  # not ours (someone else's request): ignore
                        continue
                    self.last_index = idx
                    group = self._to_group(prompts[idx], out, version)
                    now = time.perf_counter()
                    group.generation_s = now - started - paused
                    yield group
                    paused += time.perf_counter() - now

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 256, policy_version: Optional[int] = None,
                 **kwargs) -> list[RolloutGroup]:
        """All groups, in prompt order (see generate_stream for the arguments)."""
        slots: list[Optional[RolloutGroup]] = [None] * len(prompts)
        for group in self.generate_stream(prompts, n, temperature, top_p, max_tokens,
                                          policy_version, **kwargs):
            slots[self.last_index] = group
        missing = [p.uid for p, g in zip(prompts, slots) if g is None]
        if missing:
            raise RuntimeError(f"vLLM returned no output for prompts {missing}")
        return slots  # type: ignore[return-value]

    def _to_group(self, prompt: Prompt, out, version: int) -> RolloutGroup:
        prompt_ids = list(out.prompt_token_ids)
        rollouts = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            toks = list(c.token_ids)
            lps = c.logprobs or []
            if len(lps) != len(toks):
                raise RuntimeError(f"prompt {prompt.uid}: {len(lps)} log-probs for {len(toks)} tokens")
            # Each position's dict holds the sampled token (logprobs=0 asks for just that).
            behaviour = [float(pos[t].logprob) for t, pos in zip(toks, lps)]
            rollouts.append(Rollout(
                prompt_token_ids=prompt_ids, response_token_ids=toks, response_text=c.text,
                behaviour_logprobs=behaviour,
                finish_reason=c.finish_reason if c.finish_reason in ("stop", "length") else "abort",
                policy_version=version))
        return RolloutGroup(prompt=prompt, rollouts=rollouts, finished_at=time.time())

    # ------------------------------------------------------------------ weights
    def load_bucket(self, named_tensors: Iterable[tuple[str, Any]], policy_version: Optional[int] = None) -> float:
        """Reload one bucket of whole vLLM layers now (a `bucketize` bucket: q/k/v, gate/up and
        weight+bias of a module together: vLLM fuses q/k/v and gate/up, and a fused layer that
        gets only some of its parts is filled with garbage); layers not in it keep their weights. `policy_version` (when given) applies after this bucket; the
        caches are dropped after each. Returns seconds taken."""
        t0 = time.perf_counter()
        self._reload_in_workers([(n, t.detach()) for n, t in named_tensors])
        self._invalidate_caches()
        if policy_version is not None:
            self.policy_version = int(policy_version)
        return time.perf_counter() - t0

    def _reload_in_workers(self, tensors: list[tuple[str, Any]]) -> None:
        """Hand (name, tensor) pairs to every worker's `reload_weights`.

        "uni": the worker is this process, and gets the tensors themselves (no copy). "mp":
        the workers are processes of their own, and vLLM's mp message queue fails on tensor
        arguments ("cannot pickle 'memoryview' object", cloned tensors included), so the pairs
        go through one file in /dev/shm that every worker maps: one copy of the bucket, shared
        by the workers, removed after the call. "ray": Ray pickles the arguments, and a
        zero-copy (memoryview-backed) tensor cannot be pickled: each gets storage of its own."""
        if self.executor != "mp":
            if self.executor == "ray":
                tensors = [(n, t.clone()) for n, t in tensors]
            self.llm.collective_rpc("rlsys_reload_weights", args=(tensors,))
            return
        path = write_handoff(tensors)
        try:
            self.llm.collective_rpc("rlsys_reload_weights_file", args=(path,))
        finally:
            os.unlink(path)

    def _invalidate_caches(self) -> None:
        """Drop everything computed with the old weights. The worker's reload clears its own
        encoder cache, but the scheduler still believes the vision embeddings of images it
        has seen are cached ("Encoder cache miss" on the next request with that image), and
        prefix-cached KV blocks would silently reuse old-weight keys/values. The multimodal
        processor caches (frontend sender / worker receiver) are reset together so they stay
        in sync. Call only with no request in flight."""
        engine = self.llm.llm_engine
        engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()

    def weight_checksum(self) -> float:
        """Sum of every worker's parameter sums (worker 0's alone at TP 1)."""
        return float(sum(self.weight_checksums()))

    def weight_checksums(self) -> list[float]:
        """Each worker's `rlsys_weight_checksum`, in worker rank order."""
        return [float(c) for c in self.llm.collective_rpc("rlsys_weight_checksum")]

    @property
    def num_workers(self) -> int:
        """Worker processes of this engine (TP size): its members in the weight-sync group."""
        return self.tensor_parallel_size

    def open_weight_sync(self, host: str, port: int, world_size: int, first_rank: int, backend: str,
                         timeout_s: float = 600.0) -> list[int]:
        """Every worker joins the learner's broadcast group, worker t as `first_rank` + t; blocks
        until the whole group has joined. Returns the workers' ranks."""
        return [int(r) for r in self.llm.collective_rpc(
            "rlsys_open_weight_sync", args=(host, port, world_size, first_rank, backend, timeout_s))]

    def receive_weights(self, policy_version: Optional[int] = None, digest: bool = False) -> list[WorkerSyncReport]:
        """Take one broadcast into every worker (each reloads the buckets as they arrive), then
        drop the caches computed with the old weights. Returns each worker's report
        (`WeightReloadExtension.rlsys_receive_weights`); every worker must end at one version."""
        reports = as_records(WorkerSyncReport, self.llm.collective_rpc("rlsys_receive_weights", args=(digest,)))
        versions = {r.version for r in reports}
        if len(versions) != 1:
            raise RuntimeError(f"weight sync: the workers of one engine hold versions {sorted(versions)}")
        self._invalidate_caches()
        self.policy_version = int(versions.pop()) if policy_version is None else int(policy_version)
        return list(reports)

    def workers_memory(self) -> list[WorkerMemory]:
        """Each worker's memory (`rlsys_peak_memory_mb`), in worker rank order."""
        return as_records(WorkerMemory, self.llm.collective_rpc("rlsys_peak_memory_mb"))

    def workers_info(self) -> list[WorkerInfo]:
        """Where each worker runs (`rlsys_worker_info`), in worker rank order."""
        return as_records(WorkerInfo, self.llm.collective_rpc("rlsys_worker_info"))

    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None):
        """Call a named method of the worker extension on every worker."""
        return self.llm.collective_rpc(method, args=args, kwargs=kwargs)

    def shutdown(self) -> None:
        """Release the engine (best effort; vLLM frees memory when the object goes away)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
