"""Stage timing of a driver step: named stages, and the rest reported as orchestration overhead."""
from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    def __init__(self):
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> dict[str, float]:
        """Stage seconds plus `step` (wall time) and `overhead` (step minus the stages)."""
        total = time.perf_counter() - self._start
        out = {f"time/{k}": v for k, v in self.stages.items()}
        out["time/step"] = total
        out["time/overhead"] = max(0.0, total - sum(self.stages.values()))
        return out
