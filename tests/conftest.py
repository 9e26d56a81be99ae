"""Shared fixtures. The tiny model is built once per machine (cached by builder hash)."""
from __future__ import annotations

import os

import pytest


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
