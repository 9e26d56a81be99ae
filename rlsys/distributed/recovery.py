"""Dead actors come back. A role that dies (its process killed, its node lost) is started again
in its own bundle by the launcher's `RoleStarter`, within `fault.max_restarts` per role; the
work it had in flight is re-issued by the caller (rlsys/distributed/roles.py and streaming.py).
Each restart is counted and timed for the step's metrics (`faults/restarts/<role>`,
`faults/recovery_s/<role>`).

Stateless roles (engines, the reward actor, the reference) restart in place. The learner group
holds the run's state, so its death is raised as `LearnerDied` and the driver rebuilds the
group from the latest checkpoint.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Optional, Protocol


class RoleFailure(RuntimeError):
    """A role died more often than `fault.max_restarts` allows; the message is one line."""


class LearnerDied(RuntimeError):
    """A learner (or critic) rank died: the training state is gone with it."""


class RoleStarter(Protocol):
    """What launch/roles.py gives the roles to start actors again."""

    def restart(self, role: str, index: int) -> list:
        """Start role `role` ("engine", "reward", "reference", "learner") again in the bundle
        of its `index`-th actor ("learner": the whole group, critic included); -> the new
        actors, ready."""

    def open_weight_sync(self, learners: list, engines: list) -> None:
        """(Re)open the learner -> engines broadcast group; every member idle."""


def is_actor_death(err: BaseException) -> bool:
    """The error Ray raises for a call whose actor is dead (or died during the call)."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError)


def dead_actor_id(err: BaseException) -> Optional[str]:
    """Hex id of the actor `err` reports dead, when Ray says which."""
    return getattr(err, "actor_id", None)


def actor_id(actor) -> str:
    return actor._actor_id.hex()


class Recovery:
    """Restart budget, counts and recovery time per role."""

    def __init__(self, starter: RoleStarter, max_restarts: int):
        self.starter = starter
        self.max_restarts = max_restarts
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        # Set when an engine was replaced: the broadcast group must be reopened before the
        # next collective sync (it still names the dead process).
        self.sync_group_stale = False

    def restart(self, role: str, index: int = 0) -> list:
        self.counts[role] += 1
        if self.counts[role] > self.max_restarts:
            raise RoleFailure(f"{role} {index} died with its restarts used up "
                              f"(fault.max_restarts = {self.max_restarts}); stopping")
        t0 = time.perf_counter()
        actors = self.starter.restart(role, index)
        self.seconds[role] += time.perf_counter() - t0
        return actors

    def add_seconds(self, role: str, seconds: float) -> None:
        """Recovery time spent outside the restart itself (re-issuing work, loading state)."""
        self.seconds[role] += seconds

    def metrics(self) -> dict[str, float]:
        """Cumulative restarts and recovery seconds of every role that has restarted."""
        out = {}
        for role in sorted(self.counts):
            out[f"faults/restarts/{role}"] = float(self.counts[role])
            out[f"faults/recovery_s/{role}"] = float(self.seconds[role])
        return out
