"""Validation of a built RunConfig: field ranges and choices, then the rules tying fields together.

Every check raises ConfigError with one line naming the field, the value and what is allowed.
Nothing here imports user code: specs of user functions are checked for shape and file only.
"""
from __future__ import annotations

import dataclasses
import math

from rlsys.plugins import is_spec, spec_problem
from rlsys.config.schema import ConfigError, RunConfig, SamplingConfig, component_column

# Registered estimators whose baseline is the prompt's other samples; they score whole sequences.
_GROUP_BASELINES = ("grpo", "rloo")


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


def _check_off_policy_bound(name: str, bound) -> None:
    """The correction itself says whether it accepts the bound (a masked one needs c > 1): it is
    called once on a single token, so the rule lives in one place, rlsys/algorithms/off_policy.py."""
    if bound is None:
        return
    import torch

    from rlsys.algorithms import get_off_policy_correction

    try:
        get_off_policy_correction(name)(torch.zeros(1, 1), torch.zeros(1, 1), bound)
    except ValueError as err:
        raise ConfigError(f"algorithm.max_is_weight = {bound}: {name} refuses it ({err})") from None


def validate(cfg: RunConfig) -> None:
    """Field ranges and choices, then the rules that tie fields together."""
    _check_fields(cfg, "")
    if cfg.algorithm.name == "ppo" and not cfg.critic.enabled:
        raise ConfigError("algorithm.name = 'ppo': needs critic.enabled = true (PPO learns a value model)")
    if cfg.critic.enabled and cfg.algorithm.name != "ppo":
        raise ConfigError(f"critic.enabled = true: only algorithm.name = 'ppo' uses a critic (got '{cfg.algorithm.name}')")
    if cfg.algorithm.clip_low >= 1.0:
        raise ConfigError(f"algorithm.clip_low = {cfg.algorithm.clip_low}: must be < 1 so 1 - clip_low stays positive")
    _check_advantage_estimator(cfg)
    _check_sampling(cfg.sampling)
    if cfg.sampling.max_staleness > 0 and cfg.algorithm.max_is_weight is None:
        raise ConfigError(f"sampling.max_staleness = {cfg.sampling.max_staleness}: off-policy samples need "
                          "algorithm.max_is_weight (the bound of the off-policy correction, e.g. 2.0); it is null")
    _check_off_policy_bound(cfg.algorithm.off_policy_correction, cfg.algorithm.max_is_weight)
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
    _check_device_plan(cfg)
    _check_gpu_plan(cfg)
    for where, comps in (("reward.components", cfg.reward.components), ("eval.rewards", cfg.eval.rewards or [])):
        for i, comp in enumerate(comps):
            _check_reward_entry(f"{where}[{i}]", comp)
        _check_reward_columns(where, comps)
    _check_eval_models(cfg)
    if cfg.eval.rewards == []:
        raise ConfigError("eval.rewards = []: name at least one reward, or null to use reward.components")
    if cfg.eval.n > 1 and cfg.eval.temperature == 0:
        raise ConfigError(f"eval.n = {cfg.eval.n} with eval.temperature = 0: greedy responses are identical; "
                          "set eval.temperature > 0 or eval.n = 1")


# ----------------------------------------------------------------------------- advantages

def _check_advantage_estimator(cfg: RunConfig) -> None:
    """Runs after the ppo <-> critic rules, so here a critic exists exactly when name is ppo."""
    from rlsys.algorithms import ADVANTAGE_NAMES

    est, chosen = cfg.advantage_estimator, cfg.algorithm.advantage_estimator
    # Name the field the user set: the estimator itself, or the algorithm it follows.
    shown = (f"algorithm.advantage_estimator = {chosen!r}" if chosen is not None
             else f"algorithm.name = {cfg.algorithm.name!r}")
    if is_spec(est):
        problem = spec_problem(est)
        if problem:
            raise ConfigError(f"{shown}: {problem}")
        return
    if est not in ADVANTAGE_NAMES:
        raise ConfigError(f"{shown}: must be null, one of {', '.join(ADVANTAGE_NAMES)}, "
                          "'path/file.py:function' or 'module:function'")
    if est == "gae" and not cfg.critic.enabled:
        raise ConfigError(f"{shown}: gae needs critic values (algorithm.name = 'ppo' with critic.enabled = true)")
    if cfg.critic.enabled and est != "gae":
        # The critic would train on returns that no advantage reads: a second model for nothing.
        raise ConfigError(f"{shown}: ppo trains a critic that {est} ignores; use gae or a user function "
                          "'path/file.py:function' (it gets the critic values)")
    if est in _GROUP_BASELINES and cfg.rollout.n < 2:
        raise ConfigError(f"rollout.n = {cfg.rollout.n}: {est} needs >= 2 samples per prompt for its baseline")
    if est in _GROUP_BASELINES and cfg.algorithm.kl_in_reward and cfg.algorithm.kl_coef > 0:
        # These estimators score whole sequences; they reject per-token KL rewards at the first step.
        raise ConfigError(f"algorithm.kl_in_reward = true: {est} takes sequence rewards only; use the KL "
                          "as a loss term (kl_in_reward = false) or reinforce_pp / gae")


