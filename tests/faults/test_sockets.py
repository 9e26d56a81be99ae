"""Nobody from outside gets in: every TCP listener of the private Ray that `rlsys train` starts.

The Ray is started exactly as `rlsys train` starts it (`launch.cluster.connect` with a config whose
`resources.address` is null). Into it go a plain actor, two learner-like ranks that open the
torch.distributed default group through the real `actors.init_torch_distributed` (the DeepSpeed
env rendezvous: rank 0 hosts a TCPStore at MASTER_ADDR:MASTER_PORT, both ranks open gloo pairs),
and the real weight-sync pair (`WeightSyncSender` on learner rank 0, `WeightSyncReceiver` in an
engine-like actor) with one transfer through it. While all of that is open, `ss -ltnp` lists every
listening TCP socket of the driver and of every process under it (GCS, raylet, dashboard agent,
runtime-env agent, monitor, workers, actors); each must be bound to a loopback address.
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

pytestmark = pytest.mark.timeout(300)


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


class Plain:
    def pid(self) -> int:
        return os.getpid()


class LearnerRank:
    """What a learner rank does about sockets: the env rendezvous of the default group through
    the real `init_torch_distributed`, and on rank 0 the weight-sync sender."""

    def __init__(self, rank: int, world: int, master_addr: str, master_port: int):
        from actors import init_torch_distributed
        from rlsys.specs import DistRank

        self.rank = rank
        self.backend = init_torch_distributed(DistRank(rank, world, master_addr, master_port), "gloo")
        self.sender = None

    def all_reduce(self) -> float:
        import torch
        import torch.distributed as dist

        t = torch.ones(1) * (self.rank + 1)
        dist.all_reduce(t)
        return float(t.item())

    def weight_sync_address(self) -> tuple[str, int]:
        from actors import free_port, node_ip

        host = node_ip()
        return host, free_port(host)

    def init_sender(self, host: str, port: int, world: int) -> None:
        from rlsys.distributed.weight_sync import WeightSyncSender

        self.sender = WeightSyncSender(host, port, world, backend="gloo", bucket_mb=64.0, timeout_s=60)

    def send(self, version: int) -> int:
        import torch

        return self.sender.send([("w", torch.arange(6, dtype=torch.float32))], version).tensors


class Engine:
    def init_receiver(self, host: str, port: int, world: int, rank: int) -> None:
        from rlsys.distributed.weight_sync import WeightSyncReceiver

        self.receiver = WeightSyncReceiver(host, port, world, rank, backend="gloo", timeout_s=60)

    def receive(self) -> list:
        return [(n, t.tolist()) for n, t in self.receiver.receive()]


@pytest.fixture
def private_ray():
    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (iproute2)")
    import ray
    from ray import cloudpickle

    assert not ray.is_initialized(), "another Ray is connected in this process; run this test on its own"
    # The actor classes below travel by value: workers cannot import a test module by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from launch.cluster import connect
    from rlsys.config import load_config

    cfg = load_config(None, ["resources.num_cpus=4"])
    assert cfg.resources.address is None  # the private local Ray of `rlsys train`
    handle = connect(cfg)
    try:
        yield ray
    finally:
        handle.shutdown()


def test_every_listener_of_the_private_ray_is_on_loopback(private_ray):
    ray = private_ray
    t0 = time.perf_counter()
    plain = [ray.remote(num_cpus=0)(Plain).remote() for _ in range(2)]
    ray.get([p.pid.remote() for p in plain])

    # The learner ranks' default-group rendezvous: a port on rank 0's node, as launch/roles does.
    @ray.remote(num_cpus=0)
    def rendezvous():
        from actors import free_port, node_ip

        host = node_ip()
        return host, free_port(host)

    master_addr, master_port = ray.get(rendezvous.remote())
    ranks = [ray.remote(num_cpus=0)(LearnerRank).remote(r, 2, master_addr, master_port) for r in range(2)]
    assert ray.get([r.all_reduce.remote() for r in ranks], timeout=180) == [3.0, 3.0]

    # Weight sync: learner rank 0 hosts the store, one engine-like receiver (rank 1).
    sync_host, sync_port = ray.get(ranks[0].weight_sync_address.remote())
    engine = ray.remote(num_cpus=0)(Engine).remote()
    ray.get([ranks[0].init_sender.remote(sync_host, sync_port, 2),
             engine.init_receiver.remote(sync_host, sync_port, 2, 1)], timeout=120)
    received = engine.receive.remote()
    assert ray.get(ranks[0].send.remote(1), timeout=60) == 1
    assert ray.get(received, timeout=60) == [("w", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])]

    pids = _ray_pids()
    rows = _listeners(pids)
    names = {name for _, name, _, _ in rows}
    ports = {port for *_, port in rows}
    # The listing must see the Ray it is about, or the check below proves nothing.
    assert {"gcs_server", "raylet"} <= names, rows
    assert {master_port, sync_port} <= ports, (master_port, sync_port, rows)
    offending = [f"{name} (pid {pid}: {pids[pid]}) on {host}:{port}"
                 for pid, name, host, port in rows if not _is_loopback(host)]
    listing = "\n  ".join(f"{host}:{port}  {name} pid {pid}" for pid, name, host, port in rows)
    assert not offending, (f"{len(offending)} of {len(rows)} listeners of the private Ray accept "
                           f"connections from outside this machine:\n  " + "\n  ".join(offending)
                           + f"\nall listeners:\n  {listing}")
    print(f"\n{len(rows)} listeners of {len(pids)} processes, all on loopback "
          f"({time.perf_counter() - t0:.1f} s of actors)\n  {listing}")
