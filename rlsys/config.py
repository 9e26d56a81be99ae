"""The one configuration tree of a run.

Every field is typed and documented once, here (`help=`). YAML files in `configs/` mirror this
tree (a file sets any subset; the rest keeps these defaults); `key.sub=value` overrides come last.
`load_config` validates everything — unknown keys, types, ranges, choices, cross-field rules —
and raises `ConfigError` with one line naming the field, the value and what is allowed, before
any actor starts. Values are never silently adjusted.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """An invalid setting; the message is one line: field, value, what is allowed."""


def f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
      le: float | None = None, choices: typing.Callable[[], list[str]] | None = None):
    """A documented field. `choices` is a callable so registries are read at validation time."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value):
    import copy

    return copy.deepcopy(value)


def _policy_loss_names() -> list[str]:
    from rlsys.algorithms import POLICY_LOSS_NAMES

    return sorted(POLICY_LOSS_NAMES)


def _kl_names() -> list[str]:
    from rlsys.algorithms import KL_ESTIMATOR_NAMES

    return sorted(KL_ESTIMATOR_NAMES)


def _agg_names() -> list[str]:
    from rlsys.algorithms import LOSS_AGGREGATION_NAMES

    return sorted(LOSS_AGGREGATION_NAMES)


# The algorithms a user names; each fixes the advantage estimator it uses.
ALGORITHM_ADVANTAGE = {"grpo": "grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp", "ppo": "gae"}


@dataclass
class ModelConfig:
    path: str = f("embedded:tiny", "Policy checkpoint: a local HF directory, a hub id, or "
                  "'embedded:<size>' for the project's warm-started tiny VLM (built and cached "
                  "on first use).")
    dtype: Literal["float32", "bfloat16", "float16"] = f("float32", "Weights/compute dtype of every role.")
    trust_remote_code: bool = f(False, "Allow custom modelling code from the checkpoint.")
    max_prompt_tokens: int = f(256, "Prompts longer than this (image tokens included) are bad rows.", ge=8)
    min_pixels: int = f(56 * 56, "Smallest image area after resizing (pixels).", ge=28 * 28)
    max_pixels: int = f(112 * 112, "Largest image area after resizing; bigger images are downscaled.", ge=28 * 28)
    cache_dir: str = f("~/.cache/rlsys", "Where embedded models and synthetic data are built once per machine.")


@dataclass
class SyntheticConfig:
    families: list[str] = f(["majority_color"], "Synthetic task families mixed in the dataset.")
    train_size: int = f(2048, "Synthetic training prompts.", ge=1)
    test_size: int = f(128, "Synthetic held-out prompts.", ge=1)
    image_size: int = f(56, "Image side in pixels, a multiple of 28 (one visual token per 28 px cell).", ge=56)
    min_objects: int = f(1, "Fewest objects drawn per image.", ge=0)
    max_objects: int = f(4, "Most objects per image (at most one per 28 px cell).", ge=1)
    num_colors: int = f(3, "Colours in play (the harder, the more).", ge=2, le=5)


@dataclass
class DataConfig:
    train: str = f("synthetic", "Training prompts: 'synthetic' or a .jsonl/.parquet file or HF datasets dir.")
    test: str = f("synthetic", "Held-out prompts for evaluation (same forms as `train`).")
    on_bad_row: Literal["error", "skip"] = f("error", "A bad row stops loading with its reason, or is skipped and counted.")
    system_prompt: Optional[str] = f(None, "Overrides the R1-style system prompt; null keeps it.")
    shuffle: bool = f(True, "Shuffle training prompts each epoch (seeded).")
    synthetic: SyntheticConfig = f(SyntheticConfig(), "The generated visual-reasoning task.")


