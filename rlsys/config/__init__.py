"""The one configuration tree of a run (schema), how it is read (loading) and checked (validation).

`load_config` validates everything — unknown keys, types, ranges, choices, cross-field rules —
and raises `ConfigError` with one line naming the field, the value and what is allowed, before
any actor starts. Importers use this package; its submodules import each other directly.
"""
from rlsys.config.loading import documented_yaml, load_config, parse_override, to_dict, to_yaml
from rlsys.config.schema import (
    ALGORITHM_ADVANTAGE,
    AlgorithmConfig,
    CheckpointConfig,
    FaultConfig,
    ConfigError,
    CriticConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    ReferenceConfig,
    ResourcesConfig,
    RewardComponent,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    SyntheticConfig,
    f,
)
from rlsys.config.validation import first_fit, gpu_plan, learner_backend, offline_groups, validate, weight_sync_backend

__all__ = [
    "ALGORITHM_ADVANTAGE", "AlgorithmConfig", "CheckpointConfig", "ConfigError", "FaultConfig", "CriticConfig",
    "DataConfig", "EvalConfig", "LearnerConfig", "LoggingConfig", "ModelConfig", "ReferenceConfig",
    "ResourcesConfig", "RewardComponent", "RewardConfig", "RolloutConfig", "RunConfig",
    "SamplingConfig", "SyntheticConfig", "f",
    "documented_yaml", "load_config", "parse_override", "to_dict", "to_yaml",
    "first_fit", "gpu_plan", "learner_backend", "offline_groups", "validate", "weight_sync_backend",
]