# ----------------------------------------------------------------------------- sampling

def offline_groups(prompts_per_step: int, offline_fraction: float) -> int:
    """round(fraction * B), halves up (Python's round() would send 0.5 * 3 and 0.5 * 5 both to 2)."""
    return int(math.floor(offline_fraction * prompts_per_step + 0.5))


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
    k = offline_groups(s.prompts_per_step, s.offline_fraction)
    if not 0 < k < s.prompts_per_step:
        raise ConfigError(f"sampling.offline_fraction = {s.offline_fraction}: with prompts_per_step = "
                          f"{s.prompts_per_step} that is {k} replayed groups per step; mixed needs 1 to "
                          f"{s.prompts_per_step - 1} (use mode 'online' or 'offline' for all of one kind)")


# ----------------------------------------------------------------------------- resources

def gpu_plan(cfg: RunConfig) -> list[float]:
    """GPU request of every actor bundle, in placement order."""
    r = cfg.resources
    plan = [r.gpus_per_engine] * cfg.rollout.num_engines + [r.gpus_per_learner] * cfg.learner.num_ranks
    if cfg.critic.enabled:
        plan += [r.gpus_per_learner] * cfg.critic.num_ranks
    if cfg.algorithm.kl_coef > 0:
        plan.append(r.gpus_reference)
    plan += [c.gpus for c in cfg.reward.components if c.model is not None for _ in range(c.replicas)]
    return plan


def learner_backend(cfg: RunConfig) -> str:
    """The collective backend the learner (and critic) ranks open: `learner.backend`, or for
    'auto' what the rank finds (actors/__init__.py: NCCL when it sees a GPU, i.e. when
    resources.gpus_per_learner > 0, else gloo)."""
    if cfg.learner.backend != "auto":
        return cfg.learner.backend
    return "nccl" if cfg.resources.gpus_per_learner > 0 else "gloo"


def weight_sync_backend(cfg: RunConfig) -> str:
    """The backend of the learner -> engines broadcast group (collective weight sync). It follows
    `learner.backend`: an explicit 'nccl' or 'gloo' is used as it is (validation rejects NCCL
    with engines that have no GPU); 'auto' picks NCCL when the learner ranks and the engines both
    have GPUs, else gloo (a GPU learner syncing CPU engines goes through gloo)."""
    if cfg.learner.backend != "auto":
        return cfg.learner.backend
    r = cfg.resources
    return "nccl" if r.gpus_per_learner > 0 and r.gpus_per_engine > 0 else "gloo"


def _check_device_plan(cfg: RunConfig) -> None:
    """Plans that cannot start on the devices they ask for: GPU layouts of tensor-parallel
    engines, NCCL learner ranks, the reference on a GPU plan, the weight-sync backend."""
    r, ro = cfg.resources, cfg.rollout
    tp = ro.tensor_parallel_size
    if cfg.learner.backend == "gloo" and r.gpus_per_learner > 0:
        # rlsys/deepspeed_base.py computes on cuda only with NCCL.
        raise ConfigError(f"learner.backend = 'gloo' with resources.gpus_per_learner = {r.gpus_per_learner:g}: "
                          "gloo ranks train on CPU and their GPUs would sit idle; use nccl (or auto), or "
                          "gpus_per_learner = 0")
    if learner_backend(cfg) == "nccl" and r.gpus_per_learner != 1:
        why = ("NCCL cannot put two ranks of one group on one GPU" if r.gpus_per_learner < 1
               else f"a rank computes on one GPU (cuda:0), the other {r.gpus_per_learner - 1:g} would sit idle")
        raise ConfigError(f"resources.gpus_per_learner = {r.gpus_per_learner:g}: NCCL learner and critic ranks "
                          f"take exactly 1 GPU each ({why})")
    if tp > 1 and r.gpus_per_engine == 0 and r.gpus_per_learner > 0:
        raise ConfigError(f"rollout.tensor_parallel_size = {tp}: the learner is on GPUs but "
                          f"resources.gpus_per_engine = 0 gives the engines none; set resources.gpus_per_engine = "
                          f"{tp} (tensor parallel on CPU needs a plan without GPUs)")
    if tp > 1 and r.gpus_per_engine == 0 and r.cpus_per_engine < tp:
        raise ConfigError(f"rollout.tensor_parallel_size = {tp} on CPU: each tensor-parallel worker is a process "
                          f"on a CPU of its own, resources.cpus_per_engine = {r.cpus_per_engine:g} gives the engine "
                          f"fewer; set resources.cpus_per_engine >= {tp}")
    if (cfg.learner.weight_sync == "collective" and weight_sync_backend(cfg) == "nccl"
            and r.gpus_per_engine == 0):
        raise ConfigError("learner.weight_sync = 'collective': weight sync follows learner.backend = 'nccl' and "
                          "the engines have no GPU (resources.gpus_per_engine = 0); give them GPUs, or use "
                          "learner.weight_sync = object_store")
    if cfg.algorithm.kl_coef > 0 and r.gpus_per_learner > 0 and r.gpus_reference == 0:
        raise ConfigError(f"resources.gpus_reference = 0: algorithm.kl_coef = {cfg.algorithm.kl_coef:g} needs a "
                          f"reference model and the learner ranks are on GPUs (resources.gpus_per_learner = "
                          f"{r.gpus_per_learner:g}); a reference on CPU would run the policy-sized forward of "
                          "every batch there; give it a GPU (resources.gpus_reference = 1)")