@dataclass
class RolloutConfig:
    num_engines: int = f(1, "vLLM engine actors.", ge=1)
    tensor_parallel_size: int = f(1, "GPUs per engine (tensor parallel); 1 on CPU.", ge=1)
    n: int = f(8, "Samples per prompt (the group size G).", ge=1)
    temperature: float = f(0.7, "Sampling temperature (the learner uses the same one for its log-probs).", gt=0.0)
    top_p: float = f(1.0, "Nucleus sampling mass.", gt=0.0, le=1.0)
    max_new_tokens: int = f(48, "Longest response; longer ones stop with finish_reason 'length'.", ge=1)
    max_model_len: int = f(512, "Engine context length (prompt + response).", ge=16)
    gpu_memory_utilization: float = f(0.5, "Fraction of GPU memory vLLM may take (GPU only).", gt=0.0, le=1.0)
    cpu_kv_cache_gib: float = f(1.0, "KV-cache size per engine on CPU (VLLM_CPU_KVCACHE_SPACE).", gt=0.0)
    enforce_eager: bool = f(True, "Disable CUDA graphs / compilation (needed on CPU; faster start).")
    max_num_seqs: Optional[int] = f(None, "Most sequences an engine decodes at once (vLLM max_num_seqs); "
                                    "null = vLLM's default.", ge=1)
    stream: bool = f(
        True, "Stream groups: each engine yields a prompt's group as soon as its n samples finish and "
        "its scoring starts at once, while later groups still generate. false: each engine answers its "
        "whole share in one reply and scoring starts after all of them (same batch, no overlap).")
    stream_window: int = f(4, "Streaming: groups an engine may have yielded that the driver has not "
                           "taken yet; at this many the engine pauses (backpressure).", ge=1)
    max_scoring_groups: int = f(8, "Streaming: groups in scoring (rewards, reference, values) at once; "
                                "while this many are out the driver takes no more groups.", ge=1)


@dataclass
class RewardComponent:
    name: str = f("accuracy", "A registered reward, 'file.py:function' or 'module:function'.")
    weight: float = f(1.0, "Weight in the combined reward.")


@dataclass
class RewardConfig:
    components: list[RewardComponent] = f(
        [RewardComponent("accuracy", 1.0), RewardComponent("r1_format", 0.5)],
        "Reward functions and their weights; the reward is the weighted sum.")
    timeout_s: float = f(5.0, "A reward call past this scores 0 and is counted.", gt=0.0)
    num_workers: int = f(2, "Worker processes for user reward functions.", ge=1)
    reward_model: Optional[str] = f(None, "Optional scalar reward model (HF dir or hub id), added with weight `reward_model_weight`.")
    reward_model_weight: float = f(1.0, "Weight of the reward model's score.")


@dataclass
class ReferenceConfig:
    path: Optional[str] = f(None, "Reference policy; null means the initial policy (`model.path`).")


@dataclass
class LearnerConfig:
    num_ranks: int = f(1, "Data-parallel DeepSpeed ranks (one Ray actor each).", ge=1)
    zero_stage: int = f(2, "DeepSpeed ZeRO stage.", ge=0, le=3)
    lr: float = f(2e-4, "Peak learning rate.", gt=0.0)
    lr_schedule: Literal["constant", "cosine", "linear"] = f("constant", "Decay after warm-up.")
    warmup_steps: int = f(0, "Linear warm-up steps.", ge=0)
    weight_decay: float = f(0.0, "AdamW weight decay.", ge=0.0)
    grad_clip: float = f(1.0, "Global gradient-norm clip (0 disables).", ge=0.0)
    micro_batch_size: int = f(16, "Sequences per forward/backward on one rank.", ge=1)
    ppo_epochs: int = f(1, "Passes over each batch.", ge=1)
    mini_batches: int = f(1, "Optimizer steps per epoch (the batch split into this many).", ge=1)
    gradient_checkpointing: bool = f(False, "Recompute activations to save memory.")
    backend: Literal["auto", "gloo", "nccl"] = f("auto", "Collective backend; auto = nccl with GPUs, else gloo.")
    weight_sync: Literal["collective", "object_store"] = f(
        "collective", "Learner -> engine weights through a broadcast group (gloo/NCCL) or the Ray object store.")
    sync_bucket_mb: float = f(64.0, "Size of one weight-sync bucket.", gt=0.0)


@dataclass
class CriticConfig:
    enabled: bool = f(False, "Train a value model (required by PPO).")
    path: Optional[str] = f(None, "Critic backbone; null means `model.path`.")
    num_ranks: int = f(1, "Critic DeepSpeed ranks.", ge=1)
    zero_stage: int = f(2, "Critic ZeRO stage.", ge=0, le=3)
    lr: float = f(5e-4, "Critic learning rate.", gt=0.0)
    value_clip: float = f(0.2, "Clip range of the value loss around old values.", gt=0.0)
    micro_batch_size: int = f(16, "Sequences per critic forward/backward.", ge=1)


