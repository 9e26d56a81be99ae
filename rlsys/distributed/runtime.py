"""What Ray says about the calling actor, read here so that the compute code gets plain values
(rlsys/models/engine.py takes its CPUs and bundle index as arguments) and no Ray internals are
read outside rlsys/distributed/."""
from __future__ import annotations

import re
from typing import Optional


def actor_cpu_share() -> tuple[Optional[float], int]:
    """(CPUs Ray assigned to this actor, its bundle index in its placement group) from Ray's
    runtime context; (None, 0) outside Ray, 0 for the index when Ray does not say."""
    try:
        import ray

        if not ray.is_initialized():
            return None, 0
        ctx = ray.get_runtime_context()
        cpus = ctx.get_assigned_resources().get("CPU")
    except Exception:
        return None, 0
    slot = 0
    try:
        # The public map drops the placement-group form of the names; only the core worker's
        # raw one keeps CPU_group_<bundle index>_<group id> for an actor in a bundle.
        for key in ctx.worker.core_worker.resource_ids():
            m = re.fullmatch(r"CPU_group_(\d+)_[0-9a-f]+", key)
            if m:
                slot = int(m.group(1))
                break
    except Exception:
        pass
    return cpus, slot
