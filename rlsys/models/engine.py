"""The rollout engine: a thin wrapper over `vllm.LLM` (no Ray; vLLM imported lazily).

- `generate` / `generate_stream`: prompts -> RolloutGroups (G samples per prompt) with each
  sampled token's log-prob (behaviour log-probs) and the prompt ids exactly as vLLM saw them.
- `update_weights`: in-place reload from (HF checkpoint name, tensor) pairs, e.g. straight
  from the learner's `model.named_parameters()`, through a worker extension class with named
  methods (no pickled callables, so no VLLM_ALLOW_INSECURE_SERIALIZATION). Bucketed updates
  are staged until complete, then reloaded at once (a partial fused layer would be garbage).

On CPU run it in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0 (the constructor sets it unless
the caller already chose), VLLM_CPU_KVCACHE_SPACE=<GiB> (from `kv_cache_space_gib`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

from rlsys.protocol import Prompt, Rollout, RolloutGroup


class WeightReloadExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); `self` is the worker.

    Subclass it to add transport-specific receive methods (e.g. NCCL/gloo broadcast) and
    pass the subclass's qualified name to VLLMEngine(worker_extension_cls=...).
    """

    def rlsys_reload_weights(self, named_tensors) -> int:
        """Load HF-named weights in place; returns how many tensors were given.

        vLLM maps HF names (model.language_model.*, model.visual.*, lm_head.*) to its own
        fused layout (qkv_proj, gate_up_proj) itself. A fused layer must get all its parts in
        the same call, so send a whole model (or whole layers) per call.
        """
        tensors = list(named_tensors)
        self.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        return len(tensors)

    def rlsys_weight_checksum(self) -> float:
        """Sum of all parameters (float64): a cheap 'did the weights change' probe."""
        import torch

        model = self.model_runner.get_model()
        with torch.no_grad():
            return float(sum(p.double().sum() for p in model.parameters()))


_EXTENSION = f"{__name__}.WeightReloadExtension"


