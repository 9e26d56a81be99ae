"""Weight sync, learner rank 0 -> every vLLM worker of one engine, at TP 1 and TP 2, by either path:
`collective` (a gloo broadcast into the workers) or `object_store` (rank 0 `ray.put`s each bucket
once, the engine pulls it by reference and loads it into every worker).

Real Ray (local, 127.0.0.1), one learner rank (DeepSpeed, gloo) and one vLLM engine actor in a
placement group bundle of TP CPUs, the tiny Qwen2.5-VL model (float32). The broadcast group is
opened as rlsys opens it (1 + sum of TP ranks); each sync is timed from the driver (both sides'
calls out until both return), after one warm-up sync. Memory: each receiving process's peak RSS
during one sync (Linux VmHWM, reset just before it) minus its RSS before, per MB of weights: the
engine actor's process and, with TP > 1, each worker process (at TP 1 the worker is the actor).

    .venv/bin/python bench/weight_sync.py [--tp 1,2] [--syncs 5] [--bucket-mb 64] [--size tiny]
        [--path collective|object_store] [--label after] [--json out.json]
        [--out docs/results/weight_sync.md]

Runs against whatever rlsys is on PYTHONPATH first (also an older checkout: it only uses
open_weight_sync / receive_weights / sync_weights, and the new per-worker memory probes when
present), so a before/after comparison is two runs. About 1.5 min per TP value on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _proc_mem(self=None) -> dict:
    """RSS and peak RSS (VmHWM) of the calling process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssShmem:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return {"rss_mb": out["VmRSS"], "hwm_mb": out["VmHWM"], "shmem_mb": out.get("RssShmem", 0.0)}


def _reset_hwm(self=None) -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _param_bytes(self) -> int:
    """Bytes of the learner's weights (runs inside the learner actor)."""
    return sum(p.numel() * p.element_size() for _, p in self.learner.named_parameters_for_sync())


def run_tp(tp: int, syncs: int, bucket_mb: float, size: str, path: str = "collective") -> dict:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors import free_port
    from actors.learner import LearnerActor
    from actors.rollout import RolloutActor
    from launch.cluster import runtime_env_vars, start_local_ray
    from rlsys.config import load_config
    from rlsys.models.tiny import ensure_tiny_model
    from rlsys.specs import DistRank, role_specs

    cache = os.path.join(os.path.expanduser("~"), ".cache", "rlsys", "test-models")
    model = str(ensure_tiny_model(size, seed=0, cache_dir=cache))
    cfg = load_config(ROOT / "configs/default.yaml", [
        f"rollout.tensor_parallel_size={tp}", f"resources.cpus_per_engine={tp}", "resources.cpus_per_learner=1",
        f"learner.sync_bucket_mb={bucket_mb}", "logging.wandb=disabled"])
    specs = role_specs(cfg, model)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    rt = start_local_ray(num_cpus=max(4, tp + 2), log_to_driver=False)
    try:
        env = runtime_env_vars(cfg)
        pg = placement_group([{"CPU": 1}, {"CPU": tp}])
        ray.get(pg.ready())

        def opts(bundle, cpus):
            return {"num_cpus": cpus, "runtime_env": {"env_vars": env},
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)}

        learner = ray.remote(LearnerActor).options(**opts(0, 1)).remote(
            specs.learner, DistRank(0, 1, "127.0.0.1", free_port()))
        engine = ray.remote(RolloutActor).options(**opts(1, tp)).remote(specs.engine)
        ray.get([learner.__ray_ready__.remote(), engine.__ray_ready__.remote()])
        new_api = hasattr(RolloutActor, "workers_memory_mb")
        if path == "collective":
            host, port = ray.get(learner.weight_sync_address.remote())
            world = 1 + tp
            ray.get([learner.init_weight_sync.remote(host, port, world, "gloo", bucket_mb),
                     engine.open_weight_sync.remote(host, port, world, 1, "gloo")])

        weight_bytes = ray.get(learner.__ray_call__.remote(_param_bytes)) if path == "object_store" else None

        def sync(version):
            t0 = time.perf_counter()
            if path == "collective":
                stats, _ = ray.get([learner.sync_weights.remote(version), engine.receive_weights.remote()])
                return time.perf_counter() - t0, (stats.bytes, stats.buckets, stats.seconds)
            # As RoleGroups._load_buckets does it: the driver only passes the refs along.
            refs = ray.get(learner.weight_bucket_refs.remote(bucket_mb))
            for k, ref in enumerate(refs):
                ray.get(engine.load_bucket.remote(ref, version, k == len(refs) - 1))
            seconds = time.perf_counter() - t0
            return seconds, (weight_bytes, len(refs), None)  # (bytes, buckets, sender seconds)

        sync(1)  # warm-up
        # Memory of one sync: each receiving process's peak RSS during it minus its RSS before.
        driver_before = _proc_mem()
        _reset_hwm()
        actor_before = ray.get(engine.__ray_call__.remote(_proc_mem))
        workers_before = ray.get(engine.workers_memory_mb.remote()) if new_api and tp > 1 else []
        ray.get(engine.__ray_call__.remote(_reset_hwm))
        if new_api and tp > 1:
            ray.get(engine.reset_peak_memory.remote())
        seconds, stats = sync(2)
        driver_after = _proc_mem()
        actor_after = ray.get(engine.__ray_call__.remote(_proc_mem))
        workers_after = ray.get(engine.workers_memory_mb.remote()) if new_api and tp > 1 else []
        times = [seconds] + [sync(v)[0] for v in range(3, 2 + syncs)]
        weights_mb = stats[0] / 2**20
        row = {"path": path, "tp": tp, "size": size, "weights_mb": weights_mb, "buckets": stats[1], "bucket_mb": bucket_mb,
               "syncs": len(times), "seconds_median": statistics.median(times), "seconds_min": min(times),
               "sender_seconds": stats[2],
               "actor_extra_mb": actor_after["hwm_mb"] - actor_before["rss_mb"]}
        row["actor_mb_per_weight_mb"] = row["actor_extra_mb"] / weights_mb
        # Shared pages (the object store's arena, /dev/shm) the actor mapped during the sync:
        # part of its RSS, but not a private copy; Ray keeps the arena mapped after an object is freed.
        row["actor_shmem_mb_per_weight_mb"] = (actor_after["shmem_mb"] - actor_before["shmem_mb"]) / weights_mb
        row["driver_mb_per_weight_mb"] = (driver_after["hwm_mb"] - driver_before["rss_mb"]) / weights_mb
        if workers_after:
            extra = [a.hwm_mb - b.rss_mb for a, b in zip(workers_after, workers_before)]
            row["worker_extra_mb"] = extra
            row["worker_mb_per_weight_mb"] = [e / weights_mb for e in extra]
        if new_api and path == "collective":
            row["worker_peak_buffer_mb"] = [r.peak_buffer_mb for r in ray.get(engine.last_sync.remote())]
        for a in (learner, engine):
            ray.kill(a)
        remove_placement_group(pg)
        return row
    finally:
        rt.shutdown()


