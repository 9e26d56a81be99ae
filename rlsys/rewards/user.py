"""User reward functions: loading them from specs, and running them isolated with timeouts.

User code is untrusted in the sense that it may raise, hang, leak or kill its process. It runs
in worker processes (`IsolatedPool`) that the parent can kill and replace: a call that raises,
returns a non-finite / non-numeric value, exceeds its timeout or kills its worker is reported
as a failure (the scorer gives it 0 and counts it); the training process never waits longer
than the timeout for it.

Workers use the "spawn" start method by default: forking a process that already runs threads
(Ray, vLLM, torch) can deadlock the child. Spawn re-imports the parent's `__main__`, so entry
scripts need the usual `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable, Optional

from rlsys.rewards.registry import RewardSpecError

logger = logging.getLogger("rlsys.rewards")


# ----------------------------------------------------------------------------- loading


def _split_spec(spec: str) -> tuple[str, str]:
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise RewardSpecError(
            f"reward spec {spec!r}: expected 'path/to/file.py:function' or 'package.module:function'"
        )
    return target, func


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def canonical_spec(spec: str) -> str:
    """The spec with a file path made absolute, so a worker resolves the same file."""
    target, func = _split_spec(spec)
    if _is_file_target(target):
        return f"{os.path.abspath(os.path.expanduser(target))}:{func}"
    return spec


def _import_file(path: str, spec: str):
    """Import a .py file under a stable private module name (one module object per path)."""
    if not os.path.isfile(path):
        raise RewardSpecError(f"reward spec {spec!r}: file not found: {path}")
    name = "rlsys_user_reward_" + hashlib.sha1(path.encode("utf-8", "replace")).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardSpecError(f"reward spec {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec: dataclasses/pickle look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise RewardSpecError(f"reward spec {spec!r}: importing {path} failed: {exc!r}") from exc
    return module


def load_function(spec: str) -> Callable:
    """Load `fn` from 'path/to/file.py:fn' or 'package.module:fn'; RewardSpecError if absent."""
    target, func = _split_spec(spec)
    if _is_file_target(target):
        module = _import_file(os.path.abspath(os.path.expanduser(target)), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RewardSpecError(f"reward spec {spec!r}: cannot import module {target!r}: {exc}") from exc
        except Exception as exc:
            raise RewardSpecError(f"reward spec {spec!r}: importing {target!r} failed: {exc!r}") from exc
    fn = getattr(module, func, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardSpecError(f"reward spec {spec!r}: no function {func!r} in {target} (found: {found})")
    if not callable(fn):
        raise RewardSpecError(f"reward spec {spec!r}: {func!r} is not callable")
    return fn


# ----------------------------------------------------------------------------- worker side


def _worker_main(conn, preload: tuple = ()) -> None:
    """Worker loop: receive (task_id, target, response, answer, metadata), reply with a float.

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
        task_id, target, response, answer, metadata = msg
        try:
            kind, ref = target
            if kind == "spec":
                if ref not in cache:
                    cache[ref] = load_function(ref)
                fn = cache[ref]
            else:
                fn = ref
            value = float(fn(response, answer, metadata))
            if not math.isfinite(value):
                raise ValueError(f"reward is not finite: {value}")
            reply = (task_id, True, value)
        except BaseException as exc:  # SystemExit too: one bad call must not end the worker
            reply = (task_id, False, f"{type(exc).__name__}: {exc}"[:500])
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


# ----------------------------------------------------------------------------- parent side


@dataclass
class CallOutcome:
    """Result of one isolated call. ok=False means it failed; `error` says why."""

    value: float = 0.0
    ok: bool = True
    error: str = ""
    timed_out: bool = False


