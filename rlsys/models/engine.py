"""The rollout engine: a thin wrapper over `vllm.LLM` (no Ray; vLLM imported lazily).

- `generate` / `generate_stream`: prompts -> RolloutGroups (G samples per prompt) with each
  sampled token's log-prob (behaviour log-probs) and the prompt ids exactly as vLLM saw them.
- `update_weights`: in-place reload from (HF checkpoint name, tensor) pairs, e.g. straight
  from the learner's `model.named_parameters()`, through a worker extension class with named
  methods (no pickled callables, so no VLLM_ALLOW_INSECURE_SERIALIZATION). Bucketed updates
  are staged until complete, then reloaded at once (a partial fused layer would be garbage).

Executors (`distributed_executor_backend`, chosen explicitly, never left to vLLM's guess):
- "uni" (tensor_parallel_size = 1): the model runs in this process, as a single worker
  (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless the caller already chose).
- "mp" (the default for TP > 1): vLLM's engine core and one worker process per TP rank on this
  node (VLLM_ENABLE_V1_MULTIPROCESSING=1). The workers use exactly the devices of this process:
  on GPU the ones Ray made visible to the actor (its bundle holds TP GPUs; worker t uses the
  t-th); on CPU each worker is bound to its own cores of this node (VLLM_CPU_OMP_THREADS_BIND,
  from `cpu_thread_binding`).
- "ray" (GPUs across bundles or nodes): vLLM's Ray executor, as vLLM's RLHF example runs it.
  The actor must run in the engine's *own* placement group of TP one-GPU bundles (vLLM rejects a
  group with any bundle of more than one GPU), with `placement_group_capture_child_tasks=True`
  and no GPU of its own; `ray_bundle_indices` (VLLM_RAY_BUNDLE_INDICES) names the bundles the
  workers take, one each. Not available on CPU ("current platform cpu does not support ray").

Weight sync happens inside every worker (`WeightReloadExtension.rlsys_open_weight_sync` /
`rlsys_receive_weights`): each joins the learner's broadcast group with its own rank and reloads
the buckets as they arrive (rlsys/distributed/weight_sync.py).

VLLM_CPU_KVCACHE_SPACE=<GiB> comes from `kv_cache_space_gib`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

from rlsys.protocol import Prompt, Rollout, RolloutGroup, WorkerInfo, WorkerMemory, WorkerSyncReport


class WeightReloadExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); `self` is the worker.

    Subclass it to add transport-specific receive methods and pass the subclass's qualified
    name to VLLMEngine(worker_extension_cls=...).
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

    def rlsys_reload_weights_file(self, path: str) -> int:
        """`rlsys_reload_weights` from a `torch.save`d list of (name, tensor) pairs: how the
        engine hands weights to worker processes (`write_handoff`). Memory-mapped, so the
        file's pages (in /dev/shm, shared by every worker of the engine) are read in place."""
        import torch

        tensors = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return self.rlsys_reload_weights(tensors)

    def rlsys_weight_checksum(self) -> float:
        """Sum of this worker's parameters (float64): a cheap 'did the weights change' probe.
        With TP > 1 each worker sums its own shards (and the replicated tensors)."""
        import torch

        model = self.model_runner.get_model()
        with torch.no_grad():
            return float(sum(p.double().sum() for p in model.parameters()))

    # ---- weight sync inside the worker (rlsys/distributed/weight_sync.py)

    def rlsys_open_weight_sync(self, host: str, port: int, world_size: int, first_rank: int,
                               backend: str, timeout_s: float = 600.0) -> int:
        """Join the learner's broadcast group as rank `first_rank` + this worker's rank in its
        engine (its TP rank); blocks until every member has joined. Returns the rank."""
        from rlsys.distributed.weight_sync import WeightSyncReceiver

        old = getattr(self, "_rlsys_receiver", None)
        self._rlsys_receiver = None
        del old  # a reopened group (after a restart elsewhere) replaces the old one
        rank = int(first_rank) + int(self.rank)
        self._rlsys_receiver = WeightSyncReceiver(host, port, world_size, rank, backend=backend,
                                                  timeout_s=timeout_s)
        self._rlsys_digest = None
        return rank

    def rlsys_receive_weights(self, digest: bool = False) -> WorkerSyncReport:
        """Take one broadcast into this worker's model, each bucket loaded as it arrives (one
        streaming `reload_weights`: vLLM processes a layer as soon as all its tensors are in,
        and buckets hold whole fused layers, so no second copy of the model is ever held).

        digest=True also hashes what arrived (`tensors_digest` of the HF tensors), to compare
        with the learner's `params_digest`. Returns this worker's rank, version, bytes,
        seconds, largest bucket held and digest (or None)."""
        import time

        from rlsys.distributed.weight_sync import StreamDigest

        rx = self._rlsys_receiver
        if rx is None:
            raise RuntimeError("rlsys_receive_weights: no weight-sync group (rlsys_open_weight_sync first)")
        t0 = time.perf_counter()
        acc = StreamDigest() if digest else None
        stream = rx.receive()
        self._rlsys_stream_reload(acc.wrap(stream) if acc is not None else stream)
        self._rlsys_digest = acc.hexdigest() if acc is not None else None
        return WorkerSyncReport(rank=rx.rank, version=rx.version, bytes=rx.last_bytes,
                                peak_buffer_mb=rx.peak_buffer_bytes / 2**20, seconds=time.perf_counter() - t0,
                                digest=self._rlsys_digest)

    def _rlsys_stream_reload(self, named_tensors) -> None:
        try:
            self.reload_weights(weights_iterator=named_tensors, is_checkpoint_format=True)
        except BaseException:
            # The transfer broke between buckets (a dead peer): layers loaded so far hold the new
            # weights, the others still sit on the meta device waiting for theirs. Put those back
            # (vLLM's own end-of-reload step), so the engine keeps generating with a usable model.
            try:
                from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

                finalize_layerwise_reload(self.model_runner.get_model(), self.model_runner.model_config)
            except Exception:
                pass
            raise

    def rlsys_peak_memory_mb(self) -> WorkerMemory:
        """This worker process's peak memory (rlsys/memory.py), current RSS and peak RSS since
        rlsys_reset_peak_memory."""
        from rlsys.memory import peak_memory_mb

        return WorkerMemory(rank=int(self.rank), peak=peak_memory_mb(), rss_mb=_rss_mb(), hwm_mb=peak_rss_mb())

    def rlsys_reset_peak_memory(self) -> None:
        _reset_peak_rss()

    def rlsys_worker_info(self) -> WorkerInfo:
        """Where this worker runs: pid, rank in its engine, the cores its threads may use, its
        OpenMP thread count and its device (checks that each engine has exactly its own)."""
        import torch

        device = str(getattr(self, "device", "cpu"))
        return WorkerInfo(pid=os.getpid(), rank=int(self.rank), cores=tuple(sorted(os.sched_getaffinity(0))),
                          threads=torch.get_num_threads(), device=device,
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB; nan where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux: VmHWM, which getrusage's ru_maxrss does not follow;
    rlsys/memory.py's figure stays the lifetime peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak RSS since the last `_reset_peak_rss` (VmHWM), MiB."""
    return _status_mb("VmHWM")


EXECUTORS = ("auto", "uni", "mp", "ray")


def executor_backend(tensor_parallel_size: int, requested: str = "auto") -> str:
    """The vLLM executor an engine uses: "uni" for one worker, "mp" for TP > 1 on one node
    (the default), "ray" only when asked for (GPUs across bundles; see the module docstring)."""
    if requested not in EXECUTORS:
        raise ValueError(f"distributed_executor_backend = {requested!r}: must be one of {EXECUTORS}")
    if requested == "auto":
        return "uni" if tensor_parallel_size == 1 else "mp"
    if requested == "uni" and tensor_parallel_size != 1:
        raise ValueError(f"distributed_executor_backend = 'uni' runs one worker; tensor_parallel_size = "
                         f"{tensor_parallel_size} needs 'mp' or 'ray'")
    return requested


def write_handoff(tensors: list[tuple[str, Any]]) -> str:
    """Write (name, tensor) pairs to a new file in /dev/shm (the temp dir where there is none)
    for `rlsys_reload_weights_file`; returns its path. The caller removes it."""
    import tempfile

    import torch

    where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="rlsys-weights-", suffix=".pt", dir=where)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save([(n, t.contiguous()) for n, t in tensors], fh)
    except BaseException:
        os.unlink(path)
        raise
    return path


