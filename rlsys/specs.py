"""What each role is started with: frozen records, built from a RunConfig in one place
(`role_specs`). An actor constructor takes its spec and nothing else, so a config field reaches
a role only through a named spec field, never through a dict that can drop it silently.

No Ray, no torch here: the specs are plain values that pickle to any actor.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from rlsys.config import RunConfig
from rlsys.config.schema import component_column


@dataclass(frozen=True)
class SamplingSpec:
    """What one generate call asks of an engine (greedy evaluation: temperature 0, n 1).

    seed: base seed of this call; the engine derives each (prompt, sample) request's seed from it
          and the prompt's uid, so what is sampled does not depend on the engine's history.
          None: the engine's own running generator (not reproducible across restarts).
    """

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: Optional[int] = None

    def for_call(self, seed: int) -> "SamplingSpec":
        return SamplingSpec(self.n, self.temperature, self.top_p, self.max_new_tokens, seed)


@dataclass(frozen=True)
class EngineSpec:
    """One vLLM rollout engine (rlsys/models/engine.py)."""

    model_path: str
    tensor_parallel_size: int = 1
    dtype: str = "float32"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.5
    seed: int = 0
    enforce_eager: bool = True
    max_num_seqs: Optional[int] = None
    kv_cache_space_gib: float = 1.0
    trust_remote_code: bool = False
    # vLLM executor (rlsys/models/executor.py): "auto" = uni at TP 1, mp (one node) at TP > 1;
    # "ray" for GPU workers in the engine's own placement group of one-GPU bundles.
    distributed_executor_backend: str = "auto"


@dataclass(frozen=True)
class TrainerSpec:
    """A DeepSpeed trainer, policy or critic (rlsys/deepspeed_base.py).

    Schedule lengths (warmup_steps, total_steps) count train_step calls. loss_agg / norm_length:
    a LOSS_AGGREGATIONS name and seq_mean_token_sum_norm's constant divisor.
    """

    model_path: str
    zero_stage: int = 2
    lr: float = 1e-6
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 1
    ppo_epochs: int = 1
    mini_batches: int = 1
    dtype: str = "bfloat16"
    seed: int = 0
    backend: str = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    loss_agg: str = "token_mean"
    norm_length: Optional[float] = None


@dataclass(frozen=True)
class LearnerSpec:
    """The policy learner (rlsys/learner.py).

    policy_loss: a POLICY_LOSSES name; clip_* / dual_clip / seq_clip_*: its PolicyLossParams.
    kl_coef, kl_estimator: KL(pi || pi_ref) as a loss term (0 disables).
    max_is_weight: bound c of the off-policy correction of pi_old / pi_behaviour; None disables.
    off_policy_correction: an OFF_POLICY_CORRECTIONS name (rlsys/algorithms/off_policy.py).
    temperature: the sampling temperature; log-probs are of logits / temperature.
    pack_prompts: run each shared prompt once per forward (rlsys/models/packing.py).
    """

    trainer: TrainerSpec
    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    seq_clip_low: float = 3e-4
    seq_clip_high: float = 4e-4
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    max_is_weight: Optional[float] = None
    off_policy_correction: str = "token_truncate"
    temperature: float = 1.0
    pack_prompts: bool = True


@dataclass(frozen=True)
class CriticSpec:
    """The PPO value model (rlsys/critic.py); value_clip: clip range around the old values."""

    trainer: TrainerSpec
    value_clip: Optional[float] = 0.2


@dataclass(frozen=True)
class RMTrainerSpec:
    """A reward-model trainer rank of `rlsys train-rm` (rlsys/reward_training.py): Bradley-Terry
    on preference pairs, one optimizer step per `bt_step` (ppo_epochs = mini_batches = 1)."""

    trainer: TrainerSpec


@dataclass(frozen=True)
class ReferenceSpec:
    """The frozen reference policy (rlsys/reference.py); temperature as the learner's."""

    model_path: str
    dtype: str = "bfloat16"
    temperature: float = 1.0
    micro_batch_size: int = 8
    trust_remote_code: bool = False
    pack_prompts: bool = True


