"""FailureGuard: end a run whose reward component keeps failing, instead of training on the rest.

A reward call that fails scores 0 and is counted (scorer.py). That is right for a flaky sample
or two; a component that fails on most samples step after step (a broken user function, a dead
reward service) silently turns training into training on the other components. The driver
feeds every step's RewardResults to `FailureGuard.observe`, which raises RewardFailureError
once one component failed on more than `max_failure_frac` of a step's samples for
`max_failed_steps` consecutive steps.
"""
from __future__ import annotations

from rlsys.protocol import RewardResult
from rlsys.rewards.errors import RewardFailureError


class FailureGuard:
    """Pure bookkeeping over steps (no I/O); see the module docstring.

    max_failure_frac: a step is failed for a component when more than this fraction of its
                      samples failed for it (1.0 never counts a step as failed).
    max_failed_steps: consecutive failed steps of one component that raise.
    exempt:           components whose failures are counted but never stop the run (a judge's
                      unparsable outputs: they get the judge's configured fallback).
    """

    def __init__(self, max_failure_frac: float = 0.5, max_failed_steps: int = 3, exempt: tuple = ()) -> None:
        if not 0.0 <= max_failure_frac <= 1.0:
            raise ValueError(f"max_failure_frac = {max_failure_frac}: must be between 0 and 1")
        if max_failed_steps < 1:
            raise ValueError(f"max_failed_steps = {max_failed_steps}: must be >= 1")
        self.max_failure_frac = float(max_failure_frac)
        self.max_failed_steps = int(max_failed_steps)
        self.exempt = frozenset(exempt)
        self.streak: dict[str, int] = {}  # component -> consecutive failed steps so far

    def observe(self, results: list[RewardResult]) -> None:
        """Account one step's results (all its groups); RewardFailureError when a component's
        streak reaches `max_failed_steps`."""
        samples = sum(len(r.rewards) for r in results)
        failed: dict[str, int] = {}
        first: dict[str, RewardResult.Failure] = {}
        for result in results:
            for name, count in result.component_failures.items():
                if name in self.exempt:
                    continue
                failed[name] = failed.get(name, 0) + count
                if name in result.first_failure:
                    first.setdefault(name, result.first_failure[name])
        # A component that was not scored this step has no evidence either way: its streak ends.
        self.streak = {name: self.streak.get(name, 0) + 1 for name, count in failed.items()
                       if samples and count / samples > self.max_failure_frac}
        for name, steps in self.streak.items():
            if steps >= self.max_failed_steps:
                f = first[name]
                raise RewardFailureError(
                    f"reward {name!r} failed on {failed[name]} of {samples} samples for {steps} "
                    f"consecutive steps (reward.max_failure_frac = {self.max_failure_frac:g}, "
                    f"reward.max_failed_steps = {self.max_failed_steps}); first failure this "
                    f"step: prompt {f.uid!r} sample {f.index}: {f.error}")
