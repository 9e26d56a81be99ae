"""The one configuration tree of a run: every field typed and documented once, here (`help=`).

YAML files in `configs/` mirror this tree (a file sets any subset; the rest keeps these
defaults); `key.sub=value` overrides come last (rlsys/config/loading.py). Ranges and `choices`
declared here are checked by rlsys/config/validation.py, together with the cross-field rules.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


class ConfigError(ValueError):
    """An invalid setting; the message is one line: field, value, what is allowed."""


def f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
      le: float | None = None, choices: typing.Callable[[], list[str]] | None = None):
    """A documented field. `choices` is a callable so registries are read at validation time."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _policy_loss_names() -> list[str]:
    from rlsys.algorithms import POLICY_LOSS_NAMES

    return sorted(POLICY_LOSS_NAMES)


def _kl_names() -> list[str]:
    from rlsys.algorithms import KL_ESTIMATOR_NAMES

    return sorted(KL_ESTIMATOR_NAMES)


def _correction_names() -> list[str]:
    from rlsys.algorithms import OFF_POLICY_CORRECTION_NAMES

    return sorted(OFF_POLICY_CORRECTION_NAMES)


def _agg_names() -> list[str]:
    from rlsys.algorithms import LOSS_AGGREGATION_NAMES

    return sorted(LOSS_AGGREGATION_NAMES)


# The advantage estimator each algorithm uses unless `algorithm.advantage_estimator` names another.
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
    name: Optional[str] = f("accuracy", "A rule reward (null for a model entry): a registered name (accuracy, "
                  "r1_format), 'path/file.py:function', "
                  "'package.module:function' or an http(s) URL (a remote scorer; the 'remote' factory behind it "
                  "takes options, from Python: RewardScorer([('remote', 1.0, {'url': ...})])). "
                  "A function takes fn(response, answer, metadata) -> float, fn(sample) -> float, "
                  "fn(samples) -> list[float], fn(group) -> list[float] or TRL's fn(completions, **kwargs) "
                  "-> list[float] (rlsys/rewards/forms.py); its signature is checked before anything starts.")
    weight: float = f(1.0, "Weight in the combined reward.")
    alias: Optional[str] = f(None, "Name of the component's metric column (reward/<alias>) and score key; "
                             "null: `name` (a model entry: `model`). Needed to use one reward twice.")
    send_inputs: bool = f(False, "URL entries: also send each sample's prompt messages and images (base64 "
                          "PNG) to the service, as a remote reward model needs (rlsys/rewards/remote.py; "
                          "examples/remote_rm/serve_rm.py serves an `rlsys train-rm` model so).")
    model: Optional[Literal["scalar", "judge"]] = f(
        None, "A reward model instead of a rule (set `name: null`), run as its own Ray actor group: 'scalar' "
        "scores (image, prompt, response) with a scalar head (rlsys/rewards/scalar_rm.py); 'judge' is a vLLM "
        "engine that writes a critique, then a score (rlsys/rewards/judge.py). The fields below apply to "
        "model entries only.")
    path: Optional[str] = f(
        None, "Model entries (required): the checkpoint. scalar: an `rlsys train-rm` output directory "
        "(VLM + value head) or a HF sequence-classification directory / hub id (text only). judge: a "
        "(VL)M directory or hub id, e.g. an `rlsys sft` output; 'reference' serves the reference model's "
        "weights (`reference.path`, else the initial policy).")
    replicas: int = f(1, "Model entries: actors serving the model; groups go to the least busy one.", ge=1)
    cpus: float = f(0.5, "Model entries: CPUs per replica.", gt=0.0)
    gpus: float = f(0.0, "Model entries: GPUs per replica.", ge=0.0)
    batch_size: int = f(16, "scalar: sequences per forward pass.", ge=1)
    normalize: bool = f(False, "Model entries: standardise this model's scores over each step's batch "
                        "(mean 0, std 1) before weighting; the raw scores stay in reward/<column>.")
    template: Optional[str] = f(
        None, "judge: a prompt template file; it must contain {question} and {response} (and may use "
        "{answer}); the images go before it. null: the MM-RLHF-style default (rlsys/rewards/judge.py): "
        "critique first, then the score in <score></score>.")
    samples: int = f(1, "judge: judgements per response, averaged.", ge=1)
    temperature: float = f(0.0, "judge: sampling temperature (0: greedy; samples > 1 needs > 0).", ge=0.0)
    max_new_tokens: int = f(96, "judge: token budget of the critique and score.", ge=1)
    fallback: float = f(0.0, "judge: the score of a judgement with no parsable score (a counted failure).")