@dataclass(frozen=True)
class RewardSpec:
    """The reward actor: the weighted rule components (rlsys/rewards/scorer.py). Reward models
    are roles of their own (ScalarRMSpec, JudgeSpec)."""

    components: tuple[tuple, ...]  # (spec, weight[, options]) as RewardScorer takes them
    eval_components: Optional[tuple[tuple, ...]] = None  # None scores evaluation with `components`
    timeout_s: float = 5.0
    num_workers: int = 2


@dataclass(frozen=True)
class ScalarRMSpec:
    """A scalar reward model replica (rlsys/rewards/scalar_rm.py).

    model_path: an `rlsys train-rm` directory (VLM backbone + value head, rlsys_rm.json) or a HF
                sequence-classification checkpoint with one label (text only).
    batch_size: sequences per forward pass. max_length: longest sequence scored (prompt +
    response tokens); a longer one is not cut (that would score another prompt): it fails,
    counted, and scores 0.
    """

    model_path: str
    dtype: str = "float32"
    batch_size: int = 16
    max_length: int = 2048
    trust_remote_code: bool = False


@dataclass(frozen=True)
class JudgeSpec:
    """A generative judge replica (rlsys/rewards/judge.py): a vLLM engine writing a critique
    and then a score for each (image, question, response).

    template:   the prompt template text ({question}, {response}, optional {answer}).
    samples:    judgements per response, averaged (the failed ones left out of the mean).
    temperature, max_new_tokens: the judge's sampling; seed: its base sampling seed.
    fallback:   the score of a response none of whose judgements has a parsable score.
    """

    engine: EngineSpec
    template: str
    samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 96
    fallback: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class RewardModelRole:
    """One reward-model entry of `reward.components`: its column name, weight, whether its scores
    are standardised per batch, its replicas' resources, and the replica spec."""

    name: str
    weight: float
    normalize: bool
    replicas: int
    cpus: float
    gpus: float
    spec: "ScalarRMSpec | JudgeSpec"


