"""The content-addressed media store on a real Ray (127.0.0.1), vLLM engine, reward, reference and
DeepSpeed learner, with images as large as the tiny model's pixel budget (112x112 noise, the PNG
size of an incompressible image at that budget, ~37 KB).

(a) offload: the driver's prompts hold no PNG bytes; the object store holds one object per
    distinct image, though each image is in two prompts and in both splits; a process fetches
    each image once (later lookups hit its cache) and gets the exact bytes back.
(b) a generate + reward + training step + weight sync through the roles works on ref-form
    prompts; the groups returned to the driver carry no bytes; the learner's log-probs of
    ref-form samples equal those of byte-holding ones (the actors resolve to the same pixels).
    (The reference and critic actors resolve with the same call; the loop tests run them.)
(c) the driver's memory for one step's groups and train batch is flat in G: growth per extra
    sample is far below one image's PNG size; with bytes inline the driver holds every image.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SIDE = 112  # the tiny model's max_pixels = 112 * 112: images at the full budget
DISTINCT, REPEATS = 3, 2  # 3 images, each in 2 prompts -> 6 prompts per batch


@pytest.fixture(scope="module")
def media_data(tmp_path_factory):
    """A JSONL split whose 6 rows use 3 noise images (each image in two rows)."""
    d = tmp_path_factory.mktemp("media_data")
    rng = np.random.default_rng(0)
    for k in range(DISTINCT):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(d / f"img{k}.png")
    rows = [{"prompt": f"How many shapes are there? ({i})", "images": [f"img{i % DISTINCT}.png"], "answer": "1"}
            for i in range(DISTINCT * REPEATS)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl"


@pytest.fixture(scope="module")
def cfg(media_data, tmp_path_factory):
    from rlsys.config import load_config

    return load_config(ROOT / "configs/default.yaml", [
        "total_steps=2", f"sampling.prompts_per_step={DISTINCT * REPEATS}", "rollout.n=2",
        "rollout.max_new_tokens=8", "learner.micro_batch_size=8",
        "logging.wandb=disabled", "logging.progress_bar=false", "eval.before_and_after=false",
        "resources.cpus_per_engine=1", "resources.cpus_per_learner=1",
        "reward.components=[{name: accuracy, weight: 1.0}]",
        f"data.train={media_data}", f"data.test={media_data}",
        f"output_dir={tmp_path_factory.mktemp('out')}"])


@pytest.fixture(scope="module")
def roles(ray_cluster, tiny_model_dir, cfg):
    from launch.roles import start_roles

    roles = start_roles(cfg, str(tiny_model_dir))
    yield roles
    roles.shutdown()


@pytest.fixture(scope="module")
def byte_prompts(cfg, media_data):
    from launch.evaluate import load_split

    prompts = load_split(cfg, media_data)
    assert len(prompts) == DISTINCT * REPEATS and all(p.images[0].png for p in prompts)
    return prompts


def _distinct(prompts) -> dict:
    return {m.sha256: m for p in prompts for m in p.images}


def test_offload_stores_each_image_once(roles, cfg, byte_prompts, tmp_path):
    from rlsys.distributed.media_store import ImageCache, object_store_usage, resolve_prompts
    from rlsys.driver import Driver
    from rlsys.protocol import Rollout, RolloutGroup
    from rlsys.sampling import ReplaySampler

    distinct = _distinct(byte_prompts)
    png_bytes = sum(len(m.png) for m in distinct.values())
    assert len(distinct) == DISTINCT and png_bytes > DISTINCT * 30_000  # ~37 KB each
    objects0, bytes0 = object_store_usage()
    # The Driver offloads the train and the test split (the same 3 images in both), and moves
    # replayed groups joined to the byte-holding prompts (as launch reads them) to the offloaded ones.
    rollout = Rollout([1], [2], "x", [-0.1], "stop", 0)
    replay = ReplaySampler([RolloutGroup(p, [rollout, rollout]) for p in byte_prompts], seed=0)
    driver = Driver(cfg, roles, byte_prompts, byte_prompts, tmp_path, replay=replay)
    prompts = driver.sampler.items
    for p in list(prompts) + list(driver.test_prompts) + [g.prompt for g in driver.replay.items]:
        assert all(m.png is None and m.ref is not None for m in p.images), p.uid
    assert len(roles.media) == DISTINCT and roles.media.bytes_put == png_bytes
    # The same image in two prompts (and in both splits) is one object ref.
    refs = {m.ref.hex() for p in list(prompts) + list(driver.test_prompts) for m in p.images}
    assert len(refs) == DISTINCT
    deadline = time.time() + 10
    while object_store_usage()[0] < objects0 + DISTINCT and time.time() < deadline:
        time.sleep(0.2)
    objects1, bytes1 = object_store_usage()
    assert objects1 - objects0 == DISTINCT, (objects0, objects1)
    assert png_bytes <= bytes1 - bytes0 < png_bytes + 64 * 1024 * DISTINCT
    # Offloading again (e.g. a second Driver on the same roles) puts nothing new.
    roles.offload_media(byte_prompts)
    assert roles.media.bytes_put == png_bytes and object_store_usage()[0] == objects1

    # Resolution in a process: one fetch per distinct image, then cache hits; exact bytes.
    cache = ImageCache(max_bytes=1 << 24)
    resolved = resolve_prompts(prompts, cache)
    assert cache.stats()["misses"] == DISTINCT and cache.stats()["fetched_bytes"] == png_bytes
    assert [p.images[0].png for p in resolved] == [distinct[p.images[0].sha256].png for p in prompts]
    assert all(p.images[0].png is None for p in prompts)  # the inputs stay ref-form
    resolve_prompts(prompts, cache)  # the next call: every image from the cache
    assert cache.stats()["misses"] == DISTINCT and cache.stats()["hits"] == DISTINCT


def test_generate_and_train_on_ref_form_prompts(roles, cfg, byte_prompts):
    import torch

    from rlsys.batching import build_train_batch
    from rlsys.distributed.pending import wait
    from rlsys.distributed.clients import scoring_samples
    from rlsys.protocol import ScoredGroup

    prompts = roles.offload_media(byte_prompts)
    groups = roles.rollout.generate(prompts, roles.train_sampling)
    assert [g.prompt.uid for g in groups] == [p.uid for p in prompts]
    for g in groups:
        assert all(m.png is None for m in g.prompt.images), "image bytes came back to the driver"
        assert g.size == cfg.rollout.n and all(len(r.prompt_token_ids) > 16 for r in g.rollouts)
    (rewards,) = wait(roles.reward.score_async(groups))
    # An actor resolves ref-form images to the same pixels as byte-holding ones.
    inline = [type(g)(byte_prompts[i], g.rollouts) for i, g in enumerate(groups)]
    logprobs = [roles.learner.call_all(lambda a: a.compute_logprobs.remote(scoring_samples(x)))[0]
                for x in (groups, inline)]
    assert all(torch.equal(a, b) for a, b in zip(*logprobs)) and len(logprobs[0]) == 6 * cfg.rollout.n
    assert all(torch.isfinite(lp).all() for lp in logprobs[0])
    scored = [ScoredGroup(g, r) for g, r in zip(groups, rewards)]
    batch, _ = build_train_batch(scored, cfg.algorithm, cfg.advantage_estimator, 0)
    assert all(m.png is None for s in batch.samples for m in s.images)
    (metrics, _critic) = wait(roles.learner.train_async(batch), None)
    assert all(math.isfinite(v) for v in metrics.as_dict().values()), metrics
    assert roles.sync_weights(1) > 0
    # The engine generates again from the synced weights, images still from the store.
    again = roles.rollout.generate(prompts[:2], roles.train_sampling)
    assert all(r.policy_version == 1 for g in again for r in g.rollouts)


def _held(roles, cfg, prompts, g: int) -> dict:
    """Driver memory for one step's groups at G = g (media_store.batch_footprint): `python_heap`
    is its tracemalloc heap, `inline` the bytes those objects serialize to."""
    from rlsys.distributed.footprint import batch_footprint

    fp = batch_footprint(roles, cfg, prompts, g, max_new_tokens=8)
    return {"python_heap": fp["heap"], "inline": fp["held"], "samples": fp["samples"]}


def test_driver_memory_is_flat_in_group_size(roles, cfg, byte_prompts):
    prompts = roles.offload_media(byte_prompts)
    png = sum(len(m.png) for m in _distinct(byte_prompts).values()) / DISTINCT
    _held(roles, cfg, prompts, 2)  # warm-up: first-call allocations of the driver's code paths
    small, large = _held(roles, cfg, prompts, 2), _held(roles, cfg, prompts, 8)
    extra = large["samples"] - small["samples"]  # 6 prompts x 6 extra samples
    per_sample = {k: (large[k] - small[k]) / extra for k in ("python_heap", "inline")}
    print(f"\nPNG {png:.0f} B/image; G=2 {small}; G=8 {large}; growth per extra sample {per_sample}")
    assert per_sample["python_heap"] < png / 8, per_sample
    assert per_sample["inline"] < png / 4, per_sample
    # Nothing of an image is held: the whole G=2 step is smaller than the images it uses.
    assert small["inline"] < DISTINCT * png
    # The measurement sees image bytes when they are there: inline prompts bring every distinct
    # image back to the driver (once per image, as pickling keeps shared objects shared).
    inline = _held(roles, cfg, byte_prompts, 2)
    assert inline["python_heap"] - small["python_heap"] > 0.9 * DISTINCT * png, (inline, small)
    assert inline["inline"] - small["inline"] > 0.9 * DISTINCT * png, (inline, small)
