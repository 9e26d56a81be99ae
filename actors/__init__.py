"""Thin Ray actor classes: plain Python classes, one method per remote call, wrapped with
`ray.remote(...)` only where they are launched (so they are testable without Ray).

Shared helpers: the torch.distributed environment a DeepSpeed rank reads at init, and the
torch thread count of an actor that computes with torch itself (not through vLLM).
"""
from __future__ import annotations

import os
import socket


def set_torch_threads() -> int:
    """Give torch as many intra-op threads as the CPUs Ray assigned this actor (their floor, at
    least 1); returns the count. Outside Ray torch's own setting stays.

    Ray only sets OMP_NUM_THREADS where it is unset, and an actor may start in a pooled worker
    that loaded torch, and so OpenMP's thread count, under an earlier task's setting. The count,
    and with it the float summation order, then depends on which worker the actor got (the
    likely cause of a resumed run's gradient norm once differing from the uninterrupted run's
    in its last bits, in CI; not reproduced)."""
    import torch

    from rlsys.distributed.runtime import actor_cpu_share

    cpus, _ = actor_cpu_share()
    if cpus is not None:
        torch.set_num_threads(max(1, int(cpus)))
    return torch.get_num_threads()


def set_dist_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Env that `deepspeed.init_distributed` / torch's env:// rendezvous read.

    LOCAL_RANK is 0: Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so the actor's
    device is always cuda:0 (and on CPU it is unused). Set before deepspeed is imported.
    """
    os.environ.update({
        "MASTER_ADDR": str(master_addr), "MASTER_PORT": str(master_port),
        "RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    })


def init_torch_distributed(dist, backend: str = "auto") -> str:
    """Set the env of `dist` (an rlsys.specs.DistRank) and open the default process group
    through DeepSpeed; -> the backend."""
    import torch

    set_dist_env(dist.rank, dist.world_size, dist.master_addr, dist.master_port)
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)
    from rlsys.distributed.weight_sync import is_loopback

    if is_loopback(str(dist.master_addr)):
        _init_default_group_on_loopback(dist, backend)
    import deepspeed

    # Joins a default group opened above (DeepSpeed then only wraps it), else opens it by env://.
    deepspeed.init_distributed(dist_backend=backend)
    return backend


def _init_default_group_on_loopback(dist, backend: str) -> None:
    """Open the default group of a group whose ranks are all on this machine (MASTER_ADDR is
    loopback) so that it listens on loopback only.

    torch's env:// rendezvous starts rank 0's TCPStore on every interface, and gloo/NCCL bind
    to the hostname's or the first non-loopback interface's address; here rank 0's store is
    bound to MASTER_ADDR and the collectives are pinned to the loopback interface (unless
    GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME are set already).
    """
    import torch
    import torch.distributed as td
    from deepspeed.constants import default_pg_timeout

    from rlsys.distributed.weight_sync import loopback_interface, tcp_store

    lo = loopback_interface()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", lo)
    store = tcp_store(str(dist.master_addr), int(dist.master_port), dist.world_size, dist.rank == 0,
                      default_pg_timeout)
    kwargs = {}
    if backend == "nccl" and dist.world_size > 1:
        kwargs["device_id"] = torch.device("cuda", 0)  # as DeepSpeed passes it for CUDA
    td.init_process_group(backend, store=store, rank=dist.rank, world_size=dist.world_size,
                          timeout=default_pg_timeout, **kwargs)


def node_ip() -> str:
    """This node's address as Ray sees it (127.0.0.1 in local tests); no Ray -> loopback."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return "127.0.0.1"


def node_id() -> str | None:
    """Ray's id of the node this process runs on (hex); None outside Ray. Lets the driver and tests
    see where the placement group actually put a role."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on this node now (for a rendezvous this process will host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
