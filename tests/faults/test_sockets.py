"""Nobody from outside gets in: every TCP listener of the private Ray that `rlsys train` starts,
and of the real roles in it.

The Ray is started exactly as `rlsys train` starts it (`launch.cluster.connect` with a config whose
`resources.address` is null), and the roles exactly as it starts them (`launch.roles.start_roles`):
the vLLM rollout engine (`actors.rollout.RolloutActor`), the DeepSpeed learner
(`actors.learner.LearnerActor`, its default group's store on rank 0), the reward and reference
actors, and the learner -> engine weight-sync group. One collective weight sync and one generate
call go through them. While all of that is open, `ss -ltnp` lists every listening TCP socket of
the driver and of every process under it (GCS, raylet, agents, monitor, workers, the role
actors); each must be bound to a loopback address.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(600)


def _host_port(local: str) -> tuple[str, int]:
    """`ss` local address -> (host, port): '127.0.0.1:5', '[::ffff:127.0.0.1]:5', '*:5', '[::1]:5'."""
    host, _, port = local.rpartition(":")
    host = host.strip("[]").split("%", 1)[0]  # drop brackets and an interface scope (%lo)
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:  # '*' (every interface) or a name
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # [::ffff:127.0.0.1]: a dual-stack socket bound to 127.0.0.1
    return addr.is_loopback


def _ray_pids() -> dict[int, str]:
    """pid -> short command line of this driver and every process under it: with a private
    Ray, GCS, raylet, agents and monitor are its children and the workers the raylet's."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            out[p.pid] = " ".join(p.cmdline()).strip()[:90] or p.name()
        except psutil.Error:
            pass
    return out


def _listeners(pids: dict[int, str]) -> list[tuple[int, str, str, int]]:
    """(pid, process, host, port) of every listening TCP socket (IPv4 and IPv6) of `pids`."""
    text = subprocess.run(["ss", "-H", "-l", "-t", "-n", "-p"], capture_output=True, text=True,
                          check=True).stdout
    rows = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        host, port = _host_port(fields[3])
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+),', line):
            if int(pid) in pids:
                rows.add((int(pid), name, host, port))
    return sorted(rows)


def _pid(actor) -> int:
    """The process of an actor (run through `__ray_call__`)."""
    return os.getpid()


@pytest.fixture
def private_ray(tmp_path, task_data):
    """-> (ray, cfg): the private Ray of `rlsys train` for a small run's config."""
    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (iproute2)")
    import ray
    from ray import cloudpickle

    from launch.cluster import connect
    from loop_config import small_loop_config

    assert not ray.is_initialized(), "another Ray is connected in this process; run this test on its own"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # `_pid` travels by value
    cfg = small_loop_config(task_data, tmp_path / "out", 2, 2,
                            ["resources.num_cpus=4", "learner.weight_sync=collective"])
    assert cfg.resources.address is None  # the private local Ray of `rlsys train`
    handle = connect(cfg)
    try:
        yield ray, cfg
    finally:
        handle.shutdown()


def test_every_listener_of_the_real_roles_is_on_loopback(private_ray, tiny_model_dir, task_data):
    from launch.evaluate import load_split
    from launch.roles import start_roles

    ray, cfg = private_ray
    t0 = time.perf_counter()
    roles = start_roles(cfg, str(tiny_model_dir))
    try:
        assert roles.sync_weights(1) > 0  # through the learner's broadcast group into the engine
        groups = roles.generate(load_split(cfg, task_data[1])[:2], roles.eval_sampling)
        assert len(groups) == 2 and all(r.policy_version == 1 for g in groups for r in g.rollouts)
        engine, learner = roles.rollout.actors[0], roles.learner.actors[0]
        role_pids = {"engine": ray.get(engine.__ray_call__.remote(_pid)),
                     "learner": ray.get(learner.__ray_call__.remote(_pid))}
        (worker,) = ray.get(engine.workers_info.remote())  # TP 1: vLLM's worker is the actor itself
        assert worker.pid == role_pids["engine"]

        pids = _ray_pids()
        rows = _listeners(pids)
    finally:
        roles.shutdown()
    names = {name for _, name, _, _ in rows}
    by_pid = {pid: [(host, port) for p, _, host, port in rows if p == pid] for pid in role_pids.values()}
    # The listing must see the Ray and the roles it is about, or the check below proves nothing.
    assert {"gcs_server", "raylet"} <= names, rows
    assert set(role_pids.values()) <= set(pids), (role_pids, pids)
    # Both roles hold sockets of their own: the learner its default group's and the weight-sync
    # stores, the engine vLLM's process group and the sync group's gloo pairs.
    assert by_pid[role_pids["learner"]] and by_pid[role_pids["engine"]], (role_pids, rows)
    offending = [f"{name} (pid {pid}: {pids[pid]}) on {host}:{port}"
                 for pid, name, host, port in rows if not _is_loopback(host)]
    listing = "\n  ".join(f"{host}:{port}  {name} pid {pid}" for pid, name, host, port in rows)
    assert not offending, (f"{len(offending)} of {len(rows)} listeners of the private Ray accept "
                           f"connections from outside this machine:\n  " + "\n  ".join(offending)
                           + f"\nall listeners:\n  {listing}")
    print(f"\n{len(rows)} listeners of {len(pids)} processes, all on loopback; engine (pid "
          f"{role_pids['engine']}): {by_pid[role_pids['engine']]}, learner (pid {role_pids['learner']}): "
          f"{by_pid[role_pids['learner']]} ({time.perf_counter() - t0:.1f} s)\n  {listing}")
