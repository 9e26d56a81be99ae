"""The embedded default's assets, built once per machine and cached: the tiny VLM, its
warm-started checkpoint and the synthetic dataset. Nothing is downloaded."""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlsys.config import RunConfig
from rlsys.config.schema import SyntheticConfig

# Bump when the builder, the task generator or the warm-start recipe changes meaning.
# 4: the warm start trains on a fixed-size dataset (it used the first caller's train_size).
ASSET_VERSION = 4


@dataclass
class EmbeddedAssets:
    model_dir: Path | None  # warm-started tiny model (None when model.path is not embedded)
    train_path: Path | None  # synthetic train Parquet (None when data.train is a file)
    test_path: Path | None
    build_seconds: float


def cache_root(cfg: RunConfig) -> Path:
    return Path(cfg.model.cache_dir).expanduser()


@contextmanager
def _locked(path: Path):
    """One builder per cache entry, even with several processes (tests, ray workers) asking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def synthetic_data(cfg: RunConfig, syn: SyntheticConfig | None = None) -> tuple[Path, Path]:
    """(train, test) Parquet files of `syn` (default: the run's `data.synthetic`)."""
    from rlsys.data.synthetic import write_synthetic_dataset

    syn = syn or cfg.data.synthetic
    spec = {"v": ASSET_VERSION, "seed": cfg.seed, **dataclasses.asdict(syn)}
    out = cache_root(cfg) / "data" / f"synthetic-{_key(spec)}"
    with _locked(out):
        if not (out / "done").exists():
            write_synthetic_dataset(out, syn.train_size, syn.test_size, seed=cfg.seed,
                                    families=syn.families, difficulty=_difficulty(syn))
            (out / "spec.json").write_text(json.dumps(spec, indent=2))
            (out / "done").touch()
    return out / "train.parquet", out / "test.parquet"


def _difficulty(syn: SyntheticConfig) -> dict:
    return {"image_size": syn.image_size, "min_objects": syn.min_objects,
            "max_objects": syn.max_objects, "num_colors": syn.num_colors}


def demonstration_task(cfg: RunConfig) -> SyntheticConfig:
    """The synthetic set the warm start learns from: the run's task at the default sizes. The
    cached model is keyed without the run's train_size, so whichever run builds it first (a
    small test run, say) must not change it."""
    return dataclasses.replace(cfg.data.synthetic, train_size=SyntheticConfig.train_size,
                               test_size=SyntheticConfig.test_size)


def embedded_model(cfg: RunConfig, force: bool = False) -> Path:
    """Builds the tiny model from a seed, then warm-starts it on demonstrations of the task,
    a fixed share of them guesses (rlsys/models/warmstart.py says why)."""
    from rlsys.models.tiny import build_tiny_model
    from rlsys.models.warmstart import (DEFAULT_GUESS_FRACTION, DEFAULT_SFT_LR, DEFAULT_SFT_STEPS,
                                        sft_warm_start)

    size = cfg.model.path.split(":", 1)[1]
    spec = {"v": ASSET_VERSION, "size": size, "seed": cfg.seed, "sft_steps": DEFAULT_SFT_STEPS,
            "sft_lr": DEFAULT_SFT_LR, "guess_fraction": DEFAULT_GUESS_FRACTION,
            "task": _difficulty(cfg.data.synthetic), "families": cfg.data.synthetic.families}
    out = cache_root(cfg) / "models" / f"{size}-{_key(spec)}"
    with _locked(out):
        if force or not (out / "done").exists():
            base = build_tiny_model(out / "base", size=size, seed=cfg.seed)
            demo_train, _ = synthetic_data(cfg, demonstration_task(cfg))
            sft_warm_start(base, demo_train, out / "warm", steps=DEFAULT_SFT_STEPS, lr=DEFAULT_SFT_LR,
                           guess_fraction=DEFAULT_GUESS_FRACTION,
                           seed=cfg.seed)
            (out / "spec.json").write_text(json.dumps(spec, indent=2))
            (out / "done").touch()
    return out / "warm"


def policy_path(cfg: RunConfig) -> str:
    """`model.path`, with an 'embedded:<size>' model built (or found cached) first."""
    return str(embedded_model(cfg)) if cfg.model.path.startswith("embedded:") else cfg.model.path


def resolve(cfg: RunConfig, force: bool = False) -> EmbeddedAssets:
    t0 = time.perf_counter()
    model_dir = embedded_model(cfg, force) if cfg.model.path.startswith("embedded:") else None
    train = test = None
    if cfg.data.train == "synthetic" or cfg.data.test == "synthetic":
        train, test = synthetic_data(cfg)
    return EmbeddedAssets(model_dir, train if cfg.data.train == "synthetic" else None,
                          test if cfg.data.test == "synthetic" else None, time.perf_counter() - t0)