def first_fit(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> int | None:
    """First-fit decreasing of `bundles` (resource dicts) onto `nodes` (each node's resources;
    a missing key is 0): None when every bundle fits, else the index (into `bundles`) of the
    first one no node has room for. Larger bundles (GPUs first, then CPUs) go first, so a
    tensor-parallel engine is not left without a whole node's GPUs by the 1-GPU ranks."""
    free = [dict(n) for n in nodes]
    order = sorted(range(len(bundles)), key=lambda i: (-bundles[i].get("GPU", 0.0), -bundles[i].get("CPU", 0.0)))
    for i in order:
        need = bundles[i]
        slot = next((n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items())), None)
        if slot is None:
            return i
        for k, v in need.items():
            slot[k] = slot.get(k, 0.0) - v
    return None


def _check_gpu_plan(cfg: RunConfig) -> None:
    """The GPU plan against the recipe's declared cluster (resources.nodes x gpus_per_node);
    the same packing runs against the real cluster at start (rlsys/distributed/placement.py
    check_plan_against_cluster)."""
    r = cfg.resources
    if r.nodes is None or r.gpus_per_node is None:
        return
    plan = gpu_plan(cfg)
    if max(plan, default=0) > r.gpus_per_node:
        raise ConfigError(f"resources.gpus_per_node = {r.gpus_per_node}: one actor asks for {max(plan)} GPUs "
                          "(a bundle cannot span nodes)")
    # First-fit on whole nodes: a tensor-parallel engine needs all its GPUs on one node.
    if first_fit([{"GPU": g} for g in plan], [{"GPU": float(r.gpus_per_node)}] * r.nodes) is not None:
        raise ConfigError(f"resources.nodes = {r.nodes}: the roles need {sum(plan):g} GPUs "
                          f"({plan}) but {r.nodes} x {r.gpus_per_node} cannot hold them")


# ----------------------------------------------------------------------------- rewards

# Metric columns the driver writes itself (reward/mean, reward/failures, reward/failed/*): an alias taking one
# would overwrite it.
_RESERVED_REWARD_COLUMNS = ("mean", "failures", "failed")


# Fields only a model entry reads, with the model kinds that read each.
_MODEL_FIELDS = {"path": ("scalar", "judge"), "replicas": ("scalar", "judge"), "cpus": ("scalar", "judge"),
                 "gpus": ("scalar", "judge"), "normalize": ("scalar", "judge"), "batch_size": ("scalar",),
                 "template": ("judge",), "samples": ("judge",), "temperature": ("judge",),
                 "max_new_tokens": ("judge",), "fallback": ("judge",)}


