"""The vLLM worker extension (`worker_extension_cls`): named methods every worker of an engine
runs through `collective_rpc` (no pickled callables, so no VLLM_ALLOW_INSECURE_SERIALIZATION),
and the /proc memory readings they report.

Weight sync happens inside every worker (`rlsys_open_weight_sync` / `rlsys_receive_weights`): each
joins the learner's broadcast group with its own rank and reloads the buckets as they arrive
(rlsys/distributed/weight_sync.py). The object-store path hands whole layers to
`rlsys_reload_weights` (in process) or `rlsys_reload_weights_file` (worker processes).
"""
from __future__ import annotations

import os

from rlsys.protocol import WorkerInfo, WorkerMemory, WorkerSyncReport

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
        engine hands weights to worker processes (rlsys/models/executor.py `write_handoff`). Memory-mapped, so the
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

        peak = peak_memory_mb()
        return WorkerMemory(rank=int(self.rank), host_mb=peak.host_mb, rss_mb=rss_mb(), hwm_mb=peak_rss_mb(),
                            gpu_mb=peak.gpu_mb)

    def rlsys_reset_peak_memory(self) -> None:
        reset_peak_rss()

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


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux: VmHWM, which getrusage's ru_maxrss does not follow;
    rlsys/memory.py's figure stays the lifetime peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), MiB."""
    return _status_mb("VmHWM")



def as_records(cls, replies: list) -> list:
    """Workers' replies as the records they returned: vLLM's message queue to worker processes
    ("mp" executor) sends a dataclass as a map of its fields (and tuples as lists); in-process
    workers' replies are the records themselves."""
    return [r if isinstance(r, cls) else cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
            for r in replies]


EXTENSION = f"{__name__}.WeightReloadExtension"
