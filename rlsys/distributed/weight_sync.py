"""Learner -> rollout-engine weight transfer over a standalone collective group.

The group is built from its own `TCPStore` + `ProcessGroupGloo` (NCCL on GPU) so it never
touches the default process group that DeepSpeed (learner) or vLLM (engine) initialised in
the same process. Rank 0 is the sender (learner rank 0); ranks 1..W-1 are receivers: every vLLM worker of every
rollout engine (engine e's TP worker t is rank 1 + sum of the TP sizes of engines before e + t,
so W = 1 + sum of TP sizes). Each worker joins from inside vLLM, through the worker extension
(rlsys/models/worker_extension.py), and reloads each bucket as it arrives. Every transfer is versioned; a
receiver reports the version it holds.

Wire format of one transfer, all by `broadcast` from rank 0:
  for each bucket: header length [1] int64, header (pickled dict) uint8, payload uint8
  then an end header {"version": v, "end": True} with no payload.
A bucket holds whole fused groups (`fused_group`: q/k/v of one attention, gate/up of one MLP,
weight and bias of one module) whose bytes total <= bucket_mb (a larger group travels alone), so
a receiver can load each bucket into vLLM's fused layers as soon as it arrives; tensors are packed as raw bytes at 16-byte aligned offsets, so any dtype mix fits one buffer
and the receiver can view each tensor in place without a copy.

Object-store fallback (no direct connectivity): `bucketize(named_tensors, bucket_mb)` gives
lists of (name, tensor) that the caller passes through Ray one bucket at a time.

Sockets: torch's TCPStore server listens on every interface (`*`) whatever host it is given, and
gloo binds to the address the machine's hostname resolves to. When the group's host is a loopback
address (a private local run: every member is on this machine) `tcp_store` binds the server's
socket to that address itself and the gloo device is bound to it too, so nothing of the group
accepts connections from outside this machine. On a real cluster (host = the node's address) both
keep torch's defaults.
"""
from __future__ import annotations

import hashlib
import ipaddress
import pickle
import socket
import time
from datetime import timedelta
from typing import Iterable, Iterator

import torch

from rlsys.protocol import SyncStats

