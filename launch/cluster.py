"""Connecting to Ray: the only place rlsys calls ray.init.

With `resources.address` null, `connect` starts a private single-node Ray that accepts connections
from this machine only: Ray binds every listener of every process (GCS, raylet, object manager,
workers and actors, dashboard agent, runtime-env agent, monitor) to 127.0.0.1 exactly when the
node's address is 127.0.0.1, and the actors' own rendezvous (DeepSpeed's default group, the
weight-sync group) bind to loopback when their host is loopback (actors/__init__.py,
rlsys/distributed/weight_sync.py). tests/faults/test_sockets.py checks it with `ss -ltnp`.
"""
from __future__ import annotations

import os

from rlsys.config import RunConfig

LOOPBACK = "127.0.0.1"
# Ray reads this once, when `ray` is first imported: on (the Linux default) it replaces a node
# address of 127.0.0.1 by the machine's interface address, and then every listener binds to `*`.
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def runtime_env_vars(cfg: RunConfig) -> dict[str, str]:
    """Environment every actor gets. vLLM runs in the actor's own process on CPU (no engine
    subprocess) and serialises nothing insecurely; tokenizers must not fork-spin on 2 cores.
    In a Ray on this machine only, the collective libraries and vLLM use the loopback interface."""
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
    if _local_only(cfg):
        env.update(loopback_env())
    return env


def loopback_env() -> dict[str, str]:
    """Env that keeps gloo, NCCL and vLLM on the loopback interface (their defaults pick the
    hostname's or the first non-loopback interface's address). A value already set wins."""
    from rlsys.distributed.weight_sync import loopback_interface

    lo = loopback_interface()
    env = {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo, "VLLM_HOST_IP": LOOPBACK}
    return {k: os.environ.get(k, v) for k, v in env.items()}


def _local_only(cfg: RunConfig) -> bool:
    """True when every node of the run's Ray is this machine on loopback: the private Ray
    `connect` starts, or a caller's Ray (tests) whose node address is loopback."""
    import ray

    if ray.is_initialized():
        from rlsys.distributed.weight_sync import is_loopback

        return is_loopback(ray.util.get_node_ip_address())
    return not cfg.resources.address


class LocalRay:
    """The private Ray started by `start_local_ray`; `shutdown()` stops it (Ray's own shutdown:
    GCS, raylet, agents and workers end with it) and restores what it changed in this process.

    Other attributes are the `ray` module's, so `ray = connect(cfg)` ... `ray.shutdown()` keeps
    working. Its processes are children of this one and end with it also when this process is
    killed with SIGKILL: GCS, raylet and workers within ~3 s (kernel fate sharing), the dashboard
    and runtime-env agents ~60 s later (they first try, for Ray's fixed 60 s, to report the raylet's
    death to the dead GCS).
    """

    def __init__(self, saved: dict):
        self._saved = saved

    def __getattr__(self, name):
        import ray

        return getattr(ray, name)

    def shutdown(self) -> None:
        import ray
        from ray._private import ray_constants

        ray.shutdown()
        saved, self._saved = self._saved, None
        if saved is None:
            return
        ray_constants.ENABLE_RAY_CLUSTER = saved["constant"]
        for key, value in saved["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _token_file_for_user_only() -> None:
    """With RAY_AUTH_MODE=token and no token anywhere, create ~/.ray/auth_token readable by the
    user alone (mode 0600) before Ray does: Ray 2.60 writes it with the umask's mode (0644)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    import secrets
    from pathlib import Path

    path = Path.home() / ".ray" / "auth_token"
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def start_local_ray(num_cpus: int, env_vars: dict[str, str] | None = None,
                    log_to_driver: bool = True) -> LocalRay:
    """A private single-node Ray whose every listener is bound to 127.0.0.1 (checked).

    Ray 2.60 binds its gRPC servers to 127.0.0.1 only when the node address is exactly
    "127.0.0.1", but it rewrites a loopback `_node_ip_address` to the interface address when
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER was not 0 at `import ray` time, which in a driver has
    usually happened long before this call. So the variable is set for the processes Ray starts
    and the value this process read is overridden for the duration of the cluster.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        raise RuntimeError("start_local_ray: this process is already connected to a Ray")
    saved = {"constant": ray_constants.ENABLE_RAY_CLUSTER,
             "env": {k: os.environ.get(k) for k in (_CLUSTER_ENV, "RAY_AUTH_MODE")}}
    os.environ[_CLUSTER_ENV] = "0"  # GCS, raylet, agents and workers read it at start
    # Loopback listeners are the protection here; a user who sets RAY_AUTH_MODE=token gets token
    # authentication on top (other users of this machine can reach loopback ports too).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    _token_file_for_user_only()
    ray_constants.ENABLE_RAY_CLUSTER = False
    handle = LocalRay(saved)
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {**loopback_env(), **(env_vars or {})}},
                 log_to_driver=log_to_driver, _node_ip_address=LOOPBACK)
        node_ip = ray.util.get_node_ip_address()
        gcs_host = ray.get_runtime_context().gcs_address.rpartition(":")[0]
        if node_ip != LOOPBACK or gcs_host != LOOPBACK:
            raise RuntimeError(f"private Ray is not on loopback: node {node_ip}, GCS {gcs_host}; "
                               "its listeners would accept connections from other machines")
    except BaseException:
        handle.shutdown()
        raise
    return handle


def connect(cfg: RunConfig):
    """Joins `resources.address`, or starts a private local Ray bound to 127.0.0.1.

    Returns the `ray` module (joined or already-connected Ray) or a `LocalRay` (private Ray);
    both have `.shutdown()`, which the caller calls for the private one.
    """
    import ray

    if ray.is_initialized():
        return ray
    env = runtime_env_vars(cfg)
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, runtime_env={"env_vars": env}, log_to_driver=True)
        return ray
    return start_local_ray(cfg.resources.num_cpus or max(4, os.cpu_count() or 1), env, log_to_driver=True)
