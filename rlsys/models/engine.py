"""The rollout engine: a thin wrapper over `vllm.LLM` (no Ray; vLLM imported lazily).

- `generate` / `generate_stream`: prompts -> RolloutGroups (G samples per prompt) with each
  sampled token's log-prob (behaviour log-probs) and the prompt ids exactly as vLLM saw them.
- `update_weights`: in-place reload from (HF checkpoint name, tensor) pairs, e.g. straight
  from the learner's `model.named_parameters()`, through a worker extension class with named
  methods (no pickled callables, so no VLLM_ALLOW_INSECURE_SERIALIZATION).

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
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_space_gib))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from rlsys.models.loading import load_processor

        self.model_path = str(model_path)
        self.processor = load_processor(self.model_path, trust_remote_code=trust_remote_code)
        self.multimodal = getattr(self.processor, "image_processor", None) is not None
        if self.multimodal:
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images_per_prompt})
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

    # ------------------------------------------------------------------ generation
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
                        seed: Optional[int] = None,
                        stop_token_ids: Optional[Sequence[int]] = None) -> Iterator[RolloutGroup]:
        """Yield one RolloutGroup per prompt as soon as all its n samples finish (completion
        order, not prompt order). `seed` makes sampling reproducible per request."""
        if not prompts:
            return
        version = self.policy_version if policy_version is None else int(policy_version)
        params = self._sampling_params(n, temperature, top_p, max_tokens, top_k, seed, stop_token_ids)
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
                    yield self._to_group(prompts[idx], out, version)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 256, policy_version: Optional[int] = None,
                 **kwargs) -> list[RolloutGroup]:
        """All groups, in prompt order (see generate_stream for the arguments)."""
        order = {id(p): i for i, p in enumerate(prompts)}
        groups = list(self.generate_stream(prompts, n, temperature, top_p, max_tokens,
                                           policy_version, **kwargs))
        return sorted(groups, key=lambda g: order[id(g.prompt)])

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
        return RolloutGroup(prompt=prompt, rollouts=rollouts)

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, Any]],
                       policy_version: Optional[int] = None) -> float:
        """Reload weights in place from HF-named tensors (all of a fused layer's parts in one
        call); bumps `policy_version` (or sets it). Returns seconds taken.

        Tensors are cast to the engine's dtype by vLLM's loaders; keep them on CPU for the
        CPU engine. The prefix cache is reset so no KV computed with old weights is reused.
        """
        t0 = time.perf_counter()
        tensors = [(n, t.detach()) for n, t in named_tensors]
        self.llm.collective_rpc("rlsys_reload_weights", args=(tensors,))
        try:
            self.llm.reset_prefix_cache()
        except Exception:  # prefix caching off: nothing to reset
            pass
        self.policy_version = self.policy_version + 1 if policy_version is None else int(policy_version)
        return time.perf_counter() - t0

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