@dataclass(frozen=True)
class DistRank:
    """One rank of a data-parallel group and the group's rendezvous (rank 0's node, a port)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class RoleSpecs:
    """Every role of a run; reference and critic are None when the algorithm needs none."""

    engine: EngineSpec
    reward: RewardSpec
    learner: LearnerSpec
    critic: Optional[CriticSpec]
    reference: Optional[ReferenceSpec]
    train_sampling: SamplingSpec
    eval_sampling: SamplingSpec
    reward_models: tuple[RewardModelRole, ...] = ()


def _trainer(cfg: RunConfig, model_path: str, *, zero_stage: int, lr: float, micro_batch_size: int) -> TrainerSpec:
    lr_cfg, a = cfg.learner, cfg.algorithm
    return TrainerSpec(
        model_path=model_path, zero_stage=zero_stage, lr=lr, lr_schedule=lr_cfg.lr_schedule,
        warmup_steps=lr_cfg.warmup_steps, total_steps=cfg.total_steps, weight_decay=lr_cfg.weight_decay,
        grad_clip=lr_cfg.grad_clip, micro_batch_size=micro_batch_size, ppo_epochs=lr_cfg.ppo_epochs,
        mini_batches=lr_cfg.mini_batches, dtype=cfg.model.dtype, seed=cfg.seed, backend=lr_cfg.backend,
        gradient_checkpointing=lr_cfg.gradient_checkpointing, trust_remote_code=cfg.model.trust_remote_code,
        loss_agg=a.loss_agg, norm_length=a.norm_length)


def engine_spec(cfg: RunConfig, model_path: str) -> EngineSpec:
    ro = cfg.rollout
    return EngineSpec(
        model_path=model_path, tensor_parallel_size=ro.tensor_parallel_size, dtype=cfg.model.dtype,
        max_model_len=ro.max_model_len, gpu_memory_utilization=ro.gpu_memory_utilization, seed=cfg.seed,
        enforce_eager=ro.enforce_eager, max_num_seqs=ro.max_num_seqs, kv_cache_space_gib=ro.cpu_kv_cache_gib,
        trust_remote_code=cfg.model.trust_remote_code)


def reward_components(components) -> tuple[tuple, ...]:
    """The rule entries of config reward components (rlsys/config/schema.py RewardComponent) as
    scorer components: (name, weight), or (name, weight, options) with options as pairs (not a
    dict, so the frozen spec stays hashable): ("name", alias) when an alias names the column,
    ("send_inputs", True) for a URL entry that sends prompts and images. Model entries
    are roles of their own (`reward_model_roles`)."""
    out = []
    for c in components:
        if c.model is not None:
            continue
        options = ((("name", c.alias),) if c.alias else ()) + ((("send_inputs", True),) if c.send_inputs else ())
        out.append((c.name, c.weight, options) if options else (c.name, c.weight))
    return tuple(out)


def reward_spec(cfg: RunConfig) -> RewardSpec:
    r = cfg.reward
    return RewardSpec(components=reward_components(r.components),
                      eval_components=None if cfg.eval.rewards is None else reward_components(cfg.eval.rewards),
                      timeout_s=r.timeout_s,
                      num_workers=r.num_workers)


def reward_model_roles(cfg: RunConfig, policy_path: str) -> tuple[RewardModelRole, ...]:
    """The model entries of reward.components as roles. `policy_path`: the resolved initial policy
    (a judge path 'reference' serves the reference model: reference.path, else this). Judge
    templates are read here (validation checked them)."""
    from rlsys.rewards.judge import load_template

    out = []
    for c in cfg.reward.components:
        if c.model is None:
            continue
        path = (cfg.reference.path or policy_path) if c.path == "reference" else c.path
        if c.model == "scalar":
            spec = ScalarRMSpec(model_path=path, dtype=cfg.model.dtype, batch_size=c.batch_size,
                                max_length=cfg.model.max_prompt_tokens + cfg.rollout.max_new_tokens,
                                trust_remote_code=cfg.model.trust_remote_code)
        else:
            # Its own devices: tensor-parallel over its replica's GPUs (1 on CPU), not the policy's TP.
            engine = dataclasses.replace(engine_spec(cfg, path), tensor_parallel_size=max(1, int(c.gpus)),
                                         max_model_len=cfg.rollout.max_model_len + cfg.rollout.max_new_tokens
                                         + c.max_new_tokens)
            spec = JudgeSpec(engine=engine, template=load_template(c.template), samples=c.samples, temperature=c.temperature,
                             max_new_tokens=c.max_new_tokens, fallback=c.fallback, seed=cfg.seed)
        out.append(RewardModelRole(component_column(c), c.weight, c.normalize, c.replicas, c.cpus, c.gpus, spec))
    return tuple(out)


def train_sampling(cfg: RunConfig) -> SamplingSpec:
    ro = cfg.rollout
    return SamplingSpec(ro.n, ro.temperature, ro.top_p, ro.max_new_tokens)


def eval_sampling(cfg: RunConfig) -> SamplingSpec:
    e = cfg.eval
    return SamplingSpec(e.n, e.temperature, 1.0, e.max_new_tokens, seed=cfg.seed if e.temperature > 0 else None)


def role_specs(cfg: RunConfig, model_path: str) -> RoleSpecs:
    """The one place a RunConfig becomes role specs. `model_path`: the resolved policy (an
    embedded model's built directory, else `model.path`)."""
    a, lr_cfg = cfg.algorithm, cfg.learner
    learner = LearnerSpec(
        trainer=_trainer(cfg, model_path, zero_stage=lr_cfg.run_zero_stage, lr=lr_cfg.lr,
                         micro_batch_size=lr_cfg.micro_batch_size),
        policy_loss=a.policy_loss, clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
        seq_clip_low=a.seq_clip_low, seq_clip_high=a.seq_clip_high,
        # KL folded into the reward is not also a loss term.
        kl_coef=0.0 if a.kl_in_reward else a.kl_coef, kl_estimator=a.kl_estimator,
        entropy_coef=a.entropy_coef, max_is_weight=a.max_is_weight,
        off_policy_correction=a.off_policy_correction, temperature=cfg.rollout.temperature,
        pack_prompts=lr_cfg.pack_prompts)
    critic = None
    if cfg.critic.enabled:
        c = cfg.critic
        critic = CriticSpec(trainer=_trainer(cfg, c.path or model_path, zero_stage=c.zero_stage, lr=c.lr,
                                             micro_batch_size=c.micro_batch_size), value_clip=c.value_clip)
    reference = None
    if a.kl_coef > 0:
        # Same temperature as the learner: the KL compares the two tempered distributions.
        reference = ReferenceSpec(model_path=cfg.reference.path or model_path, dtype=cfg.model.dtype,
                                  temperature=cfg.rollout.temperature, trust_remote_code=cfg.model.trust_remote_code,
                                  pack_prompts=cfg.learner.pack_prompts)
    return RoleSpecs(engine=engine_spec(cfg, model_path), reward=reward_spec(cfg), learner=learner,
                     critic=critic, reference=reference, train_sampling=train_sampling(cfg),
                     eval_sampling=eval_sampling(cfg), reward_models=reward_model_roles(cfg, model_path))


def sft_learner_spec(cfg: RunConfig, model_path: str, total_steps: int) -> LearnerSpec:
    """The policy learner of `rlsys sft` (cfg.sft): the learner section's ranks, ZeRO stage,
    micro-batches and clipping, the sft learning rate; one optimizer step per `sft_step`
    (ppo_epochs = mini_batches = 1), token-mean loss, log-probs at temperature 1."""
    s = cfg.sft
    return LearnerSpec(trainer=_one_step_trainer(cfg, model_path, s.lr, s.warmup_steps, total_steps), temperature=1.0)


def _one_step_trainer(cfg: RunConfig, model_path: str, lr: float, warmup_steps: int, total_steps: int) -> TrainerSpec:
    """The trainer of a supervised command (sft, train-rm): the learner section's ZeRO stage,
    micro-batches, clipping and backend; a constant LR after warm-up; one optimizer step per call
    (ppo_epochs = mini_batches = 1); token-mean aggregation."""
    return dataclasses.replace(
        _trainer(cfg, model_path, zero_stage=cfg.learner.run_zero_stage, lr=lr,
                 micro_batch_size=cfg.learner.micro_batch_size),
        lr_schedule="constant", warmup_steps=warmup_steps, total_steps=total_steps, ppo_epochs=1,
        mini_batches=1, loss_agg="token_mean", norm_length=None)


def rm_trainer_spec(cfg: RunConfig, model_path: str, total_steps: int) -> RMTrainerSpec:
    """The reward-model trainer of `rlsys train-rm` (cfg.train_rm): the learner section's ranks,
    ZeRO stage, micro-batch size (in pairs), clipping, weight decay and backend; train_rm's LR
    (constant after warm-up); one optimizer step per bt_step."""
    t = cfg.train_rm
    return RMTrainerSpec(_one_step_trainer(cfg, model_path, t.lr, t.warmup_steps, total_steps))


def prompt_seed(call_seed: int, uid: str) -> int:
    """The sampling seed of one prompt in a seeded call (vLLM gives sample j of it seed + j).
    A hash, not Python's salted hash(), so every process derives the same value."""
    import hashlib

    digest = hashlib.sha256(f"{call_seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x3FFFFFFF


def generate_kwargs(prompts, sampling: SamplingSpec) -> dict:
    """VLLMEngine.generate keywords of one call; seeded calls get one seed per prompt, derived
    from the call's seed and the prompt's uid, so a prompt samples the same responses on any
    engine, in any batch, after any restart."""
    seeds = None if sampling.seed is None else [prompt_seed(sampling.seed, p.uid) for p in prompts]
    return {"n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens, "seed": seeds}


def call_seed(run_seed: int, step: int, round_: int) -> int:
    """The seed of the generate call for training step `step` (1-based), draw round `round_`."""
    return prompt_seed(run_seed, f"step{step}/round{round_}")
