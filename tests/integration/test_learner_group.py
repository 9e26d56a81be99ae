"""DeepSpeed learner ranks as Ray actors on the tiny Qwen2.5-VL model (CPU, gloo).

What is proved here:
- ZeRO-0 (the default run's stage), ZeRO-2 and ZeRO-3, 2 ranks: one train_step changes the
  parameters and both ranks report the same (global) loss; the train/inference mismatch is measured before the update; a NaN in
  the batch skips the step and leaves parameters untouched; a checkpoint restores parameters
  and optimizer state (the step after loading equals the step after saving, bit for bit).
- A 2-rank step on an uneven split (3 + 2 samples, different lengths) gives the same gradient
  norm, loss and update as a 1-rank step on the whole batch: global-count aggregation works.
- With one optimizer step per train step the proximal log-probs come from the training forward,
  and the step equals the one with a separate no-grad pass, bit for bit.
- Weight sync from a ZeRO-3 group to a receiver actor reproduces the parameters exactly, under
  the HF checkpoint's names; the object-store fallback does too.
- A compute actor's torch threads are the CPUs Ray gave it, whatever OMP_NUM_THREADS its
  worker process carries.
"""
from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.integration

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
COMMON = dict(lr=1e-3, dtype="float32", micro_batch_size=2, grad_clip=1.0, seed=0,
              kl_coef=0.05, entropy_coef=0.01, max_is_weight=2.0)


@pytest.fixture(scope="module")
def ray_local():
    from launch.cluster import start_local_ray

    # Workers must import rlsys/actors and this file's receiver class.
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")])
    ray = start_local_ray(num_cpus=4, log_to_driver=False)  # every listener on 127.0.0.1
    yield ray
    ray.shutdown()