@dataclass
class AlgorithmConfig:
    name: Literal["grpo", "rloo", "reinforce_pp", "ppo"] = f("grpo", "The RL algorithm (fixes the advantage estimator).")
    norm_adv_by_std: bool = f(True, "GRPO: divide by the group std (false = Dr.GRPO).")
    policy_loss: str = f("ppo_clip", "Policy loss.", choices=_policy_loss_names)
    clip_low: float = f(0.2, "Lower PPO clip: ratio >= 1 - clip_low.", gt=0.0, le=1.0)
    clip_high: float = f(0.28, "Upper PPO clip: ratio <= 1 + clip_high (clip-higher when > clip_low).", gt=0.0)
    seq_clip_low: float = f(3e-4, "GSPO: lower clip of the sequence-level ratio.", gt=0.0, le=1.0)
    seq_clip_high: float = f(4e-4, "GSPO: upper clip of the sequence-level ratio.", gt=0.0)
    dual_clip: Optional[float] = f(None, "Dual-clip constant c > 1 for negative advantages; null disables.", gt=1.0)
    loss_agg: str = f("token_mean", "How per-token losses become one number.", choices=_agg_names)
    norm_length: int = f(48, "Constant divisor of seq_mean_token_sum_norm (Dr.GRPO).", ge=1)
    kl_coef: float = f(0.0, "Weight of the KL to the reference (0 = no reference model).", ge=0.0)
    kl_estimator: str = f("k3", "KL estimator.", choices=_kl_names)
    kl_in_reward: bool = f(False, "Apply KL as a per-token reward penalty instead of a loss term.")
    entropy_coef: float = f(0.0, "Entropy bonus weight.", ge=0.0)
    gamma: float = f(1.0, "Discount (PPO/GAE, REINFORCE++).", ge=0.0, le=1.0)
    lam: float = f(0.95, "GAE lambda.", ge=0.0, le=1.0)
    max_is_weight: Optional[float] = f(None, "Truncated importance-weight cap for off-policy samples; null disables.", gt=0.0)


@dataclass
class SamplingConfig:
    mode: Literal["online", "offline", "mixed"] = f(
        "online", "Where a step's groups come from. 'online': the engines generate every group with the "
        "current policy. 'offline': groups recorded by an earlier run (`offline_path`) are replayed and "
        "re-scored with this run's rewards; their recorded behaviour log-probs stay their old log-probs, "
        "so `algorithm.max_is_weight` corrects for the older sampling policy (the engines only "
        "evaluate). 'mixed': round(offline_fraction * prompts_per_step) "
        "groups (halves up) are replayed and the rest generated online.")
    prompts_per_step: int = f(16, "Prompt groups per step (B).", ge=1)
    offline_path: Optional[str] = f(
        None, "Offline / mixed (null online): the rollouts to replay, as written by `rlsys train` "
        "(<run_dir>/rollouts/step_*.parquet) or `rlsys rollout`: a run directory, a rollouts "
        "directory or one .parquet file. Rows join the training prompts by prompt_uid (the images "
        "live there, the recording keeps their hashes); an unknown uid or a malformed row stops the "
        "run naming file, row and field. Recorded groups are drawn in seeded epochs.")
    offline_fraction: Optional[float] = f(
        None, "Mixed only (required there, null otherwise): share of each batch replayed from "
        "`offline_path`; it must leave at least one replayed and one online group.", ge=0.0, le=1.0)
    max_staleness: int = f(
        0, "Asynchronous off-policy training: the engines generate the batches of steps t+1..t+k "
        "while the learner trains on step t, so a sample lags the learner by at most k policy "
        "versions (logged as async/version_lag_*). k > 0 needs algorithm.max_is_weight (the "
        "truncated importance weight between the behaviour and the current policy). 0: every "
        "batch is generated by the current policy and the learner waits for it (synchronous).", ge=0)
    dynamic_sampling: bool = f(
        False, "DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage), then "
        "draw more from the same sources (the mixed split kept) until the batch has prompts_per_step "
        "groups, for at most `max_resample_rounds` extra rounds; a batch still short then trains as it "
        "is (counted in sampling/short_batch).")
    max_resample_rounds: int = f(4, "Dynamic sampling only: most extra draw-generate-score rounds per "
                                 "step after the first (0 = drop without refilling).", ge=0)


