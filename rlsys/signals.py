"""Processes a run starts (its private Ray, the wandb service) begin with SIGINT and SIGTERM
blocked, a mask they inherit. A signal sent to the run's whole process group (Ctrl-C in a
terminal, a scheduler's preemption, `ray job stop`) then reaches only the driver, which stops the
run cleanly at the next step; without this the same signal killed Ray under the driver."""
from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def stop_signals_held():
    """Block SIGINT and SIGTERM in this thread while processes are started; a signal that
    arrives meanwhile is delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