def _check_reward_entry(where: str, comp) -> None:
    """A rule entry names its function and sets no model field; a model entry sets `path`, no
    `name`, and only the fields its kind reads; a local path or template that cannot be used
    fails here, before any actor starts."""
    from rlsys.config.schema import RewardComponent

    default = RewardComponent()
    kind = comp.model
    for fld, kinds in _MODEL_FIELDS.items():
        if getattr(comp, fld) != getattr(default, fld) and kind not in kinds:
            whom = f"model: {kind}" if kind else "model entries"
            allowed = " / ".join(kinds)
            raise ConfigError(f"{where}.{fld} = {getattr(comp, fld)!r}: only {allowed} entries read it "
                              f"({'this is a rule entry' if kind is None else whom + ' ignores it'})")
    if comp.send_inputs and not (kind is None and (comp.name or "").startswith(("http://", "https://"))):
        raise ConfigError(f"{where}.send_inputs = true: only URL entries (name: http(s)://...) send inputs")
    if kind is None:
        if comp.name is None:
            raise ConfigError(f"{where}.name = null: a rule entry names its reward (or set model: scalar | judge)")
        problem = _reward_spec_problem(comp.name)
        if problem:
            raise ConfigError(f"{where}.name = {comp.name!r}: {problem}")
        return
    if comp.name is not None and comp.name != default.name:
        raise ConfigError(f"{where}.name = {comp.name!r}: a model entry has no rule name (set name: null; "
                          "alias names its column)")
    if not comp.path:
        raise ConfigError(f"{where}.path = null: a {kind} entry needs its checkpoint")
    problem = _model_path_problem(kind, comp.path)
    if problem:
        raise ConfigError(f"{where}.path = {comp.path!r}: {problem}")
    if kind == "judge":
        from rlsys.rewards.judge import check_template

        problem = check_template(comp.template)
        if problem:
            raise ConfigError(f"{where}.template = {comp.template!r}: {problem}")
        if comp.gpus > 0 and comp.gpus != int(comp.gpus):
            raise ConfigError(f"{where}.gpus = {comp.gpus}: a judge replica is a vLLM engine, tensor-parallel "
                              "over whole GPUs (0 on CPU, else 1, 2, ...)")
        if comp.samples > 1 and comp.temperature == 0:
            raise ConfigError(f"{where}.samples = {comp.samples} with temperature = 0: greedy judgements are "
                              "identical; set temperature > 0 or samples = 1")


def _model_path_problem(kind: str, path: str) -> str | None:
    """What is wrong with a reward model path that can be told without loading it: a local
    directory that is missing or holds no model. A hub id (org/name, not on disk) is left to the
    loader."""
    import os

    if kind == "judge" and path == "reference":
        return None
    local = os.path.expanduser(path)
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(local) or path.count("/") != 1
    if not looks_local:
        return None
    if not os.path.isdir(local):
        return "no such directory (a reward model is a checkpoint directory or a hub id org/name)"
    if not os.path.exists(os.path.join(local, "config.json")):
        return "not a model directory (no config.json)"
    if kind == "scalar" and not os.path.exists(os.path.join(local, "rlsys_rm.json")):
        import json

        with open(os.path.join(local, "config.json")) as fh:
            archs = json.load(fh).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            return ("neither an `rlsys train-rm` output (rlsys_rm.json) nor a sequence-classification "
                    f"checkpoint (architectures {archs})")
    return None


def _check_eval_models(cfg: RunConfig) -> None:
    """A model entry in eval.rewards reuses the training run's replicas of that model: it must be
    a reward.components model entry (same column, kind and path)."""
    train = {component_column(c): c for c in cfg.reward.components if c.model is not None}
    for i, comp in enumerate(cfg.eval.rewards or []):
        if comp.model is None:
            continue
        column = component_column(comp)
        match = train.get(column)
        if match is None or (match.model, match.path) != (comp.model, comp.path):
            raise ConfigError(f"eval.rewards[{i}].model = {comp.model!r}: evaluation scores with the run's own "
                              f"reward models; add it to reward.components (column {column!r}, same path)")


def _check_reward_columns(where: str, comps) -> None:
    """Each component names one column: its alias, else its spec; unique, so no two share one."""
    seen: dict[str, int] = {}
    for i, comp in enumerate(comps):
        if comp.alias is not None:
            if not comp.alias.strip() or comp.alias != comp.alias.strip() or "/" in comp.alias:
                raise ConfigError(f"{where}[{i}].alias = {comp.alias!r}: must be a non-empty name without "
                                  "surrounding spaces or '/'")
            if comp.alias in _RESERVED_REWARD_COLUMNS:
                raise ConfigError(f"{where}[{i}].alias = {comp.alias!r}: reward/{comp.alias} is a column of its "
                                  f"own; reserved: {', '.join(_RESERVED_REWARD_COLUMNS)}")
        column = component_column(comp)
        if column in seen:
            field = "alias" if comp.alias else ("model" if comp.model else "name")
            raise ConfigError(f"{where}[{i}].{field} = {column!r}: {where}[{seen[column]}] already names this "
                              "column; set a distinct alias")
        seen[column] = i


def _reward_spec_problem(spec: str) -> str | None:
    """Checks what can be checked without importing user code; loading happens in the reward actor."""
    if spec.startswith(("http://", "https://")):
        return None
    if is_spec(spec):
        return spec_problem(spec)
    from rlsys.rewards import REWARDS

    if spec not in REWARDS:
        return f"must be one of {', '.join(sorted(REWARDS))}, 'path/file.py:function', 'module:function' or an http(s) URL"
    return None