def component_column(c: RewardComponent) -> str:
    """The metric column (reward/<column>) and score key of a reward component."""
    return c.alias or (c.model if c.model is not None else c.name)


@dataclass
class RewardConfig:
    components: list[RewardComponent] = f(
        [RewardComponent("accuracy", 1.0), RewardComponent("r1_format", 0.5)],
        "Rules, reward models and their weights; the reward is the weighted sum.")
    timeout_s: float = f(5.0, "Deadline for one batch of user reward calls (they run concurrently); a call "
                              "unfinished by then scores 0 and is counted.", gt=0.0)
    num_workers: int = f(2, "Worker processes for user reward functions.", ge=1)
    max_failure_frac: float = f(0.5, "A step counts as failed for a reward component when more than this fraction of "
                                     "its samples failed (raised, timed out, bad value); 1 turns the check off.",
                                ge=0.0, le=1.0)
    max_failed_steps: int = f(3, "Consecutive failed steps of one reward component that stop the run "
                                 "(checkpoint, then a one-line error naming the component).", ge=1)


@dataclass
class ReferenceConfig:
    path: Optional[str] = f(None, "Reference policy; null means the initial policy (`model.path`).")


@dataclass
class LearnerConfig:
    num_ranks: int = f(1, "Data-parallel DeepSpeed ranks (one Ray actor each).", ge=1)
    zero_stage: Optional[int] = f(None, "DeepSpeed ZeRO stage; null: 0 with one rank (nothing to partition, "
                                  "and stage 2's gradient hooks cost time), 2 with more.", ge=0, le=3)
    lr: float = f(2e-4, "Peak learning rate.", gt=0.0)
    lr_schedule: Literal["constant", "cosine", "linear"] = f("constant", "Decay after warm-up.")
    warmup_steps: int = f(0, "Linear warm-up steps.", ge=0)
    weight_decay: float = f(0.0, "AdamW weight decay.", ge=0.0)
    grad_clip: float = f(1.0, "Global gradient-norm clip (0 disables).", ge=0.0)
    micro_batch_size: int = f(16, "Sequences per forward/backward on one rank.", ge=1)
    ppo_epochs: int = f(1, "Passes over each batch.", ge=1)
    mini_batches: int = f(1, "Optimizer steps per epoch (the batch split into this many).", ge=1)
    gradient_checkpointing: bool = f(False, "Recompute activations to save memory.")
    pack_prompts: bool = f(True, "Run a group's shared prompt (and its images) once per learner and reference forward: "
                           "its samples' responses follow it in one row under a block mask (rlsys/models/packing.py; "
                           "same log-probs). A group whose packed row would cost more than its unpacked rows "
                           "(long responses) stays unpacked.")
    backend: Literal["auto", "gloo", "nccl"] = f("auto", "Collective backend; auto = nccl with GPUs, else gloo.")
    weight_sync: Literal["collective", "object_store"] = f(
        "collective", "Learner -> engine weights through a broadcast group (gloo/NCCL) or the Ray object store.")
    sync_bucket_mb: float = f(64.0, "Size of one weight-sync bucket.", gt=0.0)

    @property
    def run_zero_stage(self) -> int:
        """`zero_stage` as the learner group runs it (null resolved by `num_ranks`)."""
        if self.zero_stage is not None:
            return self.zero_stage
        return 0 if self.num_ranks == 1 else 2


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
    name: Literal["grpo", "rloo", "reinforce_pp", "ppo"] = f(
        "grpo", "The RL algorithm; it picks the advantage estimator unless `advantage_estimator` names one.")
    advantage_estimator: Optional[str] = f(
        None, "Advantage estimator. null follows `name` ("
        + ", ".join(f"{k} -> {v}" for k, v in ALGORITHM_ADVANTAGE.items()) + "). Otherwise a registered "
        "estimator (the error for an unknown name lists them) or a user function 'path/file.py:function' "
        "or 'module:function' with the registered signature fn(AdvantageInputs, AdvantageParams) -> "
        "AdvantageOutputs (rlsys/algorithms/advantages.py), loaded in the driver. gae needs the critic "
        "(name ppo); ppo takes gae or a user function (it gets the critic values).")
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
    max_is_weight: Optional[float] = f(2.0, "Bound c of the off-policy correction between the behaviour policy "
                                       "(the engines' log-probs) and the learner's proximal policy: the cap of "
                                       "a truncated weight, the band [1/c, c] of a masked one (sampling."
                                       "max_staleness > 0 needs it); null disables the correction.", gt=0.0)
    off_policy_correction: str = f(
        "token_truncate", "How off-policy samples are weighted, with bound c = max_is_weight (rlsys/algorithms/"
        "off_policy.py): token_truncate min(rho_t, c); seq_truncate min(prod rho, c) per sequence; token_mask "
        "rho_t inside [1/c, c], else the token is dropped (icepop); seq_mask a sequence whose geometric-mean "
        "ratio leaves [1/c, c] is dropped. rho = pi_proximal / pi_behaviour.", choices=_correction_names)


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
        "versions (logged as async/version_lag_*). k > 0 needs algorithm.max_is_weight (the off-policy "
        "correction between the behaviour and the current policy). 0 (the default): every batch is "
        "generated by the current policy and the learner waits for it (synchronous). k = 1 overlaps "
        "generation with the update, but it collapsed where k = 0 learned (docs/results/async_cause.md): "
        "a policy that moves fast is corrected one step late.", ge=0)
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
    colocate: bool = f(True, "true: every role's bundles in one PACK placement group (the single-node default). "
                       "false: one PACK placement group per role, so a role's ranks stay on as few nodes as "
                       "possible (learner ranks inside a node when they fit) while roles may use different nodes.")
    cpus_per_engine: float = f(0.5, "CPUs reserved per rollout engine. The defaults (engine 0.5, learner 1, "
                               "reward 0.5) add up to 2 CPUs: what `ray start --head` offers on a 2-core "
                               "machine (Ray gives a fractional CPU one OpenMP thread, as it gives 1 CPU).",
                               gt=0.0)
    gpus_per_engine: float = f(0.0, "GPUs per engine (tensor_parallel_size on GPU clusters).", ge=0.0)
    cpus_per_learner: float = f(1.0, "CPUs per learner/critic rank.", gt=0.0)
    gpus_per_learner: float = f(0.0, "GPUs per learner/critic rank.", ge=0.0)
    cpus_reference: float = f(0.5, "CPUs of the reference actor.", gt=0.0)
    gpus_reference: float = f(0.0, "GPUs of the reference actor.", ge=0.0)
    cpus_reward: float = f(0.5, "CPUs of the reward actor.", gt=0.0)
    nodes: Optional[int] = f(None, "Nodes the recipe is written for; with gpus_per_node, the GPU plan is checked against "
                             "them when the config loads, and at start the cluster must have that many alive nodes "
                             "with gpus_per_node GPUs (else one line says what is missing, before any actor).", ge=1)
    gpus_per_node: Optional[int] = f(None, "GPUs on each node (see `nodes`).", ge=1)


