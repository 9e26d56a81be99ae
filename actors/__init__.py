"""Thin Ray actor classes: plain Python classes, one method per remote call, wrapped with
`ray.remote(...)` only where they are launched (so they are testable without Ray).

Shared helper: the torch.distributed environment a DeepSpeed rank reads at init.
"""
from __future__ import annotations

import os
import socket


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


def init_torch_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                           backend: str = "auto") -> str:
    """Set the env and open the default process group through DeepSpeed; -> the backend."""
    import torch

    set_dist_env(rank, world_size, master_addr, master_port)
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)
    return backend


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