HEADER = """# Weight sync: learner -> every vLLM worker, TP 1 and TP 2 (CPU, gloo)

Written by `bench/weight_sync.py` (its docstring says how it measures). One learner rank
(DeepSpeed, float32) and one engine actor in a placement-group bundle of TP CPUs, the tiny
Qwen2.5-VL model, a private Ray on 127.0.0.1, 2 CPU cores shared with the other roles.

- *path*: `collective` (gloo broadcast from learner rank 0 into every worker, each reloading the
  buckets as they arrive) or `object_store` (rank 0 `ray.put`s each bucket once; the engine actor
  pulls it by reference and loads it into every worker: at TP 1 directly, at TP > 1 through one
  file in /dev/shm that the workers map).
- *sync s*: driver-observed seconds of one sync, median over the syncs after a warm-up one;
  *sender s*: the learner's own time (collective path).
- *peak extra MB / weight MB*: peak RSS during one sync (VmHWM, reset just before) minus RSS
  before it, per MB of weights sent, for the engine actor process and (TP > 1) each vLLM worker.
  At TP 1 the worker is the actor's process. A full second copy of the model would show as >= 1.
  *driver*: the same for the driver process, which only passes object refs along. *of which
  shared*: the growth of the actor's RssShmem over the sync (object-store and /dev/shm pages it
  mapped: counted in RSS, shared with the object store, not a private copy of the weights).
- *largest bucket held*: the largest bucket payload a worker held (buckets are whole fused
  layers, loaded as they arrive).
- *before*: the same bench against the previous commit (sync group of engine actors, the actor
  stages the whole model and hands it to the worker in one `collective_rpc`).

"""


def render(rows: list[dict]) -> str:
    out = [HEADER + "| label | path | TP | weights MB | buckets (bucket MB) | sync s (median of n) | min s | sender s | "
           "engine actor peak extra MB / weight MB (of which shared) | per worker peak extra MB / weight MB | driver peak extra MB / weight MB "
           "| largest bucket held MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        workers = ", ".join(f"{v:.2f}" for v in r.get("worker_mb_per_weight_mb", [])) or "(worker = actor)"
        held = ", ".join(f"{v:.2f}" for v in r.get("worker_peak_buffer_mb", [])) or "n/a"
        sender = "n/a" if r.get("sender_seconds") is None else f"{r['sender_seconds']:.3f}"
        shared = f" ({r['actor_shmem_mb_per_weight_mb']:.2f})" if "actor_shmem_mb_per_weight_mb" in r else ""
        driver = f"{r['driver_mb_per_weight_mb']:.2f}" if "driver_mb_per_weight_mb" in r else "n/a"
        out.append(f"| {r.get('label', '')} | {r.get('path', 'collective')} | {r['tp']} | {r['weights_mb']:.2f} | {r['buckets']} ({r['bucket_mb']:g}) "
                   f"| {r['seconds_median']:.3f} ({r['syncs']}) | {r['seconds_min']:.3f} | {sender} "
                   f"| {r['actor_mb_per_weight_mb']:.2f}{shared} | {workers} | {driver} | {held} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--syncs", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--label", default="")
    ap.add_argument("--path", default="collective", choices=["collective", "object_store"])
    ap.add_argument("--json", default=None, help="append the rows (JSON lines) here")
    ap.add_argument("--out", default=None, help="write the table of every row in --json (or these) here")
    args = ap.parse_args(argv)
    rows = []
    for tp in [int(t) for t in args.tp.split(",")]:
        row = run_tp(tp, args.syncs, args.bucket_mb, args.size, args.path)
        row["label"] = args.label
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        rows = [json.loads(line) for line in Path(args.json).read_text().splitlines()]
    if args.out:
        Path(args.out).write_text(render(rows))
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