NamedTensor = tuple[str, torch.Tensor]
_ALIGN = 16  # byte alignment of each tensor inside a bucket (covers every dtype's itemsize)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": an address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_interface() -> str:
    """Name of the interface that holds 127.0.0.1 ("lo" on Linux), for GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME in a private local run."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    return "lo"


def tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: timedelta):
    """A `torch.distributed.TCPStore` whose server (on the master) listens on `host` only when
    `host` is a loopback address; otherwise torch's default (every interface).

    torch (2.13) has no bind-address option: the master's socket is bound and listening here,
    then handed over with `master_listen_fd` (the store owns and closes it).
    """
    import torch.distributed as dist

    if not (is_master and is_loopback(host)):
        return dist.TCPStore(host, port, world_size, is_master, timeout=timeout)
    bind_host = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    # The store owns the descriptor from here on and closes it when it is destroyed.
    return dist.TCPStore(host, port, world_size, True, timeout=timeout, master_listen_fd=sock.detach())


def gloo_group(store, rank: int, world_size: int, timeout: timedelta, host: str):
    """A `ProcessGroupGloo` whose pair sockets are bound to `host` when it is a loopback address
    (gloo's default device binds to whatever the hostname resolves to)."""
    import torch.distributed as dist

    if not is_loopback(host):
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(store, rank, world_size, opts)


# HF sub-modules vLLM fuses into one layer (its `packed_modules_mapping` for Qwen2/2.5-VL, Llama
# and most decoder models): a bucket never splits such a set.
FUSED_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                 "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def fused_group(name: str) -> str:
    """The load unit of an HF parameter name in vLLM: its module, with q/k/v and gate/up
    mapped to the fused module vLLM builds from them.

    >>> fused_group("model.layers.3.self_attn.k_proj.bias")
    'model.layers.3.self_attn.qkv_proj'
    """
    module, _, _ = name.rpartition(".")
    parent, _, leaf = module.rpartition(".")
    if leaf in FUSED_MODULES:
        return f"{parent}.{FUSED_MODULES[leaf]}"
    return module


def bucketize(named_tensors: Iterable[NamedTensor], bucket_mb: float,
              group_key=fused_group) -> Iterator[list[NamedTensor]]:
    """Group a stream of (name, tensor) into lists whose tensors total <= bucket_mb MiB, never
    splitting a group (`group_key(name)`: by default a vLLM fused layer; a group bigger than
    `bucket_mb` is one bucket of its own). `group_key=None`: every tensor is its own group.

    Lazy: at most one bucket (plus the group being collected) is held at a time, so a ZeRO-3
    gather stream stays bounded. A group's tensors must come one after another (a module's
    parameters do, in `named_parameters()` order); a group that comes back after another one
    raises, as its bucket could not be loaded on its own.
    """
    limit = int(bucket_mb * 2**20)
    bucket: list[NamedTensor] = []
    size = 0
    group: list[NamedTensor] = []
    group_size = 0
    key = None
    done: set = set()
    for name, t in named_tensors:
        k = group_key(name) if group_key is not None else object()
        if group and k != key:
            if bucket and size + group_size > limit:
                yield bucket
                bucket, size = [], 0
            bucket.extend(group)
            size += group_size
            done.add(key)
            group, group_size = [], 0
        if group_key is not None and k in done:
            raise ValueError(f"weight sync: {name!r} of group {k!r} comes after other groups; a fused "
                             "layer's tensors must be sent one after another")
        key = k
        group.append((name, t))
        group_size += t.numel() * t.element_size()
    if group:
        if bucket and size + group_size > limit:
            yield bucket
            bucket = []
        bucket.extend(group)
    if bucket:
        yield bucket


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes as a flat uint8 view (copies only if non-contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


class StreamDigest:
    """`tensors_digest` computed tensor by tensor as a stream goes by (holds one sha256 per name)."""

    def __init__(self):
        self.per_name: list[tuple[str, str]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_as_bytes(t.cpu()).numpy().tobytes())
        self.per_name.append((name, h.hexdigest()))

    def wrap(self, named_tensors: Iterable[NamedTensor]) -> Iterator[NamedTensor]:
        for name, t in named_tensors:
            self.add(name, t)
            yield name, t

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for name, d in sorted(self.per_name):
            total.update(f"{name}={d};".encode())
        return total.hexdigest()


def tensors_digest(named_tensors: Iterable[NamedTensor]) -> str:
    """Order-independent sha256 over names, dtypes, shapes and exact bytes.

    Two sides holding bit-identical weights give the same digest, whatever order they saw
    them in; per-tensor digests are combined sorted by name, so memory stays O(#tensors).
    """
    d = StreamDigest()
    for name, t in named_tensors:
        d.add(name, t)
    return d.hexdigest()


def _open_group(host: str, port: int, world_size: int, rank: int, backend: str, timeout_s: float):
    """A process group private to weight sync; rank 0 hosts the TCPStore.

    The constructor blocks until all `world_size` members have connected, so the driver must
    start the sender's and every receiver's setup concurrently (not one after the other).
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = tcp_store(host, port, world_size, rank == 0, timeout)
    # Prefix so keys never collide with anything else sharing the store.
    store = dist.PrefixStore("rlsys_weight_sync", store)
    if backend == "gloo":
        return gloo_group(store, rank, world_size, timeout, host), torch.device("cpu")
    if backend == "nccl":
        # NCCL only moves CUDA tensors; each process uses its current CUDA device.
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        device = torch.device("cuda", torch.cuda.current_device())
        return dist.ProcessGroupNCCL(store, rank, world_size, opts), device
    raise ValueError(f"weight sync backend must be 'gloo' or 'nccl', got {backend!r}")


def _broadcast(pg, t: torch.Tensor) -> None:
    pg.broadcast(t, 0).wait()


def _send_obj(pg, device, obj) -> None:
    raw = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    _broadcast(pg, torch.tensor([raw.numel()], dtype=torch.int64, device=device))
    _broadcast(pg, raw.to(device))


def _recv_obj(pg, device):
    n = torch.zeros(1, dtype=torch.int64, device=device)
    _broadcast(pg, n)
    raw = torch.empty(int(n.item()), dtype=torch.uint8, device=device)
    _broadcast(pg, raw)
    return pickle.loads(raw.cpu().numpy().tobytes())


class WeightSyncSender:
    """Rank 0 of the weight-sync group (lives in learner rank 0).

    host/port: where this process hosts the group's TCPStore (its own node, a free port).
    world_size: 1 + number of receivers.
    """

    def __init__(self, host: str, port: int, world_size: int, *, bucket_mb: float, backend: str = "gloo",
                 timeout_s: float = 600.0):
        self.bucket_mb = bucket_mb
        self.world_size = world_size
        self.pg, self.device = _open_group(host, port, world_size, 0, backend, timeout_s)

    def send(self, named_tensors: Iterable[NamedTensor], version: int) -> SyncStats:
        """Broadcast all tensors (any iterable; consumed lazily, bucket by bucket)."""
        t0 = time.perf_counter()
        n_tensors = n_buckets = n_bytes = 0
        for bucket in bucketize(named_tensors, self.bucket_mb):
            entries, offset = [], 0
            for name, t in bucket:
                nbytes = t.numel() * t.element_size()
                entries.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
                offset += -(-nbytes // _ALIGN) * _ALIGN
            payload = torch.empty(offset, dtype=torch.uint8, device=self.device)
            for (name, t), (_, _, _, off) in zip(bucket, entries):
                b = _as_bytes(t)
                payload[off:off + b.numel()].copy_(b)
            _send_obj(self.pg, self.device, {"version": version, "end": False,
                                             "entries": entries, "nbytes": offset})
            _broadcast(self.pg, payload)
            n_tensors += len(bucket)
            n_buckets += 1
            n_bytes += offset
        _send_obj(self.pg, self.device, {"version": version, "end": True})
        return SyncStats(version, n_tensors, n_buckets, n_bytes, time.perf_counter() - t0)


class WeightSyncReceiver:
    """A member (rank >= 1) of the weight-sync group: a vLLM worker (through the worker extension,
    rlsys/models/worker_extension.py) or any process that takes the learner's weights.

    `version` is -1 until a transfer completes, then the version of the weights received.
    `last_bytes` / `peak_buffer_bytes`: payload bytes of the last transfer, and the most payload
    bytes this receiver held at once in it (one bucket, plus the next while it arrives).
    """

    def __init__(self, host: str, port: int, world_size: int, rank: int, *,
                 backend: str = "gloo", timeout_s: float = 600.0):
        if not 1 <= rank < world_size:
            raise ValueError(f"receiver rank must be in [1, {world_size}), got {rank}")
        self.rank = rank
        self.version = -1
        self.last_bytes = 0
        self.peak_buffer_bytes = 0
        self.pg, self.device = _open_group(host, port, world_size, rank, backend, timeout_s)

    def receive(self) -> Iterator[NamedTensor]:
        """Yield (HF name, tensor) of one transfer, bucket by bucket, as they arrive.

        Must be consumed to the end (e.g. by vLLM's `reload_weights`): the group is
        collective, a half-read transfer leaves it out of step with the sender. Yielded
        tensors are views of a per-bucket buffer that is never reused, so they stay valid;
        the buffer is freed once its views are (this generator drops it before the next).
        """
        self.last_bytes = self.peak_buffer_bytes = 0
        while True:
            header = _recv_obj(self.pg, self.device)
            if header["end"]:
                self.version = int(header["version"])
                return
            payload = torch.empty(header["nbytes"], dtype=torch.uint8, device=self.device)
            _broadcast(self.pg, payload)
            self.last_bytes += header["nbytes"]
            self.peak_buffer_bytes = max(self.peak_buffer_bytes, header["nbytes"])
            for name, dtype, shape, off in header["entries"]:
                dt = getattr(torch, dtype)
                numel = 1
                for s in shape:
                    numel *= s
                nbytes = numel * torch.empty((), dtype=dt).element_size()
                yield name, payload[off:off + nbytes].view(dt).view(shape)
            del payload
