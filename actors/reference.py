"""Ray actor of the frozen reference policy. Launch: `ray.remote(num_cpus=...)(ReferenceActor)`."""
from __future__ import annotations

from typing import Any


class ReferenceActor:
    """model_path, dtype, **kwargs: ReferenceModel's arguments (micro_batch_size, temperature)."""

    def __init__(self, model_path: str, dtype: Any = "bfloat16", **kwargs: Any):
        from rlsys.reference import ReferenceModel

        self.model = ReferenceModel(model_path, dtype, **kwargs)

    def ready(self) -> bool:
        return True

    def compute_logprobs(self, samples) -> list:
        """TrainSample-like records -> list of [R_i] float32 tensors (reference log-probs)."""
        return self.model.compute_logprobs(samples)