@dataclass
class LoggingConfig:
    wandb: Literal["offline", "online", "disabled"] = f("offline", "Weights & Biases mode.")
    project: str = f("rlsys", "wandb project.")
    progress_bar: bool = f(True, "Console progress bar.")
    plot: bool = f(True, "Write curves.png (reward, accuracy, KL) into the run directory.")


@dataclass
class CheckpointConfig:
    save_every: int = f(10, "Save resume state every N steps, and at the end (0 = only at the end). "
                        "A crash, a dead learner or a preemption loses at most the steps since the last one.", ge=0)
    keep_last: int = f(2, "Periodic checkpoints (checkpoints/step_N) kept; older ones are deleted "
                       "(0 keeps all). The final one is always kept.", ge=0)
    resume_from: Optional[str] = f(None, "Resume exactly from a checkpoint directory, or 'latest' for the newest "
                                   "checkpoint under `output_dir/<name>-*` (a run directory's own checkpoints "
                                   "with `rlsys train --resume RUN_DIR`). The run continues in the directory "
                                   "the checkpoint belongs to.")
    export_hf: bool = f(True, "Export the final policy as a HF directory (transformers + vLLM).")


@dataclass
class FaultConfig:
    max_restarts: int = f(3, "Restarts per role (an engine, the reward actor, the reference, the learner "
                          "group) before the run stops with a checkpoint and one line naming the role.", ge=0)