class _Worker:
    """One worker process and the parent's end of its pipe. Call `wait_ready` before use."""

    def __init__(self, ctx, preload: tuple) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, preload), daemon=True,
                                name="rlsys-reward")
        self.proc.start()
        child.close()  # the parent keeps only its end, so a dead child reads as EOF

    def wait_ready(self, timeout_s: float) -> bool:
        try:
            return self.conn.poll(timeout_s) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False

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
    """Up to `max_workers` killable worker processes running reward calls with a deadline each.

    `run` dispatches calls to idle workers and waits on all busy pipes at once; a worker whose
    call passes its deadline (or dies) is killed and replaced lazily. Thread-safe (one `run`
    at a time).
    """

    def __init__(self, max_workers: int = 2, mp_context: str = "spawn", preload: tuple = (),
                 startup_timeout_s: float = 60.0) -> None:
        self.max_workers = max(1, int(max_workers))
        self._ctx = mp.get_context(mp_context)
        self._preload = tuple(preload)
        self._startup_timeout_s = startup_timeout_s
        self._idle: list[_Worker] = []
        self._count = 0  # live workers (idle or busy)
        self._lock = threading.Lock()
        self.restarts = 0  # workers killed after a timeout or a crash
        self._closed = False

    def _start_workers(self, wanted: int) -> None:
        """Start workers up to `wanted` in parallel; deadlines start only once they are ready.

        Process start-up (interpreter, imports) can take seconds on a loaded machine; charging
        it to a call's timeout would fail healthy reward functions.
        """
        new = [_Worker(self._ctx, self._preload) for _ in range(min(wanted, self.max_workers) - self._count)]
        for worker in new:
            if worker.wait_ready(self._startup_timeout_s):
                self._idle.append(worker)
                self._count += 1
            else:
                logger.warning("reward worker failed to start within %.0fs", self._startup_timeout_s)
                worker.kill()

    def _acquire(self) -> Optional[_Worker]:
        return self._idle.pop() if self._idle else None

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._count -= 1
        self.restarts += 1

    def run(self, tasks: list[tuple[Any, Any, Any, Any]], timeout_s: float) -> list[CallOutcome]:
        """Run (target, response, answer, metadata) tasks; one outcome per task, in order."""
        outcomes = [CallOutcome() for _ in tasks]
        with self._lock:
            if self._closed:
                raise RuntimeError("IsolatedPool is closed")
            pending = list(range(len(tasks)))[::-1]  # pop() from the end keeps task order
            busy: dict[Any, tuple[_Worker, int, float]] = {}
            self._resent: set[int] = set()  # tasks already re-queued after a dead idle worker
            while pending or busy:
                self._start_workers(len(pending) + len(busy))
                if not self._idle and not busy:  # no worker could start: fail what is left
                    for idx in pending:
                        outcomes[idx] = CallOutcome(ok=False, error="no reward worker could start")
                    break
                self._dispatch(tasks, pending, busy, outcomes, timeout_s)
                if busy:
                    self._collect(busy, outcomes, timeout_s)
        return outcomes

    def _dispatch(self, tasks, pending, busy, outcomes, timeout_s) -> None:
        while pending:
            worker = self._acquire()
            if worker is None:
                return
            idx = pending.pop()
            try:
                worker.conn.send((idx, *tasks[idx]))
            except OSError as exc:  # the worker died while idle (e.g. OOM-killed): not the call's
                self._discard(worker)  # fault, so re-queue it once on a fresh worker
                if idx in self._resent:
                    outcomes[idx] = CallOutcome(ok=False, error=f"cannot send task: {exc!r}")
                else:
                    self._resent.add(idx)
                    pending.append(idx)
                continue
            except Exception as exc:  # unpicklable metadata or function
                outcomes[idx] = CallOutcome(ok=False, error=f"cannot send task: {exc!r}"[:500])
                self._idle.append(worker)
                continue
            busy[worker.conn] = (worker, idx, time.monotonic() + timeout_s)

    def _collect(self, busy, outcomes, timeout_s) -> None:
        next_deadline = min(deadline for _, _, deadline in busy.values())
        ready = wait_connections(list(busy), timeout=max(0.0, next_deadline - time.monotonic()))
        for conn in ready:
            worker, idx, _ = busy.pop(conn)
            try:
                task_id, ok, payload = conn.recv()
                assert task_id == idx, "worker reply out of order"
            except Exception as exc:  # EOF: the user function killed its worker
                outcomes[idx] = CallOutcome(ok=False, error=f"worker died: {exc!r}")
                self._discard(worker)
                continue
            outcomes[idx] = CallOutcome(value=payload) if ok else CallOutcome(ok=False, error=payload)
            self._idle.append(worker)
        now = time.monotonic()
        for conn in [c for c, (_, _, deadline) in busy.items() if deadline <= now]:
            worker, idx, _ = busy.pop(conn)
            outcomes[idx] = CallOutcome(ok=False, timed_out=True, error=f"timed out after {timeout_s}s")
            self._discard(worker)

    def close(self) -> None:
        """Stop all idle workers (busy ones only exist inside `run`)."""
        with self._lock:
            self._closed = True
            for worker in self._idle:
                worker.kill()
            self._idle.clear()
            self._count = 0
