"""User reward functions: loading them from specs, and running them isolated with timeouts.

User code is untrusted in the sense that it may raise, hang, leak or kill its process. It runs
in worker processes (`IsolatedPool`) that the parent can kill and replace: a call that raises,
returns a non-finite / non-numeric value, misses the batch deadline or kills its worker is
reported as a failure (the scorer gives it 0 and counts it); the training process never waits
longer than the deadline for a batch of calls.

Workers use the "spawn" start method by default: forking a process that already runs threads
(Ray, vLLM, torch) can deadlock the child. Spawn re-imports the parent's `__main__`, so entry
scripts need the usual `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable, Optional

from rlsys import plugins
from rlsys.plugins import spec_problem
from rlsys.rewards.errors import RewardSpecError
from rlsys.rewards.forms import call_reward

logger = logging.getLogger("rlsys.rewards")


# ----------------------------------------------------------------------------- loading


def canonical_spec(spec: str) -> str:
    """The spec with a file path made absolute, so a worker resolves the same file."""
    problem = spec_problem(spec) if ":" in spec else "expected 'path/to/file.py:function' or 'package.module:function'"
    if problem and "not found" not in problem:
        raise RewardSpecError(f"reward spec {spec!r}: {problem}")
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py") or "/" in target or os.sep in target:
        return f"{os.path.abspath(os.path.expanduser(target))}:{func}"
    return spec


def load_function(spec: str) -> Callable:
    """Load `fn` from 'path/to/file.py:fn' or 'package.module:fn' (rlsys/plugins.py does the
    import); RewardSpecError naming the spec when it cannot."""
    try:
        return plugins.load_function(spec)
    except plugins.PluginError as err:
        reason = str(err).removeprefix(f"{spec}: ")
        raise RewardSpecError(f"reward spec {spec!r}: {reason}") from err


# ----------------------------------------------------------------------------- worker side


def reward_value(raw: Any) -> float:
    """A reward function's return value as a finite float; TypeError / ValueError saying why not.

    Strings are refused although float("0.5") would parse: a reward returning text is a bug
    (e.g. a label returned instead of a score), not a number to guess at.
    """
    if raw is None or isinstance(raw, (str, bytes)):
        raise TypeError(f"reward returned {type(raw).__name__} {raw!r:.60}, expected a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"reward is not finite: {value}")
    return value


def _worker_main(conn, preload: tuple = ()) -> None:
    """Worker loop: receive (task_id, target, form, payload), reply (task_id, True, entries) with
    one entry per sample of the call (forms.call_reward: a float, or a str saying why that
    sample failed) or (task_id, False, why) when the call itself failed.

    target is ("spec", canonical spec) — resolved here, cached — or ("obj", picklable callable).
    Targets in `preload` are imported before the worker reports ready (objects: when the
    arguments were unpickled), so a user module's import time is not charged to a call.
    """
    cache: dict[str, Callable] = {}
    for kind, ref in preload:
        try:
            if kind == "spec":
                cache[ref] = load_function(ref)
        except Exception:
            pass  # reported per call, where it is counted
    try:
        conn.send("ready")
    except (OSError, ValueError):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        task_id, target, form, payload = msg
        try:
            kind, ref = target
            if kind == "spec":
                if ref not in cache:
                    cache[ref] = load_function(ref)
                fn = cache[ref]
            else:
                fn = ref
            reply = (task_id, True, call_reward(fn, form, payload, reward_value))
        except BaseException as exc:  # SystemExit too: one bad call must not end the worker
            reply = (task_id, False, f"{type(exc).__name__}: {exc}"[:500])
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


# ----------------------------------------------------------------------------- parent side


@dataclass
class CallOutcome:
    """Result of one isolated call. ok=False means it failed; `error` says why. `value`: the
    call's entries, one per sample it covered (forms.call_reward)."""

    value: Any = None
    ok: bool = True
    error: str = ""
    timed_out: bool = False


class _Worker:
    """One worker process and the parent's end of its pipe; its first message is "ready"."""

    def __init__(self, ctx, preload: tuple) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, preload), daemon=True,
                                name="rlsys-reward")
        self.proc.start()
        child.close()  # the parent keeps only its end, so a dead child reads as EOF

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=2.0)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass


class IsolatedPool:
    """Up to `max_workers` killable worker processes running a batch of reward calls under one
    deadline.

    `run` waits until the workers are up (process start-up can take seconds on a loaded machine
    and is not charged to the calls), then keeps every worker busy, giving a free worker to the
    target with the fewest calls in flight, so a function that hangs holds at most its share of
    the workers while the others finish. At the deadline every call still running times out and
    its worker is killed; calls not started by then fail without running. A killed or crashed
    worker is replaced at once, in the background. Thread-safe (one `run` at a time).
    """

    def __init__(self, max_workers: int = 2, mp_context: str = "spawn", preload: tuple = (),
                 startup_timeout_s: float = 60.0) -> None:
        self.max_workers = max(1, int(max_workers))
        self._ctx = mp.get_context(mp_context)
        self._preload = tuple(preload)
        self._startup_timeout_s = startup_timeout_s
        self._idle: list[_Worker] = []
        self._starting: list[_Worker] = []  # spawned, "ready" not yet read
        self._lock = threading.Lock()
        self.restarts = 0  # workers killed after a timeout or a crash
        self._closed = False

    # ---------------------------------------------------------------- workers

    def _spawn(self, n: int) -> None:
        self._starting.extend(_Worker(self._ctx, self._preload) for _ in range(n))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.restarts += 1
        self._spawn(1)

    def _admit(self, worker: _Worker) -> None:
        """Read a starting worker's first message: idle if it says ready, else gone."""
        self._starting.remove(worker)
        try:
            ready = worker.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if ready:
            self._idle.append(worker)
        else:
            logger.warning("a reward worker exited during start-up")
            worker.kill()

    def _await_startup(self) -> None:
        end = time.monotonic() + self._startup_timeout_s
        while self._starting:
            by_conn = {w.conn: w for w in self._starting}
            ready = wait_connections(list(by_conn), timeout=max(0.0, end - time.monotonic()))
            if not ready:
                logger.warning("%d reward worker(s) failed to start within %.0fs",
                               len(self._starting), self._startup_timeout_s)
                for worker in self._starting:
                    worker.kill()
                self._starting.clear()
            for conn in ready:
                self._admit(by_conn[conn])

    # ---------------------------------------------------------------- one batch

    def run(self, tasks: list[tuple[Any, Any, Any]], timeout_s: float) -> list[CallOutcome]:
        """Run (target, form, payload) tasks (forms.call_reward's arguments; payload is one
        sample's (response, answer, metadata), a RewardInput, or a batch or group of them)
        within `timeout_s` in all; one outcome per task, in order."""
        outcomes = [CallOutcome() for _ in tasks]
        with self._lock:
            if self._closed:
                raise RuntimeError("IsolatedPool is closed")
            self._spawn(self.max_workers - len(self._idle) - len(self._starting))
            self._await_startup()
            batch = _Batch(tasks, outcomes, time.monotonic() + timeout_s)
            while batch.left():
                self._dispatch(batch)
                remaining = batch.deadline - time.monotonic()
                if remaining <= 0 or not (batch.busy or self._idle or self._starting):
                    break
                self._collect(batch, remaining)
            self._expire(batch, timeout_s)
        return outcomes

    def _dispatch(self, batch: "_Batch") -> None:
        while self._idle:
            queue = batch.next_queue()
            if queue is None:
                return
            idx = batch.queues[queue].popleft()
            worker = self._idle.pop()
            try:
                worker.conn.send((idx, *batch.tasks[idx]))
            except OSError as exc:  # the worker died while idle (e.g. OOM-killed): not the call's
                self._replace(worker)  # fault, so re-queue it once for another worker
                if idx in batch.resent:
                    batch.outcomes[idx] = CallOutcome(ok=False, error=f"cannot send task: {exc!r}")
                else:
                    batch.resent.add(idx)
                    batch.queues[queue].appendleft(idx)
                continue
            except Exception as exc:  # unpicklable metadata or function
                batch.outcomes[idx] = CallOutcome(ok=False, error=f"cannot send task: {exc!r}"[:500])
                self._idle.append(worker)
                continue
            batch.busy[worker.conn] = (worker, idx, queue)
            batch.in_flight[queue] += 1

    def _collect(self, batch: "_Batch", timeout: float) -> None:
        starting = {w.conn: w for w in self._starting}
        for conn in wait_connections([*batch.busy, *starting], timeout=timeout):
            if conn in starting:
                self._admit(starting[conn])
                continue
            worker, idx, queue = batch.busy.pop(conn)
            batch.in_flight[queue] -= 1
            try:
                task_id, ok, payload = conn.recv()
                assert task_id == idx, "worker reply out of order"
            except Exception as exc:  # EOF: the user function killed its worker
                batch.outcomes[idx] = CallOutcome(ok=False, error=f"worker died: {exc!r}")
                self._replace(worker)
                continue
            batch.outcomes[idx] = CallOutcome(value=payload) if ok else CallOutcome(ok=False, error=payload)
            self._idle.append(worker)

    def _expire(self, batch: "_Batch", timeout_s: float) -> None:
        """Fail what is left when `run` stops: at the deadline, or with no worker to run on."""
        no_workers = not (self._idle or self._starting or batch.busy)
        for worker, idx, _ in batch.busy.values():
            batch.outcomes[idx] = CallOutcome(
                ok=False, timed_out=True, error=f"timed out: still running at the {timeout_s:g}s batch deadline")
            self._replace(worker)
        for queue in batch.queues:
            for idx in queue:
                batch.outcomes[idx] = CallOutcome(ok=False, error="no reward worker could start") if no_workers \
                    else CallOutcome(ok=False, timed_out=True,
                                     error=f"timed out: not started by the {timeout_s:g}s batch deadline")

    def close(self) -> None:
        """Stop all workers (busy ones only exist inside `run`)."""
        with self._lock:
            self._closed = True
            for worker in self._idle + self._starting:
                worker.kill()
            self._idle.clear()
            self._starting.clear()


class _Batch:
    """The state of one `IsolatedPool.run`: tasks queued per target, calls in flight."""

    def __init__(self, tasks: list[tuple], outcomes: list[CallOutcome], deadline: float) -> None:
        self.tasks, self.outcomes, self.deadline = tasks, outcomes, deadline
        targets: list[Any] = []
        self.queues: list[deque] = []
        for idx, task in enumerate(tasks):
            for k, target in enumerate(targets):
                if target is task[0] or target == task[0]:
                    self.queues[k].append(idx)
                    break
            else:
                targets.append(task[0])
                self.queues.append(deque([idx]))
        self.in_flight = [0] * len(self.queues)
        self.busy: dict[Any, tuple[_Worker, int, int]] = {}  # conn -> (worker, task, queue)
        self.resent: set[int] = set()  # tasks re-queued once after a dead idle worker

    def left(self) -> bool:
        return bool(self.busy) or any(self.queues)

    def next_queue(self) -> Optional[int]:
        """The target with work queued and the fewest calls in flight (first seen on ties)."""
        waiting = [k for k, q in enumerate(self.queues) if q]
        return min(waiting, key=lambda k: self.in_flight[k]) if waiting else None
