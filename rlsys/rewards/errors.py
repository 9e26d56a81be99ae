"""The errors rlsys.rewards raises, in a module of their own so every other module of the
package can import them without importing each other."""


class RewardSpecError(ValueError):
    """A reward spec that cannot be resolved or does not work (unknown name, missing file or
    function, a probe call that fails); the message is one line naming the spec."""


class RewardFailureError(RuntimeError):
    """A reward component failed on too many samples for too many consecutive steps
    (see failures.FailureGuard); the message is one line naming the component, its error and
    the first failing sample."""