@dataclass
class EvalConfig:
    before_and_after: bool = f(True, "Evaluate held-out accuracy before and after training.")
    every: int = f(0, "Also evaluate every N steps (0 = never).", ge=0)
    max_prompts: int = f(128, "Held-out prompts per evaluation.", ge=1)
    max_new_tokens: int = f(48, "Response budget at evaluation.", ge=1)
    n: int = f(1, "Responses per held-out prompt; pass@n is reported when n > 1.", ge=1)
    temperature: float = f(0.0, "Sampling temperature at evaluation (0: greedy; n > 1 needs > 0).", ge=0.0)
    rewards: Optional[list[RewardComponent]] = f(
        None, "Rewards that score evaluation (null: reward.components). The first is the verifier: "
              "accuracy and pass@k come from it.")
    pass_threshold: float = f(1.0, "A response passes (for pass@k) when the verifier scores at least this.")
    samples_logged: int = f(8, "Held-out prompts whose responses go into the samples table.", ge=0)


@dataclass
class SFTConfig:
    """`rlsys sft`: supervised fine-tuning on demonstrations before RL (R1's cold start). It runs
    the policy learner group of `learner` (num_ranks, zero_stage, micro_batch_size, grad_clip,
    weight_decay, gradient_checkpointing, backend) on `model.path`, loads the demonstrations
    through the training data pipeline (data.on_bad_row, data.system_prompt, model.max_prompt_tokens,
    pixel budget) and writes a HF checkpoint that `rlsys train model.path=<dir>` and
    `rlsys eval --model <dir>` take."""

    data: Optional[str] = f(None, "Demonstrations (required by `rlsys sft`): a .jsonl/.json/.parquet file or HF "
                            "datasets dir in the prompt schema, each row with its target: a `response` column, "
                            "or `messages` ending with the assistant turn to learn (rlsys/data/datasets.py).")
    epochs: int = f(1, "Passes over the demonstrations (reshuffled each pass when data.shuffle).", ge=1)
    max_steps: Optional[int] = f(None, "Stop after this many optimizer steps even if epochs remain; null: all epochs.", ge=1)
    batch_size: int = f(16, "Demonstrations per optimizer step, over all learner ranks (each rank runs its "
                        "share in micro-batches of learner.micro_batch_size).", ge=1)
    lr: float = f(1e-5, "Learning rate (constant after warm-up).", gt=0.0)
    warmup_steps: int = f(0, "Linear learning-rate warm-up steps.", ge=0)
    output: Optional[str] = f(None, "Directory of the fine-tuned HF checkpoint; null: <run dir>/model, the run "
                              "dir being <output_dir>/<name>-sft-<timestamp>.")


@dataclass
class TrainRMConfig:
    """`rlsys train-rm`: Bradley-Terry training of a scalar reward model on preference pairs, on
    the DeepSpeed learner group (learner.num_ranks, zero_stage, micro_batch_size, grad_clip,
    weight_decay, backend). The backbone is `model.path` (its LM head dropped) with the critic's
    value head; the output directory is what `reward.components: [{model: scalar, path: ...}]` takes."""

    data: Optional[str] = f(None, "Preference pairs (required by `rlsys train-rm`): a .jsonl/.json/.parquet file or "
                            "HF datasets dir in the prompt schema, each row with `chosen` and `rejected` responses "
                            "and an optional `margin` (rlsys/data/datasets.py).")
    test: Optional[str] = f(None, "Held-out pairs for pair accuracy; null: `holdout` of `data`.")
    holdout: float = f(0.1, "Share of `data` held out for pair accuracy when `test` is null.", ge=0.0, le=0.5)
    epochs: int = f(1, "Passes over the training pairs.", ge=1)
    max_steps: Optional[int] = f(None, "Stop after this many optimizer steps; null: all epochs.", ge=1)
    batch_size: int = f(16, "Pairs per optimizer step over all ranks.", ge=1)
    lr: float = f(1e-4, "Learning rate (constant after warm-up).", gt=0.0)
    warmup_steps: int = f(0, "Linear learning-rate warm-up steps.", ge=0)
    output: Optional[str] = f(None, "Directory of the trained RM; null: <run dir>/model, the run dir being "
                              "<output_dir>/<name>-rm-<timestamp>.")


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
    fault: FaultConfig = f(FaultConfig(), "Surviving dead actors.")
    eval: EvalConfig = f(EvalConfig(), "Held-out evaluation.")
    sft: SFTConfig = f(SFTConfig(), "Cold-start supervised fine-tuning (`rlsys sft`).")
    train_rm: TrainRMConfig = f(TrainRMConfig(), "Reward-model training on preference pairs (`rlsys train-rm`).")

    @property
    def advantage_estimator(self) -> str:
        """The estimator `build_train_batch` runs: a registered name or a user function spec."""
        chosen = self.algorithm.advantage_estimator
        return ALGORITHM_ADVANTAGE[self.algorithm.name] if chosen is None else chosen