# transformers >= 4.52 names VLM parameters model.language_model.* / model.visual.*, but saves
# (and older checkpoints hold) the legacy model.* / visual.* names; vLLM accepts both. Names
# are compared in the legacy form.
_CANONICAL_PREFIXES = (
    ("model.language_model.", "model."), ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."), ("model.visual.", "visual."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def canonical_name(name: str) -> str:
    for old, new in _CANONICAL_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def checkpoint_tensor_names(model_path: str) -> Optional[set]:
    """Tensor names stored in a checkpoint's safetensors files (headers only), or None when
    they cannot be read (not a local dir / not cached, or not safetensors)."""
    import glob
    import json

    path = model_path
    if not os.path.isdir(path):
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(model_path, local_files_only=True,
                                     allow_patterns=["*.safetensors", "*.json"])
        except Exception:
            return None
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {canonical_name(n) for n in json.load(f)["weight_map"]}
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        return None
    from safetensors import safe_open

    names: set = set()
    for fn in files:
        with safe_open(fn, framework="pt") as f:
            names.update(canonical_name(n) for n in f.keys())
    return names


class VLLMEngine:
    """One vLLM engine (possibly tensor-parallel) that turns Prompts into RolloutGroups."""

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, dtype: str = "float32",
                 max_model_len: int = 2048, gpu_memory_utilization: float = 0.5, seed: int = 0,
                 kv_cache_space_gib: Optional[float] = 1.0, enforce_eager: bool = True,
                 max_images_per_prompt: int = 4, logprobs_mode: str = "processed_logprobs",
                 worker_extension_cls: str = _EXTENSION, trust_remote_code: bool = False,
                 **llm_kwargs: Any):
        """
        logprobs_mode: "processed_logprobs" (default) returns log-probs of the distribution
            actually sampled from — after temperature, and after top-k/top-p truncation when
            those are on — so with top_p=1 they equal `token_logprobs(..., temperature)`.
            "raw_logprobs" gives the untempered model distribution (vLLM's own default).
        llm_kwargs: passed to vllm.LLM unchanged (e.g. enable_prefix_caching, max_num_seqs).
        """
        if kv_cache_space_gib is not None:
            # vLLM reads whole GiB ("1.0" fails its int parse).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_space_gib)))))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from rlsys.models.loading import load_processor

        self.model_path = str(model_path)
        self.processor = load_processor(self.model_path, trust_remote_code=trust_remote_code)
        self.multimodal = getattr(self.processor, "image_processor", None) is not None
        if self.multimodal:
            # No videos: skips profiling/allocating for them.
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images_per_prompt, "video": 0})
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vLLM 0.32 rewinds a seeded request's generator after a partial (chunked) prefill
            # with Generator.set_offset, which CPU generators lack ("CPU Generator does not use
            # offset"): seeded sampling on CPU needs whole-prompt prefills.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
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
        self._staged: list = []  # (name, tensor) of a weight update still in progress
        self._expected = checkpoint_tensor_names(self.model_path)

    # ------------------------------------------------------------------ generation
    @classmethod
    def from_spec(cls, spec) -> "VLLMEngine":
        """The engine an `rlsys.specs.EngineSpec` describes."""
        extra = {"max_num_seqs": spec.max_num_seqs} if spec.max_num_seqs else {}
        return cls(spec.model_path, tensor_parallel_size=spec.tensor_parallel_size, dtype=spec.dtype,
                   max_model_len=spec.max_model_len, gpu_memory_utilization=spec.gpu_memory_utilization,
                   seed=spec.seed, kv_cache_space_gib=spec.kv_cache_space_gib, enforce_eager=spec.enforce_eager,
                   trust_remote_code=spec.trust_remote_code, **extra)

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
        reproducible per request: vLLM seeds sample j of a request with seed + j."""
        if not prompts:
            return
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
                    yield self._to_group(prompts[idx], out, version)

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
    def update_weights(self, named_tensors: Iterable[tuple[str, Any]],
                       policy_version: Optional[int] = None,
                       finalize: Optional[bool] = None) -> float:
        """Reload weights in place from HF-named (name, tensor) pairs; returns seconds taken.

        Bucketed updates are safe: vLLM fuses q/k/v and gate/up into one tensor, and a fused
        layer that gets only some of its parts in a reload is filled with garbage. So tensors
        are staged until the update is complete and then reloaded in one call:
          finalize=None (default): reload as soon as the staged names cover every tensor name
            of the checkpoint (a full `named_parameters()` in one call reloads at once; N
            buckets reload with the last one). If the checkpoint's names are unknown (hub id
            not in the local cache), every call reloads.
          finalize=True: reload whatever is staged now (deliberately partial updates: give
            whole layers). finalize=False: stage only.
        A name sent twice before the reload means the previous update never completed: error.
        `policy_version` (or +1) applies when the reload happens. Tensors are cast to the
        engine's dtype by vLLM's loaders (CPU tensors for a CPU engine). Encoder, multimodal
        and prefix caches are reset afterwards (see `_invalidate_caches`), so call this
        between generate calls, never during one.
        """
        t0 = time.perf_counter()
        new = [(n, t.detach()) for n, t in named_tensors]
        staged = {canonical_name(n) for n, _ in self._staged}
        again = staged.intersection(canonical_name(n) for n, _ in new)
        if again:
            missing = sorted((self._expected or set()) - staged)[:5]
            self._staged = []
            raise RuntimeError(f"weight update: {sorted(again)[:3]} sent twice before the update "
                               f"was complete (still missing e.g. {missing}); staging dropped")
        self._staged.extend(new)
        staged.update(canonical_name(n) for n, _ in new)
        complete = self._expected is None or self._expected <= staged
        if finalize is False or (finalize is None and not complete):
            return time.perf_counter() - t0
        tensors, self._staged = self._staged, []
        self.llm.collective_rpc("rlsys_reload_weights", args=(tensors,))
        self._invalidate_caches()
        self.policy_version = self.policy_version + 1 if policy_version is None else int(policy_version)
        return time.perf_counter() - t0

    @property
    def staged_weight_count(self) -> int:
        """Tensors received but not yet reloaded (an update in progress)."""
        return len(self._staged)

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
        return float(self.llm.collective_rpc("rlsys_weight_checksum")[0])

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