@dataclass
class ResourcesConfig:
    address: Optional[str] = f(None, "Ray cluster to join ('auto' inside `ray job submit`); null starts a local one.")
    num_cpus: Optional[int] = f(None, "CPUs of the local Ray started when `address` is null (null = all).", ge=1)
    colocate: bool = f(True, "Pack all roles in one placement group (PACK) vs spread across nodes (SPREAD).")
    cpus_per_engine: float = f(1.0, "CPUs reserved per rollout engine.", gt=0.0)
    gpus_per_engine: float = f(0.0, "GPUs per engine (tensor_parallel_size on GPU clusters).", ge=0.0)
    cpus_per_learner: float = f(1.0, "CPUs per learner/critic rank.", gt=0.0)
    gpus_per_learner: float = f(0.0, "GPUs per learner/critic rank.", ge=0.0)
    cpus_reference: float = f(0.5, "CPUs of the reference actor.", gt=0.0)
    gpus_reference: float = f(0.0, "GPUs of the reference actor.", ge=0.0)
    cpus_reward: float = f(0.5, "CPUs of the reward actor.", gt=0.0)
    nodes: Optional[int] = f(None, "Nodes the recipe is written for; with gpus_per_node, the GPU plan is checked before start.", ge=1)
    gpus_per_node: Optional[int] = f(None, "GPUs on each node (see `nodes`).", ge=1)


@dataclass
class LoggingConfig:
    wandb: Literal["offline", "online", "disabled"] = f("offline", "Weights & Biases mode.")
    project: str = f("rlsys", "wandb project.")
    progress_bar: bool = f(True, "Console progress bar.")
    plot: bool = f(True, "Write curves.png (reward, accuracy, KL) into the run directory.")


@dataclass
class CheckpointConfig:
    save_every: int = f(0, "Save resume state every N steps (0 = only at the end).", ge=0)
    resume_from: Optional[str] = f(None, "A checkpoint directory to resume exactly from.")
    export_hf: bool = f(True, "Export the final policy as a HF directory (transformers + vLLM).")


@dataclass
class EvalConfig:
    before_and_after: bool = f(True, "Evaluate held-out accuracy before and after training.")
    every: int = f(0, "Also evaluate every N steps (0 = never).", ge=0)
    max_prompts: int = f(128, "Held-out prompts per evaluation.", ge=1)
    max_new_tokens: int = f(48, "Response budget at evaluation (greedy).", ge=1)


@dataclass
class RunConfig:
    name: str = f("default", "Run name; the run directory is <output_dir>/<name>-<timestamp>.")
    output_dir: str = f("runs", "Where run directories go.")
    seed: int = f(0, "Seeds data order, sampling and initialisation.")
    total_steps: int = f(30, "Training steps (one batch of B groups each).", ge=1)
    model: ModelConfig = f(ModelConfig(), "The policy.")
    data: DataConfig = f(DataConfig(), "Prompts.")
    rollout: RolloutConfig = f(RolloutConfig(), "Generation.")
    reward: RewardConfig = f(RewardConfig(), "Scoring.")
    reference: ReferenceConfig = f(ReferenceConfig(), "Reference policy for KL.")
    learner: LearnerConfig = f(LearnerConfig(), "Policy optimisation.")
    critic: CriticConfig = f(CriticConfig(), "PPO value model.")
    algorithm: AlgorithmConfig = f(AlgorithmConfig(), "Advantages and losses.")
    sampling: SamplingConfig = f(SamplingConfig(), "Batch composition.")
    resources: ResourcesConfig = f(ResourcesConfig(), "Placement and Ray.")
    logging: LoggingConfig = f(LoggingConfig(), "Metrics sinks.")
    checkpoint: CheckpointConfig = f(CheckpointConfig(), "Saving and resuming.")
    eval: EvalConfig = f(EvalConfig(), "Held-out evaluation.")

    @property
    def advantage_estimator(self) -> str:
        return ALGORITHM_ADVANTAGE[self.algorithm.name]


# ----------------------------------------------------------------------------- building

def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _describe(tp) -> str:
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) is Literal:
        text = "one of " + ", ".join(map(str, typing.get_args(tp)))
    elif typing.get_origin(tp) is list:
        text = f"a list of {_describe(typing.get_args(tp)[0])}"
    elif dataclasses.is_dataclass(tp):
        text = f"a mapping with keys {', '.join(x.name for x in dataclasses.fields(tp))}"
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))
    return text + (" or null" if optional else "")


