"""A tensor-parallel (TP = 2) vLLM engine on CPU, inside a Ray actor in rlsys's placement, with
the weight sync done inside every vLLM worker (issue 15).

One run of roles for the whole module (a TP-2 engine costs ~40 s to start on 2 cores): the
engine's workers are their own processes on cores of their own; a GRPO step trains and syncs;
then a verified sync shows every worker received exactly the learner's weights, and the next
step's behaviour log-probs (the synced engine) match the learner's.
"""
from __future__ import annotations

import os

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
B, G, TP = 2, 4, 2
LOGPROB_TOL = 2e-3


@pytest.fixture(scope="module")
def run(ray_cluster, task_data, tiny_model_dir, tmp_path_factory):
    from launch.roles import start_roles

    out = tmp_path_factory.mktemp("tp_run")
    cfg = small_loop_config(task_data, out, B, G, [
        f"rollout.tensor_parallel_size={TP}", f"resources.cpus_per_engine={TP}", f"rollout.max_num_seqs={G}",
        "checkpoint.export_hf=false", "learner.sync_bucket_mb=0.25"])
    roles = start_roles(cfg, str(tiny_model_dir))
    yield cfg, roles, out
    roles.shutdown()


def test_tp2_engine_runs_its_workers_on_cores_of_their_own(run):
    import ray

    from rlsys.protocol import Prompt

    _, roles, _ = run
    engine = roles.rollout.actors[0]
    actor_pid = ray.get(engine.__ray_call__.remote(lambda self: os.getpid()))
    workers = ray.get(engine.workers_info.remote())
    assert [w.rank for w in workers] == list(range(TP))
    pids = {w.pid for w in workers}
    assert len(pids) == TP and actor_pid not in pids  # worker processes, not the actor
    cores = [set(w.cores) for w in workers]
    assert all(cores) and not set.intersection(*cores), cores  # each worker on its own core(s)
    assert ray.get(engine.sync_ranks.remote()) == TP
    prompts = [Prompt(f"p{i}", [{"role": "user", "content": f"What is {i} plus {i}?"}]) for i in range(2)]
    from rlsys.specs import SamplingSpec

    groups = ray.get(engine.generate.remote(prompts, SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)))
    assert [g.prompt.uid for g in groups] == ["p0", "p1"]
    for g in groups:
        assert len(g.rollouts) == 2
        for r in g.rollouts:
            assert len(r.behaviour_logprobs) == len(r.response_token_ids) > 0


def test_grpo_step_then_sync_into_every_worker(run, task_data):
    import json

    import ray

    from launch.evaluate import load_split
    from rlsys.driver import Driver

    cfg, roles, out = run
    engine = roles.rollout.actors[0]
    before = ray.get(engine.weight_checksums.remote())
    driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), out)
    driver.run()  # 2 steps: train, sync into both workers, generate with the synced engine, train
    rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    after = ray.get(engine.weight_checksums.remote())
    assert len(before) == len(after) == TP and all(a != b for a, b in zip(after, before))
    # Step 2's samples came from the engine after step 1's sync: the learner agrees with them.
    assert rows[2]["policy/version"] == 2 and rows[2]["learner/mismatch_abs_max"] < LOGPROB_TOL, rows[2]

    # A verified sync: every worker hashes the tensors it received and reloaded.
    learners = roles.learner.actors
    version = ray.get(learners[0].policy_version.remote())
    refs = [a.sync_weights.remote(version) for a in learners]
    ray.get(refs + [engine.receive_weights.remote(True)])
    digest = ray.get([a.params_digest.remote() for a in learners])[0]
    reports = ray.get(engine.last_sync.remote())
    assert sorted(r.rank for r in reports) == list(range(1, 1 + TP))
    assert all(r.digest == digest and r.version == version for r in reports), (digest, reports)
    # Buckets of <= 0.25 MiB (whole fused layers) were loaded as they came: no worker held more
    # than the largest bucket, far less than the model.
    total_mb = reports[0].bytes / 2**20
    assert all(r.peak_buffer_mb < total_mb / 2 for r in reports), (total_mb, reports)
    assert ray.get(engine.policy_version.remote()) == version


def test_object_store_path_pulls_by_reference(run, tiny_model_dir, monkeypatch):
    """The lean object-store path into the same TP-2 engine: learner rank 0 puts each bucket once,
    the engine pulls it by ref and loads it into both workers; the driver only ever gets refs."""
    import ray
    import torch

    _, roles, _ = run
    engine, learners = roles.rollout.actors[0], roles.learner.actors
    synced = ray.get(engine.weight_checksums.remote())  # the learner's weights (previous test)

    def back_to_disk(self):
        from rlsys.distributed.weight_sync import bucketize
        from rlsys.models.loading import load_policy

        named = load_policy(str(tiny_model_dir), dtype="float32").named_parameters()
        for bucket in bucketize([(n, p.detach()) for n, p in named], 1.0):
            self.engine.load_bucket(bucket)

    ray.get(engine.__ray_call__.remote(back_to_disk))
    assert ray.get(engine.weight_checksums.remote()) != synced
    got, real_get = [], ray.get

    def spy(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        got.append(out)
        return out

    def holds_tensor(x) -> bool:
        if isinstance(x, torch.Tensor):
            return True
        if isinstance(x, (list, tuple)):
            return any(holds_tensor(v) for v in x)
        if isinstance(x, dict):
            return any(holds_tensor(v) for v in x.values())
        return False

    version = ray.get(learners[0].policy_version.remote())
    monkeypatch.setattr(ray, "get", spy)
    roles._load_buckets([engine], version)
    monkeypatch.setattr(ray, "get", real_get)
    bucket_refs = got[0][0]
    assert len(bucket_refs) > 1 and all(isinstance(r, ray.ObjectRef) for r in bucket_refs)
    assert not any(holds_tensor(x) for x in got), "the driver deserialised weights"
    assert ray.get(engine.weight_checksums.remote()) == synced  # every worker: the learner's weights
    assert ray.get(engine.policy_version.remote()) == version