def cpu_thread_binding(tensor_parallel_size: int, cores: Optional[Sequence[int]] = None,
                       cpus: Optional[float] = None, slot: int = 0) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for a CPU engine of `tensor_parallel_size` worker processes:
    each worker gets its own core(s), "0|1" for TP 2 with one core each.

    cores: the cores this process may run on (default: its affinity mask); cpus: the CPUs Ray
    gave the engine (default: an even share of `cores`), split evenly over the workers, at least
    one each; slot: where this engine's cores start, in units of one engine's cores (engines
    on one node, e.g. by bundle index, take consecutive windows, wrapping around).
    """
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    tp = int(tensor_parallel_size)
    if tp > len(cores):
        raise ValueError(f"tensor_parallel_size = {tp} on CPU: each worker needs a core of its own, this "
                         f"process may use {len(cores)} ({cores})")
    per = len(cores) // tp
    if cpus is not None:
        per = max(1, min(per, int(cpus) // tp))
    width = per * tp
    start = (int(slot) * width) % len(cores)
    window = [cores[(start + i) % len(cores)] for i in range(width)]
    return "|".join(",".join(str(c) for c in window[r * per:(r + 1) * per]) for r in range(tp))


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
                 distributed_executor_backend: str = "auto", cpu_binding: Optional[str] = None,
                 ray_bundle_indices: Optional[Sequence[int]] = None, cpus: Optional[float] = None,
                 cpu_slot: int = 0, **llm_kwargs: Any):
        """
        logprobs_mode: "processed_logprobs" (default) returns log-probs of the distribution
            actually sampled from — after temperature, and after top-k/top-p truncation when
            those are on — so with top_p=1 they equal `token_logprobs(..., temperature)`.
            "raw_logprobs" gives the untempered model distribution (vLLM's own default).
        distributed_executor_backend: "auto" (uni for TP 1, mp for TP > 1), "uni", "mp" or "ray"
            (module docstring).
        cpu_binding: VLLM_CPU_OMP_THREADS_BIND for an "mp" engine on CPU (default: from
            `cpu_thread_binding` with `cpus` and `cpu_slot`; a value the environment already holds
            with one entry per worker wins).
        cpus, cpu_slot: the CPUs the engine's actor was given and its bundle index in its placement
            group (rlsys/distributed/runtime.py actor_cpu_share); None, 0 outside Ray.
        ray_bundle_indices: "ray" executor: the bundles of the actor's placement group the TP
            workers take (VLLM_RAY_BUNDLE_INDICES); default 0..TP-1.
        llm_kwargs: passed to vllm.LLM unchanged (e.g. enable_prefix_caching, max_num_seqs).
        """
        if kv_cache_space_gib is not None:
            # vLLM reads whole GiB ("1.0" fails its int parse).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_space_gib)))))
        tp = int(tensor_parallel_size)
        self.executor = executor_backend(tp, distributed_executor_backend)
        self.tensor_parallel_size = tp
        if self.executor == "uni":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        else:
            # Worker processes (and vLLM's engine core process) for every TP rank. Set here, not
            # only in the actor's runtime env, which keeps TP-1 engines in-process.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        if self.executor == "ray" and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            # The actor holds no GPU itself (its workers take the bundles): Ray hid every GPU from
            # it, and vLLM would then not find its GPU platform (vLLM's RLHF example does the same).
            os.environ.pop("CUDA_VISIBLE_DEVICES")
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
            if self.executor == "mp":
                given = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
                if cpu_binding is None and (given in ("auto", "") or len(given.split("|")) != tp):
                    cpu_binding = cpu_thread_binding(tp, cpus=cpus, slot=cpu_slot)
                if cpu_binding is not None:
                    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding
            elif self.executor == "ray":
                raise ValueError("distributed_executor_backend = 'ray' on CPU: vLLM's Ray executor needs GPUs "
                                 "(\"current platform cpu does not support ray\"); use 'mp'")
        if self.executor == "ray":
            indices = list(ray_bundle_indices) if ray_bundle_indices is not None else list(range(tp))
            if len(indices) != tp or len(set(indices)) != tp:
                raise ValueError(f"ray_bundle_indices = {indices}: need {tp} distinct bundle indices")
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(str(i) for i in indices)
        llm_kwargs.setdefault("distributed_executor_backend", self.executor)
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
        self._reload_in_workers(tensors)
        self._invalidate_caches()
        self.policy_version = self.policy_version + 1 if policy_version is None else int(policy_version)
        return time.perf_counter() - t0

    def load_bucket(self, named_tensors: Iterable[tuple[str, Any]], policy_version: Optional[int] = None) -> float:
        """Reload one bucket of whole vLLM layers now (a `bucketize` bucket: q/k/v, gate/up and
        weight+bias of a module together); layers not in it keep their weights. No staging: the
        caller sends whole layers. `policy_version` (when given) applies after this bucket; the
        caches are dropped after each. Returns seconds taken."""
        t0 = time.perf_counter()
        if self._staged:
            raise RuntimeError(f"load_bucket: a staged update of {len(self._staged)} tensors is in progress")
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
        reports = self.llm.collective_rpc("rlsys_receive_weights", args=(digest,))
        versions = {r.version for r in reports}
        if len(versions) != 1:
            raise RuntimeError(f"weight sync: the workers of one engine hold versions {sorted(versions)}")
        self._staged = []
        self._invalidate_caches()
        self.policy_version = int(versions.pop()) if policy_version is None else int(policy_version)
        return list(reports)

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