def _coerce(path: str, value: Any, tp) -> Any:
    """Converts a YAML/CLI value to `tp`; raises ConfigError naming `path` otherwise."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} = null: must be {_describe(tp)}")
    bad = ConfigError(f"{path} = {value!r}: must be {_describe(tp)}")
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise bad
        return _build(base, value, path)
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(base)
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if base is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if base is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; it is the number users mean.
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {x.name for x in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for fld in dataclasses.fields(cls):
        if fld.name in data:
            path = f"{prefix}.{fld.name}" if prefix else fld.name
            kwargs[fld.name] = _coerce(path, data[fld.name], hints[fld.name])
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a','b'], value parsed as YAML, so 8 is int, true is bool, [..] a list)."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (optional) + dotted overrides -> a validated RunConfig."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = _merge(data, nested)
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- validation

def _check_fields(obj, prefix: str) -> None:
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        path = f"{prefix}.{fld.name}" if prefix else fld.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, path)
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_fields(item, f"{path}[{i}]")
            continue
        if value is None:
            continue
        meta = fld.metadata
        if meta.get("ge") is not None and value < meta["ge"]:
            raise ConfigError(f"{path} = {value!r}: must be >= {meta['ge']}")
        if meta.get("gt") is not None and value <= meta["gt"]:
            raise ConfigError(f"{path} = {value!r}: must be > {meta['gt']}")
        if meta.get("le") is not None and value > meta["le"]:
            raise ConfigError(f"{path} = {value!r}: must be <= {meta['le']}")
        if meta.get("choices") is not None:
            allowed = meta["choices"]()
            if value not in allowed:
                raise ConfigError(f"{path} = {value!r}: must be one of {', '.join(allowed)}")


def validate(cfg: RunConfig) -> None:
    """Field ranges and choices, then the rules that tie fields together."""
    _check_fields(cfg, "")
    if cfg.algorithm.name == "ppo" and not cfg.critic.enabled:
        raise ConfigError("algorithm.name = 'ppo': needs critic.enabled = true (PPO learns a value model)")
    if cfg.critic.enabled and cfg.algorithm.name != "ppo":
        raise ConfigError(f"critic.enabled = true: only algorithm.name = 'ppo' uses a critic (got '{cfg.algorithm.name}')")
    if cfg.algorithm.clip_low >= 1.0:
        raise ConfigError(f"algorithm.clip_low = {cfg.algorithm.clip_low}: must be < 1 so 1 - clip_low stays positive")
    _check_sampling(cfg.sampling)
    if cfg.sampling.max_staleness > 0 and cfg.algorithm.max_is_weight is None:
        raise ConfigError(f"sampling.max_staleness = {cfg.sampling.max_staleness}: off-policy samples need "
                          "algorithm.max_is_weight (the truncated importance-weight cap, e.g. 2.0); it is null")
    if cfg.algorithm.name in ("grpo", "rloo") and cfg.rollout.n < 2:
        raise ConfigError(f"rollout.n = {cfg.rollout.n}: {cfg.algorithm.name} needs >= 2 samples per prompt for its baseline")
    syn = cfg.data.synthetic
    if syn.image_size % 28:
        raise ConfigError(f"data.synthetic.image_size = {syn.image_size}: must be a multiple of 28")
    if not syn.min_objects <= syn.max_objects <= (syn.image_size // 28) ** 2:
        raise ConfigError(f"data.synthetic.max_objects = {syn.max_objects}: must be between min_objects "
                          f"({syn.min_objects}) and the {(syn.image_size // 28) ** 2} cells of the image")
    if cfg.model.min_pixels > cfg.model.max_pixels:
        raise ConfigError(f"model.min_pixels = {cfg.model.min_pixels}: must be <= model.max_pixels ({cfg.model.max_pixels})")
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens = {cfg.rollout.max_new_tokens}: must be < rollout.max_model_len ({cfg.rollout.max_model_len})")
    gpus = [cfg.resources.gpus_per_engine, cfg.resources.gpus_per_learner]
    if cfg.learner.backend == "nccl" and cfg.resources.gpus_per_learner == 0:
        raise ConfigError("learner.backend = 'nccl': needs resources.gpus_per_learner > 0 (NCCL runs on GPUs)")
    if any(g > 0 for g in gpus) and cfg.resources.gpus_per_engine not in (0, cfg.rollout.tensor_parallel_size):
        raise ConfigError(f"resources.gpus_per_engine = {cfg.resources.gpus_per_engine}: must equal "
                          f"rollout.tensor_parallel_size ({cfg.rollout.tensor_parallel_size}) on GPUs")
    _check_gpu_plan(cfg)
    for i, comp in enumerate(cfg.reward.components):
        problem = _reward_spec_problem(comp.name)
        if problem:
            raise ConfigError(f"reward.components[{i}].name = {comp.name!r}: {problem}")


def _check_sampling(s: SamplingConfig) -> None:
    """Every sampling field set is one the run uses (a setting that would be ignored is an error)."""
    if s.mode in ("offline", "mixed") and not s.offline_path:
        raise ConfigError(f"sampling.offline_path = null: sampling.mode = '{s.mode}' needs recorded rollouts")
    if s.mode == "online" and s.offline_path:
        raise ConfigError(f"sampling.offline_path = {s.offline_path!r}: only sampling.mode = 'offline' or "
                          "'mixed' replays rollouts (mode is 'online')")
    if s.mode != "mixed":
        if s.offline_fraction is not None:
            raise ConfigError(f"sampling.offline_fraction = {s.offline_fraction}: only sampling.mode = 'mixed' "
                              f"uses it (mode is '{s.mode}')")
        return
    if s.offline_fraction is None:
        raise ConfigError("sampling.offline_fraction = null: sampling.mode = 'mixed' needs the replayed share of each batch")
    from rlsys.sampling import offline_groups

    k = offline_groups(s.prompts_per_step, s.offline_fraction)
    if not 0 < k < s.prompts_per_step:
        raise ConfigError(f"sampling.offline_fraction = {s.offline_fraction}: with prompts_per_step = "
                          f"{s.prompts_per_step} that is {k} replayed groups per step; mixed needs 1 to "
                          f"{s.prompts_per_step - 1} (use mode 'online' or 'offline' for all of one kind)")


def gpu_plan(cfg: RunConfig) -> list[float]:
    """GPU request of every actor bundle, in placement order."""
    r = cfg.resources
    plan = [r.gpus_per_engine] * cfg.rollout.num_engines + [r.gpus_per_learner] * cfg.learner.num_ranks
    if cfg.critic.enabled:
        plan += [r.gpus_per_learner] * cfg.critic.num_ranks
    if cfg.algorithm.kl_coef > 0:
        plan.append(r.gpus_reference)
    return plan


def _check_gpu_plan(cfg: RunConfig) -> None:
    r = cfg.resources
    if r.nodes is None or r.gpus_per_node is None:
        return
    plan = gpu_plan(cfg)
    if max(plan, default=0) > r.gpus_per_node:
        raise ConfigError(f"resources.gpus_per_node = {r.gpus_per_node}: one actor asks for {max(plan)} GPUs "
                          "(a bundle cannot span nodes)")
    # First-fit on whole nodes: a tensor-parallel engine needs all its GPUs on one node.
    free = [float(r.gpus_per_node)] * r.nodes
    for need in sorted(plan, reverse=True):
        slot = next((i for i, left in enumerate(free) if left >= need - 1e-9), None)
        if slot is None:
            raise ConfigError(f"resources.nodes = {r.nodes}: the roles need {sum(plan):g} GPUs "
                              f"({plan}) but {r.nodes} x {r.gpus_per_node} cannot hold them")
        free[slot] -= need


def _reward_spec_problem(spec: str) -> str | None:
    """Checks what can be checked without importing user code; loading happens in the reward actor."""
    if spec.startswith(("http://", "https://")):
        return None
    if ":" in spec:
        target, func = spec.rsplit(":", 1)
        if not func.isidentifier():
            return f"'{func}' is not a function name"
        if target.endswith(".py") and not Path(target).expanduser().is_file():
            return f"file '{target}' not found"
        return None
    from rlsys.rewards import REWARDS

    if spec not in REWARDS:
        return f"must be one of {', '.join(sorted(REWARDS))}, 'path/file.py:function', 'module:function' or an http(s) URL"
    return None


# ----------------------------------------------------------------------------- printing

def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def documented_yaml(cls=RunConfig, indent: int = 0) -> str:
    """The full tree as YAML, each field's help as a comment above it (configs/reference.yaml)."""
    lines = []
    pad = "  " * indent
    default = cls()
    for fld in dataclasses.fields(cls):
        value = getattr(default, fld.name)
        lines.append(f"{pad}# {fld.metadata['help']}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{fld.name}:")
            lines.append(documented_yaml(type(value), indent + 1))
            continue
        plain = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value] \
            if isinstance(value, list) else value
        dumped = yaml.safe_dump({fld.name: plain}, sort_keys=False, width=200).rstrip("\n")
        lines.extend(pad + line for line in dumped.splitlines())
    return "\n".join(lines)
