"""Shared fixtures: the tiny model (built once per machine, cached by builder hash), a private Ray
on 127.0.0.1 and a small synthetic task for the loop and fault tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to the tiny Qwen2.5-VL checkpoint (size "tiny", seed 0), float32.

    Cached under $RLSYS_TEST_MODEL_CACHE, else ~/.cache/rlsys/test-models; set
    RLSYS_TEST_MODEL_CACHE=tmp to build into this session's pytest tmp dir instead.
    Treat the directory as read-only: other tests (and other pytest runs) share it.
    """
    from rlsys.models.tiny import ensure_tiny_model

    where = os.environ.get("RLSYS_TEST_MODEL_CACHE")
    if where == "tmp":
        cache = tmp_path_factory.mktemp("models")
    else:
        cache = where or os.path.join(os.path.expanduser("~"), ".cache", "rlsys", "test-models")
    return ensure_tiny_model("tiny", seed=0, cache_dir=cache)


@pytest.fixture(scope="module")
def ray_cluster():
    """The private Ray of `rlsys train` (launch.cluster.start_local_ray: every listener on
    127.0.0.1, whenever `ray` was first imported), with 8 CPUs."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    from launch.cluster import start_local_ray

    ray = start_local_ray(num_cpus=8, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from rlsys.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), 64, 8, seed=0, families=["count_color"])


@pytest.fixture(scope="session")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory):
    """A scalar RM in rlsys's format (rlsys/rewards/scalar_rm.py): the tiny model as backbone
    with a seeded random value head, so different samples score differently."""
    import json
    import shutil

    import torch

    from rlsys.critic import save_value_head
    from rlsys.rewards.scalar_rm import RM_FORMAT, RM_INFO_FILE, RM_VERSION

    out = tmp_path_factory.mktemp("rm") / "rm"
    shutil.copytree(tiny_model_dir, out)
    save_value_head(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)), torch.zeros(1), out)
    (out / RM_INFO_FILE).write_text(json.dumps({"format": RM_FORMAT, "version": RM_VERSION, "base": "tiny"}))
    return out
