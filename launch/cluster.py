"""Connecting to Ray: the only place rlsys calls ray.init."""
from __future__ import annotations

import os

from rlsys.config import RunConfig


def runtime_env_vars(cfg: RunConfig) -> dict[str, str]:
    """Environment every actor gets. vLLM runs in the actor's own process on CPU (no engine
    subprocess) and serialises nothing insecurely; tokenizers must not fork-spin on 2 cores."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(cfg.rollout.cpu_kv_cache_gib)))),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": cfg.logging.wandb if cfg.logging.wandb != "disabled" else "disabled",
        "RAY_DEDUP_LOGS": "1",
        # vLLM's CPU worker logs a thread-binding warning on every forward; errors still show.
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
    }
    for key in ("OMP_NUM_THREADS", "RLSYS_CACHE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def connect(cfg: RunConfig):
    """Joins `resources.address`, or starts a private local Ray bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return ray
    env = runtime_env_vars(cfg)
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # A private single-node Ray on loopback; with this flag Ray binds every listener to
        # 127.0.0.1 instead of the machine's interface address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=cfg.resources.num_cpus or max(4, os.cpu_count() or 1),
                 include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=True,
                 _node_ip_address="127.0.0.1")
    return ray
