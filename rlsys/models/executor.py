"""How an engine runs its workers: the vLLM executor it uses, the environment that choice needs,
the cores of CPU workers, and the /dev/shm file that hands weights to worker processes.

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

VLLM_CPU_KVCACHE_SPACE=<GiB> comes from `kv_cache_space_gib`. No Ray here: the actor's CPUs and
bundle index arrive as plain values (rlsys/distributed/runtime.py reads them).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

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



def prepare_executor(tensor_parallel_size: int, requested: str, kv_cache_space_gib: Optional[float]) -> str:
    """Set the environment the engine's executor needs before vLLM is imported; -> the executor."""
    if kv_cache_space_gib is not None:
        # vLLM reads whole GiB ("1.0" fails its int parse).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_space_gib)))))
    executor = executor_backend(int(tensor_parallel_size), requested)
    if executor == "uni":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    else:
        # Worker processes (and vLLM's engine core process) for every TP rank. Set here, not
        # only in the actor's runtime env, which keeps TP-1 engines in-process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    if executor == "ray" and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        # The actor holds no GPU itself (its workers take the bundles): Ray hid every GPU from
        # it, and vLLM would then not find its GPU platform (vLLM's RLHF example does the same).
        os.environ.pop("CUDA_VISIBLE_DEVICES")
    return executor


def configure_platform(executor: str, tensor_parallel_size: int, llm_kwargs: dict,
                       cpu_binding: Optional[str] = None, cpus: Optional[float] = None, cpu_slot: int = 0,
                       ray_bundle_indices: Optional[Sequence[int]] = None) -> None:
    """What vLLM's platform (known once vLLM is imported) needs for `executor`: `llm_kwargs`
    completed in place, the CPU workers' cores and the Ray executor's bundles in the environment.
    cpu_binding, cpus, cpu_slot, ray_bundle_indices: as VLLMEngine takes them."""
    from vllm.platforms import current_platform

    tp = int(tensor_parallel_size)
    if current_platform.is_cpu():
        # vLLM 0.32 rewinds a seeded request's generator after a partial (chunked) prefill
        # with Generator.set_offset, which CPU generators lack ("CPU Generator does not use
        # offset"): seeded sampling on CPU needs whole-prompt prefills.
        llm_kwargs.setdefault("enable_chunked_prefill", False)
        if executor == "mp":
            given = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
            if cpu_binding is None and (given in ("auto", "") or len(given.split("|")) != tp):
                cpu_binding = cpu_thread_binding(tp, cpus=cpus, slot=cpu_slot)
            if cpu_binding is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding
        elif executor == "ray":
            raise ValueError("distributed_executor_backend = 'ray' on CPU: vLLM's Ray executor needs GPUs "
                             "(\"current platform cpu does not support ray\"); use 'mp'")
    if executor == "ray":
        indices = list(ray_bundle_indices) if ray_bundle_indices is not None else list(range(tp))
        if len(indices) != tp or len(set(indices)) != tp:
            raise ValueError(f"ray_bundle_indices = {indices}: need {tp} distinct bundle indices")
        os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(str(i) for i in indices)
    llm_kwargs.setdefault("distributed_executor_backend", executor)