def make_samples(model_dir, n, seed=0):
    """n TrainSamples: chat prompt with a drawn image, random response of 3..8 tokens."""
    import hashlib
    import io

    import torch
    from PIL import Image, ImageDraw

    from rlsys.models.forward import prompt_token_ids
    from rlsys.models.loading import load_processor
    from rlsys.protocol import MediaItem, Prompt, TrainSample

    proc = load_processor(model_dir)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = Image.new("RGB", (84, 84), "white")
        draw = ImageDraw.Draw(img)
        for k in range(i % 3 + 1):
            draw.ellipse([10 + 20 * k, 30, 26 + 20 * k, 46], fill=(200, 30 * k, 40))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        media = MediaItem(hashlib.sha256(buf.getvalue()).hexdigest(), buf.getvalue(), 84, 84)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Count the dots ({i})."}]}]
        prompt = torch.tensor(prompt_token_ids(proc, Prompt(f"t:{i}", msgs, [media])))
        r = int(torch.randint(3, 9, (1,), generator=g))
        resp = torch.randint(10, 300, (r,), generator=g)
        out.append(TrainSample(
            input_ids=torch.cat([prompt, resp]), response_start=len(prompt), images=[media],
            old_logprobs=torch.full((r,), -6.0), advantages=torch.full((r,), float(torch.randn(1, generator=g))),
            ref_logprobs=-6.0 + 0.2 * torch.randn(r, generator=g), group_index=i // 2))
    return out


def trainer_and_rest(model_dir, options: dict):
    """(TrainerSpec of `options`' trainer fields, the remaining options)."""
    from dataclasses import fields

    from rlsys.specs import TrainerSpec

    names = {f.name for f in fields(TrainerSpec)}
    trainer = TrainerSpec(model_dir, **{k: v for k, v in options.items() if k in names})
    return trainer, {k: v for k, v in options.items() if k not in names}


def start_dp_group(ray, actor_cls, spec, world):
    """`world` ranks of a learner-like actor on a free loopback port; waits until all are up."""
    from actors import free_port
    from rlsys.specs import DistRank

    Actor = ray.remote(num_cpus=1)(actor_cls)
    port = free_port()
    group = [Actor.remote(spec, DistRank(r, world, "127.0.0.1", port)) for r in range(world)]
    ray.get([a.ready.remote() for a in group])
    return group


def start_group(ray, model_dir, world, **kw):
    from actors.learner import LearnerActor
    from rlsys.specs import LearnerSpec

    trainer, rest = trainer_and_rest(model_dir, dict(COMMON, **kw))
    return start_dp_group(ray, LearnerActor, LearnerSpec(trainer, **rest), world)


def on_all(ray, group, method, *per_rank_args):
    """Call `method` on every rank at once (a collective); per_rank_args[i] = args of rank i."""
    args = per_rank_args or [()] * len(group)
    return ray.get([getattr(a, method).remote(*x) for a, x in zip(group, args)])


def shard(samples, world):
    from rlsys.protocol import TrainBatch

    k = -(-len(samples) // world)
    return [(TrainBatch(samples[i * k:(i + 1) * k]),) for i in range(world)]


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_two_rank_step_nan_skip_and_checkpoint(ray_local, tiny_model_dir, tmp_path, zero_stage):
    import copy

    import torch

    ray = ray_local
    group = start_group(ray, str(tiny_model_dir), 2, zero_stage=zero_stage)
    samples = make_samples(str(tiny_model_dir), 6)
    # Behaviour log-probs = the learner's own minus 0.05: the mismatch report must see it.
    lps = on_all(ray, group, "compute_logprobs", *[(b.samples,) for (b,) in shard(samples, 2)])
    for s, lp in zip(samples, lps[0] + lps[1]):
        s.old_logprobs = lp - 0.05
    d0 = on_all(ray, group, "params_digest")[0]

    m = on_all(ray, group, "train_step", *shard(samples, 2))
    print(f"\nZeRO-{zero_stage} rank losses {m[0].policy_loss!r} {m[1].policy_loss!r}, "
          f"grad_norm {m[0].grad_norm:.6f}, mismatch {m[0].mismatch_abs_mean:.6f}")
    assert m[0].policy_loss == m[1].policy_loss and m[0].grad_norm == m[1].grad_norm
    assert m[0].skipped == 0 and m[0].samples == 6 and m[0].grad_norm > 0
    assert abs(m[0].mismatch_abs_mean - 0.05) < 1e-5 and abs(m[0].mismatch_ratio_mean - torch.exp(torch.tensor(0.05)).item()) < 1e-5
    d1 = on_all(ray, group, "params_digest")
    assert d1[0] == d1[1] != d0

    # NaN in one rank's advantages: the step is skipped on both ranks, parameters unchanged.
    bad = copy.deepcopy(samples)
    bad[4].advantages[1] = float("nan")
    m = on_all(ray, group, "train_step", *shard(bad, 2))
    assert m[0].skipped == 1 and m[1].skipped == 1
    assert on_all(ray, group, "params_digest")[0] == d1[0]

    # Checkpoint: the step after loading == the step after saving (params + Adam state + LR).
    ckpt = str(tmp_path / "ckpt")
    on_all(ray, group, "save_checkpoint", (ckpt,), (ckpt,))
    on_all(ray, group, "train_step", *shard(samples, 2))
    d2 = on_all(ray, group, "params_digest")[0]
    on_all(ray, group, "train_step", *shard(samples, 2))  # move further away
    on_all(ray, group, "load_checkpoint", (ckpt,), (ckpt,))
    assert on_all(ray, group, "params_digest")[0] == d1[0]
    on_all(ray, group, "train_step", *shard(samples, 2))
    assert on_all(ray, group, "params_digest")[0] == d2
    for a in group:
        ray.kill(a)


def test_two_ranks_equal_one_rank(ray_local, tiny_model_dir):
    """Uneven shards (3 + 2), 2 micro-batches vs 3 on the single rank, token_mean loss."""
    ray = ray_local
    samples = make_samples(str(tiny_model_dir), 5, seed=1)
    for s in samples:
        s.old_logprobs = s.ref_logprobs.clone()
    one = start_group(ray, str(tiny_model_dir), 1, zero_stage=2)
    m1 = on_all(ray, one, "train_step", *shard(samples, 1))[0]
    p1 = dict(ray.get(ray.get(one[0].weight_bucket_refs.remote(1e6)))[0])
    ray.kill(one[0])
    two = start_group(ray, str(tiny_model_dir), 2, zero_stage=2)
    m2 = on_all(ray, two, "train_step", *shard(samples, 2))[0]
    p2 = dict(ray.get(on_all(ray, two, "weight_bucket_refs", (1e6,), (1e6,))[0])[0])
    for a in two:
        ray.kill(a)
    print(f"\n1-rank loss {m1.policy_loss:.8f} grad_norm {m1.grad_norm:.8f}; "
          f"2-rank loss {m2.policy_loss:.8f} grad_norm {m2.grad_norm:.8f}")
    assert abs(m1.policy_loss - m2.policy_loss) < 1e-6
    assert abs(m1.grad_norm - m2.grad_norm) < 1e-5 * m1.grad_norm
    assert m1.tokens == m2.tokens and m1.kl == pytest.approx(m2.kl, abs=1e-6)
    # Adam's first step is ~lr * sign(g): where |g| ~ eps, summation-order noise in g moves
    # single entries by a fraction of lr, so compare the updates as a whole (L2) and bound
    # the worst entry by a small fraction of lr. The gradient norm above is the sharp check.
    from safetensors.torch import load_file

    p0 = load_file(os.path.join(str(tiny_model_dir), "model.safetensors"))
    num = sum(((p1[n] - p2[n]) ** 2).sum().item() for n in p1) ** 0.5
    den = sum(((p1[n] - p0[n]) ** 2).sum().item() for n in p1) ** 0.5
    worst = max((p1[n] - p2[n]).abs().max().item() for n in p1)
    print(f"update |d1 - d2| / |d1| = {num / den:.3e}; max entry diff {worst:.3e} (lr {COMMON['lr']})")
    assert num / den < 1e-3 and worst < 0.05 * COMMON["lr"]


class ProximalSwitch:
    """A learner rank whose proximal-policy source can be switched (see the test below)."""

    def __init__(self, spec, dist):
        from actors.learner import LearnerActor

        self.actor = LearnerActor(spec, dist)

    def ready(self):
        return self.actor.ready()

    def set_proximal_from_training_forward(self, flag: bool) -> bool:
        """-> the learner's own choice before the switch."""
        own = self.actor.learner.proximal_from_training_forward
        self.actor.learner.proximal_from_training_forward = flag
        return own

    def train_step(self, batch):
        return self.actor.train_step(batch)

    def params_digest(self):
        return self.actor.params_digest()


def test_proximal_from_training_forward_equals_separate_pass(ray_local, tiny_model_dir):
    """One optimizer step per train step and no dropout: the learner reads pi_old off the
    training forward instead of a separate no-grad pass, and the step is the same one: loss,
    clip and IS statistics, mismatch report and the new weights, bit for bit."""
    from rlsys.protocol import TrainBatch
    from rlsys.specs import LearnerSpec

    ray = ray_local
    samples = make_samples(str(tiny_model_dir), 6, seed=2)
    for s in samples:  # behaviour != learner: the IS weights, the ratio and the mismatch all matter
        s.old_logprobs = s.ref_logprobs.clone()
    trainer, rest = trainer_and_rest(str(tiny_model_dir), COMMON)
    out = {}
    for flag in (True, False):
        (a,) = start_dp_group(ray, ProximalSwitch, LearnerSpec(trainer, **rest), 1)
        assert ray.get(a.set_proximal_from_training_forward.remote(flag)) is True  # its own choice here
        out[flag] = ray.get(a.train_step.remote(TrainBatch(samples))), ray.get(a.params_digest.remote())
        ray.kill(a)
    (reused, d_reused), (separate, d_separate) = out[True], out[False]
    for name in ("policy_loss", "kl", "entropy", "clip_frac", "approx_kl", "grad_norm", "is_weight_clip_frac",
                 "mismatch_abs_mean", "mismatch_abs_max", "mismatch_ratio_mean"):
        assert getattr(reused, name) == getattr(separate, name), name
    assert reused.mismatch_abs_mean > 0.05 and d_reused == d_separate
    # More than one optimizer step per train step: the pass is needed, and the learner knows it.
    trainer2, _ = trainer_and_rest(str(tiny_model_dir), dict(COMMON, ppo_epochs=2))
    (b,) = start_dp_group(ray, ProximalSwitch, LearnerSpec(trainer2, **rest), 1)
    assert ray.get(b.set_proximal_from_training_forward.remote(False)) is False
    ray.kill(b)


class Receiver:
    """Stands in for a rollout actor: holds a WeightSyncReceiver, digests what arrives."""

    def init(self, host, port, world, rank):
        from rlsys.distributed.weight_sync import WeightSyncReceiver

        self.rx = WeightSyncReceiver(host, port, world, rank)

    def receive(self):
        from rlsys.distributed.weight_sync import tensors_digest

        t0 = time.perf_counter()
        got = [(n, t.clone()) for n, t in self.rx.receive()]
        return tensors_digest(got), self.rx.version, sorted(n for n, _ in got), time.perf_counter() - t0


def test_weight_sync_zero3(ray_local, tiny_model_dir):
    from safetensors import safe_open

    from rlsys.distributed.weight_sync import tensors_digest

    ray = ray_local
    group = start_group(ray, str(tiny_model_dir), 2, zero_stage=3)
    on_all(ray, group, "train_step", *shard(make_samples(str(tiny_model_dir), 4), 2))
    rx = ray.remote(num_cpus=1)(Receiver).remote()
    host, port = ray.get(group[0].weight_sync_address.remote())
    # The group forms only when all members join: start them together.
    ray.get([a.init_weight_sync.remote(host, port, 2, "gloo", 0.5) for a in group]
            + [rx.init.remote(host, port, 2, 1)])
    fut = rx.receive.remote()
    stats = on_all(ray, group, "sync_weights", (3,), (3,))[0]
    digest, version, names, rx_s = ray.get(fut)
    learner_digest = on_all(ray, group, "params_digest")[0]
    print(f"\nsync: {stats.bytes / 2**20:.2f} MiB in {stats.buckets} buckets, "
          f"sender {stats.seconds:.3f} s, receiver {rx_s:.3f} s")
    assert digest == learner_digest and version == 3 and stats.tensors == len(names)
    with safe_open(os.path.join(str(tiny_model_dir), "model.safetensors"), "pt") as f:
        ckpt_names = set(f.keys())
    assert set(names) == ckpt_names  # HF checkpoint names: what vLLM's loader expects
    # Object-store fallback: buckets through Ray reproduce the same tensors.
    buckets = ray.get(on_all(ray, group, "weight_bucket_refs", (0.5,), (0.5,))[0])
    assert len(buckets) > 1 and tensors_digest([nt for b in buckets for nt in b]) == learner_digest
    for a in group + [rx]:
        ray.kill(a)


class ThreadProbe:
    """An actor that sets its torch threads as the compute actors do (actors.set_torch_threads)."""

    def __init__(self):
        from actors import set_torch_threads

        self.set_to = set_torch_threads()

    def threads(self) -> tuple:
        import torch

        return self.set_to, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_actor_torch_threads_follow_its_cpus_not_a_stale_omp_setting(ray_local, tiny_model_dir):
    """A worker whose OMP_NUM_THREADS (read by OpenMP when torch loads) disagrees with the CPUs
    Ray gave the actor, as in a reused pooled worker, still computes on the actor's CPUs."""
    ray = ray_local
    stale_2 = ray.remote(num_cpus=1)(ThreadProbe).options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}}).remote()
    stale_1 = ray.remote(num_cpus=2)(ThreadProbe).options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}).remote()
    assert ray.get(stale_2.threads.remote()) == (1, 1, "2")
    assert ray.get(stale_1.threads.remote()) == (2, 2, "1")
    ray.kill(stale_2)
    ray.kill(stale_1)
    (learner,) = start_group(ray, str(tiny_model_dir), 1)  # num_cpus=1, as start_dp_group gives
    assert ray.get(learner.ready.remote()).torch_threads == 1
    ray.kill(learner)
