"""Algorithm math: advantage estimators, policy losses, KL estimators, loss aggregation.

Pure torch (no Ray, vLLM or DeepSpeed). Each family is a registry (a dict name -> function
with one shared signature); `get_*` look-ups raise an error listing the allowed names, and
`ADVANTAGE_NAMES` etc. are the allowed values a config validator checks against.
"""
from .advantages import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageOutputs,
    AdvantageParams,
    get_advantage,
    masked_whiten,
)
from .kl import K3_LOG_RATIO_CLAMP, K3_MAX, KL_ESTIMATORS, entropy_from_logits, get_kl_estimator
from .losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    AggregationParams,
    PolicyLossParams,
    PolicyLossStats,
    get_loss_aggregation,
    get_policy_loss,
    value_loss,
)
from .off_policy import OFF_POLICY_CORRECTIONS, ISWeightStats, get_off_policy_correction, truncated_is_weights
from .registry import Registry, UnknownNameError

ADVANTAGE_NAMES = ADVANTAGES.names()
POLICY_LOSS_NAMES = POLICY_LOSSES.names()
KL_ESTIMATOR_NAMES = KL_ESTIMATORS.names()
LOSS_AGGREGATION_NAMES = LOSS_AGGREGATIONS.names()
OFF_POLICY_CORRECTION_NAMES = OFF_POLICY_CORRECTIONS.names()

__all__ = [
    "ADVANTAGES", "POLICY_LOSSES", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "OFF_POLICY_CORRECTIONS",
    "OFF_POLICY_CORRECTION_NAMES", "get_off_policy_correction",
    "ADVANTAGE_NAMES", "POLICY_LOSS_NAMES", "KL_ESTIMATOR_NAMES", "LOSS_AGGREGATION_NAMES",
    "get_advantage", "get_policy_loss", "get_kl_estimator", "get_loss_aggregation",
    "AdvantageInputs", "AdvantageParams", "AdvantageOutputs", "masked_whiten",
    "PolicyLossParams", "PolicyLossStats", "truncated_is_weights", "ISWeightStats",
    "value_loss", "AggregationParams", "entropy_from_logits", "K3_LOG_RATIO_CLAMP", "K3_MAX",
    "Registry", "UnknownNameError",
]
