"""Ray actor of the frozen reference policy. Launch: `ray.remote(num_cpus=...)(ReferenceActor)`."""
from __future__ import annotations

import time
from collections import deque

from actors import set_torch_threads
from rlsys.specs import ReferenceSpec


class ReferenceActor:
    def __init__(self, spec: ReferenceSpec):
        from rlsys.reference import ReferenceModel

        set_torch_threads()
        self.model = ReferenceModel(spec)
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent calls

    def ready(self) -> bool:
        return True

    def compute_logprobs(self, samples) -> list:
        """TrainSample-like records -> list of [R_i] float32 tensors (reference log-probs)."""
        from rlsys.distributed.media_store import resolve_samples

        start = time.time()
        out = self.model.compute_logprobs(resolve_samples(samples))
        self.calls.append((start, time.time()))
        return out

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `compute_logprobs` calls ran (time.time() start, end)."""
        return list(self.calls)
