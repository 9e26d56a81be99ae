"""`rlsys eval`: held-out accuracy and format rate of a model, greedy, generated with vLLM."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from launch.embedded import policy_path, resolve, synthetic_data
from rlsys.config import RunConfig


def load_split_counted(cfg: RunConfig, path: str | Path, demonstrations: bool = False):
    """Prompts of one dataset file, validated as the config says (errors name file and row),
    and how many rows were skipped (data.on_bad_row = skip). demonstrations: SFT rows, each
    Prompt with its target `response` (rlsys/data/datasets.py)."""
    from rlsys.data.datasets import load_prompts
    from rlsys.data.templates import R1_SYSTEM_PROMPT

    result = load_prompts(path, demonstrations=demonstrations, on_bad_row=cfg.data.on_bad_row,
                          max_prompt_tokens=cfg.model.max_prompt_tokens,
                          min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels,
                          system_prompt=cfg.data.system_prompt or R1_SYSTEM_PROMPT)
    if result.skipped:
        print(f"{path}: skipped {result.skip_count} of {result.num_rows} rows (data.on_bad_row=skip); "
              f"first: {result.skipped[0].message}")
    return result.prompts, result.skip_count


def load_split(cfg: RunConfig, path: str | Path):
    return load_split_counted(cfg, path)[0]


def evaluate_cli(cfg: RunConfig, model: str | None, data: str | None) -> int:
    """Generate on the held-out prompts with vLLM, score with the eval rewards (eval.rewards, else
    reward.components), print the figures and write the tables to <output_dir>/eval-<time>/."""
    import time

    from rlsys.evaluation import eval_tables, evaluate_groups
    from rlsys.models.engine import VLLMEngine
    from rlsys.rewards import RewardScorer
    from rlsys.specs import engine_spec, eval_sampling, generate_kwargs, reward_components

    entries = cfg.eval.rewards if cfg.eval.rewards is not None else cfg.reward.components
    if any(c.model is not None for c in entries):
        print("rlsys: config error: rlsys eval scores with rule rewards only; reward models score held-out "
              "prompts inside `rlsys train` (eval.before_and_after, eval.every): set eval.rewards to rule "
              "entries, e.g. eval.rewards='[{name: accuracy}]'", file=sys.stderr)
        return 2
    # Build only what the command line did not name.
    if model is None:
        model = policy_path(cfg)
    if data is None:
        data = str(synthetic_data(cfg)[1]) if cfg.data.test == "synthetic" else cfg.data.test
    prompts = load_split(cfg, data)[: cfg.eval.max_prompts]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.rollout.cpu_kv_cache_gib))))
    engine = VLLMEngine.from_spec(engine_spec(cfg, model))
    groups = engine.generate(prompts, policy_version=0, **generate_kwargs(prompts, eval_sampling(cfg)))
    components = reward_components(cfg.eval.rewards or cfg.reward.components)
    with RewardScorer(list(components), timeout_s=cfg.reward.timeout_s, max_workers=cfg.reward.num_workers) as scorer:
        scores = scorer.score_groups(groups)
    result = evaluate_groups(groups, scores, cfg.eval.pass_threshold)
    out = eval_tables(Path(cfg.output_dir).expanduser().resolve() / f"eval-{time.strftime('%Y%m%d-%H%M%S')}",
                      result, groups, scores, cfg.eval.samples_logged)
    figures = "  ".join(f"{k}={v:.3f}" for k, v in result.metrics().items() if k not in ("n", "accuracy"))
    print(f"eval  model={model}  data={data}  n={result.n}  accuracy={result.accuracy:.3f}  {figures}")
    print(f"tables: {out}")
    return 0


def build_embedded_cli(cfg: RunConfig, force: bool) -> int:
    """`rlsys build-tiny`: (re)build the warm-started model and print its held-out accuracy."""
    assets = resolve(cfg, force=force)
    print(f"model: {assets.model_dir}  (built/cached in {assets.build_seconds:.1f} s)")
    return evaluate_cli(cfg, model=str(assets.model_dir), data=None)
