"""RewardScorer: weighted reward components, each call bounded and failure-counted.

Three ways a component runs:

- inline:   rlsys built-ins (`r1_format`, `accuracy`). They are pure, linear-time, catch their
            own errors and bound math-verify with a deadline, so a process hop would only add
            latency. `isolate_builtins=True` sends them to the worker pool too.
- isolated: everything else (file / module specs, user-registered names, plain callables) runs
            in `IsolatedPool` worker processes. The calls of one batch (one `score_groups`) run
            concurrently under one deadline, `timeout_s`, so a function that hangs costs about
            `timeout_s` per batch, not per sample. A call that raises, returns a non-finite or
            non-numeric value, misses the deadline or kills its worker scores 0 and counts.
- batch:    objects with `score_batch(responses, answers, metadatas) -> (rewards, failed)`
            (`RemoteReward`, URL specs, the "remote" factory) get one batched call per
            component; they bound their own calls. failed[i] is falsy for a good item, else
            True or a string saying why. One whose `wants_inputs` is true also gets
            `inputs=` the items' RewardInputs (a remote reward model sends prompt and images).

Inline and isolated functions are called in their form (forms.py, read once at construction):
per sample (legacy, `sample`: one call, hence one worker task, per sample), per prompt (`group`:
one call per group) or per batch (`samples`, TRL: one call for all samples of the
`score_groups`). A call that fails fails each sample it covers; an entry a list form returns as
None or non-numeric fails that sample alone. Context forms get RewardInputs built here; images
that are object-store references are fetched here (the reward actor's process) and decoded
where the reward runs, on first use.

Combined reward per sample: rewards[i] = sum_k weight_k * score_k[i]; `components` holds each
score_k before weighting, keyed by component name (the spec unless options give "name").
Each RewardResult also counts the failed calls per component and keeps the first one's error
and sample, which `failures.FailureGuard` turns into a run-ending error when they persist.
"""
from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from rlsys.protocol import RewardResult, RolloutGroup
from rlsys.rewards.equivalence import to_text
from rlsys.rewards.forms import GROUP, LEGACY, LEGACY_FORM, SAMPLE, Form, build_inputs, call_reward, reward_form
from rlsys.rewards.registry import REWARD_FACTORIES, REWARDS, get_reward, is_trusted, is_url
from rlsys.rewards.user import IsolatedPool, canonical_spec, reward_value

logger = logging.getLogger("rlsys.rewards")
_LOG_FIRST_N = 5  # per component, then every 100th failure, so a broken function can't flood logs


@dataclass
class _Component:
    name: str
    weight: float
    mode: str  # "inline" | "isolated" | "batch"
    fn: Any  # callable (inline), reward object (batch)
    target: Optional[tuple] = None  # worker target (isolated)
    failures: int = 0
    form: Form = LEGACY_FORM  # how it is called (forms.py); batch components: unused


def _wants_inputs(comp: "_Component") -> bool:
    """A batch component that takes the items' RewardInputs (RemoteReward with send_inputs)."""
    return comp.mode == "batch" and bool(getattr(comp.fn, "wants_inputs", False))


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:
        return False


class RewardScorer:
    """Scores rollout groups with weighted reward components.

    components: [(spec, weight)] or [(spec, weight, options)]; spec is a reward spec string
                (see registry.py) or a callable / reward object. options (dict) go to URL specs
                and factories (token, timeout_s, ...); options["name"] renames the component.
    timeout_s:  deadline for the isolated calls of one batch (and the per-attempt default for
                URL specs).
    max_workers: worker processes for isolated components (started on first use).
    """

    def __init__(
        self,
        components: Sequence[tuple],
        timeout_s: float = 10.0,
        max_workers: int = 2,
        isolate_builtins: bool = False,
        mp_context: str = "spawn",
    ) -> None:
        if not components:
            raise ValueError("RewardScorer needs at least one (spec, weight) component")
        self.timeout_s = float(timeout_s)
        self.isolate_builtins = isolate_builtins
        self._components = [self._resolve(c) for c in components]
        names = [c.name for c in self._components]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate reward component names {names}; set options['name']")
        self._pool: Optional[IsolatedPool] = None
        self._max_workers = max_workers
        self._mp_context = mp_context
        self.calls = 0  # cumulative reward calls (one per sample per component)
        self.failures = 0  # cumulative failed calls (raised, timed out, bad value, remote error)
        self.timeouts = 0  # the subset of failures that timed out in a worker

    # ------------------------------------------------------------------ construction

    def _resolve(self, component: tuple) -> _Component:
        if not isinstance(component, (tuple, list)) or len(component) not in (2, 3):
            raise ValueError(f"reward component must be (spec, weight[, options]), got {component!r}")
        spec, weight = component[0], float(component[1])
        options = dict(component[2]) if len(component) == 3 and component[2] else {}
        name = options.pop("name", None)
        if isinstance(spec, str):
            if is_url(spec) or spec in REWARD_FACTORIES:
                options.setdefault("timeout_s", self.timeout_s)
            fn = get_reward(spec, **options)
            name = name or spec
        elif callable(spec):
            fn, name = spec, name or getattr(spec, "__name__", None) or repr(spec)
        else:
            raise ValueError(f"reward spec must be a string or callable, got {spec!r}")
        if hasattr(fn, "score_batch"):
            return _Component(name, weight, "batch", fn)
        # Read once, here: a signature no form accepts is a RewardSpecError before any call.
        form = reward_form(fn, spec if isinstance(spec, str) else name)
        if isinstance(spec, str) and spec in REWARDS:
            if is_trusted(spec) and not self.isolate_builtins:
                return _Component(name, weight, "inline", fn, form=form)
            return self._isolated(name, weight, fn, ("obj", fn), form)
        if isinstance(spec, str):  # file or module spec: the worker re-loads it by spec
            return _Component(name, weight, "isolated", fn, ("spec", canonical_spec(spec)), form=form)
        return self._isolated(name, weight, fn, ("obj", fn), form)

    @staticmethod
    def _isolated(name: str, weight: float, fn: Callable, target: tuple, form: Form) -> _Component:
        if _picklable(fn):
            return _Component(name, weight, "isolated", fn, target, form=form)
        # Lambdas/closures cannot reach a worker; run them inline (still exception-safe).
        logger.warning("reward %s is not picklable; running it inline without a timeout", name)
        return _Component(name, weight, "inline", fn, form=form)

    @property
    def needs_context(self) -> bool:
        """Some component takes RewardInputs (prompt, images, group), not just the texts."""
        return any(_wants_inputs(c) if c.mode == "batch" else c.form.kind != LEGACY for c in self._components)

    def forms(self) -> dict[str, str]:
        """Component name -> how it is called: a forms.py kind, or "score_batch"."""
        return {c.name: "score_batch" if c.mode == "batch" else c.form.kind for c in self._components}

    @property
    def worker_restarts(self) -> int:
        return self._pool.restarts if self._pool else 0

    def stats(self) -> dict:
        """Cumulative counters, e.g. for step logs."""
        out = {"calls": self.calls, "failures": self.failures, "timeouts": self.timeouts,
               "worker_restarts": self.worker_restarts}
        out.update({f"failures/{c.name}": c.failures for c in self._components})
        return out

    # ------------------------------------------------------------------ scoring

    def score_group(self, group: RolloutGroup) -> RewardResult:
        """Score the G rollouts of one group."""
        return self.score_groups([group])[0]

    def score_groups(self, groups: Sequence[RolloutGroup]) -> list[RewardResult]:
        """Score many groups as one batch: isolated calls run concurrently under one
        `timeout_s` deadline, remote components get one batched call each."""
        groups = list(groups)
        inputs = None
        if self.needs_context:
            groups = self._with_image_bytes(groups)
            inputs = build_inputs(groups)
        responses, answers, metadatas, sizes = [], [], [], []
        for group in groups:
            answer = None if group.prompt.answer is None else to_text(group.prompt.answer)
            metadata = group.prompt.metadata if isinstance(group.prompt.metadata, dict) else {}
            for rollout in group.rollouts:
                responses.append(to_text(rollout.response_text))
                answers.append(answer)
                metadatas.append(metadata)
            sizes.append(len(group.rollouts))
        components, errors = self._score_flat(responses, answers, metadatas, inputs)
        results, start = [], 0
        for group, n in zip(groups, sizes):
            results.append(self._group_result(group.prompt.uid, start, n, components, errors))
            start += n
        return results

    @staticmethod
    def _with_image_bytes(groups: list[RolloutGroup]) -> list[RolloutGroup]:
        """Groups whose images are object-store references get byte-holding copies, fetched here
        (in the reward actor: the worker processes have no Ray connection); decoding happens
        where the reward runs, on first use (RewardInput.images)."""
        if not any(m.png is None for g in groups for m in g.prompt.images):
            return groups
        from rlsys.distributed.media_store import resolve_groups

        return resolve_groups(groups)

    def _group_result(self, uid: str, start: int, n: int, components: dict, errors: dict) -> RewardResult:
        """The samples start .. start+n-1 of a batch as one group's result."""
        scores = {name: values[start:start + n] for name, values in components.items()}
        counts, first = {}, {}
        for comp in self._components:
            failed = sorted(i for i in errors[comp.name] if start <= i < start + n)
            counts[comp.name] = len(failed)
            if failed:
                first[comp.name] = RewardResult.Failure(errors[comp.name][failed[0]], uid, failed[0] - start)
        return RewardResult(
            rewards=[sum(c.weight * scores[c.name][i] for c in self._components) for i in range(n)],
            components=scores, failures=sum(counts.values()), component_failures=counts,
            first_failure=first)

    def _score_flat(self, responses, answers, metadatas, inputs) -> tuple[dict, dict]:
        """Score aligned samples: (component name -> [scores], component name -> {sample: error}).
        inputs: the RewardInputs per group (None when no component takes them)."""
        n = len(responses)
        errors: dict[str, dict[int, str]] = {c.name: {} for c in self._components}
        scores: dict[str, list[float]] = {}
        calls = {c.name: self._calls(c, responses, answers, metadatas, inputs)
                 for c in self._components if c.mode != "batch"}
        isolated = [c for c in self._components if c.mode == "isolated"]
        if isolated and n:
            scores.update(self._run_isolated(isolated, calls, n, errors))
        for comp in self._components:
            if comp.mode == "inline":
                scores[comp.name] = self._run_inline(comp, calls[comp.name], n, errors)
            elif comp.mode == "batch":
                flat = [x for group in inputs for x in group] if _wants_inputs(comp) else None
                scores[comp.name] = self._run_batch(comp, responses, answers, metadatas, errors, flat)
        self.calls += n * len(self._components)
        return {c.name: scores[c.name] for c in self._components}, errors

    @staticmethod
    def _calls(comp: _Component, responses, answers, metadatas, inputs) -> list[tuple[Any, range]]:
        """The calls `comp` makes on a batch: (payload, the batch indices of its samples)."""
        kind = comp.form.kind
        if kind == LEGACY:
            return [((r, a, m), range(i, i + 1)) for i, (r, a, m) in enumerate(zip(responses, answers, metadatas))]
        flat = [x for group in inputs for x in group]
        if kind == SAMPLE:
            return [(x, range(i, i + 1)) for i, x in enumerate(flat)]
        if kind == GROUP:
            out, start = [], 0
            for group in inputs:
                if group:  # a group without samples has nothing to score
                    out.append((group, range(start, start + len(group))))
                start += len(group)
            return out
        return [(flat, range(len(flat)))] if flat else []  # SAMPLES, TRL: the batch in one call

    def _apply(self, comp: _Component, out: list[float], span: range, entries: list, errors: dict) -> None:
        """Write one successful call's entries (floats, or strs saying why a sample failed)."""
        for i, entry in zip(span, entries):
            out[i] = self._fail(comp, i, errors, entry) if isinstance(entry, str) else entry

    def _fail(self, comp: _Component, index: int, errors: dict, why: str, timeout: bool = False,
              log: bool = True) -> float:
        why = " ".join(why.split())  # one line: it ends up in a one-line error message
        comp.failures += 1
        self.failures += 1
        self.timeouts += int(timeout)
        errors[comp.name][index] = why
        if log and (comp.failures <= _LOG_FIRST_N or comp.failures % 100 == 0):
            logger.warning("reward %s failed (%d so far), scoring 0: %s", comp.name, comp.failures, why)
        return 0.0

    def _run_inline(self, comp, calls, n, errors) -> list[float]:
        out = [0.0] * n
        for payload, span in calls:
            try:
                entries = call_reward(comp.fn, comp.form, payload, reward_value)
            except Exception as exc:
                for i in span:
                    self._fail(comp, i, errors, f"{type(exc).__name__}: {exc}")
                continue
            self._apply(comp, out, span, entries, errors)
        return out

    def _run_batch(self, comp, responses, answers, metadatas, errors, inputs=None) -> list[float]:
        try:
            extra = {"inputs": inputs} if inputs is not None else {}
            values, failed = comp.fn.score_batch(responses, answers, metadatas, **extra)
            values = [float(v) for v in values]
            if len(values) != len(responses) or len(failed) != len(responses):
                raise ValueError(f"{len(values)} rewards for {len(responses)} samples")
        except Exception as exc:  # a reward object's bug must not crash the run
            return [self._fail(comp, i, errors, repr(exc)) for i in range(len(responses))]
        out = []
        for i, (value, bad) in enumerate(zip(values, failed)):
            if bad or not math.isfinite(value):
                why = bad if isinstance(bad, str) else "reported failed" if bad else f"non-finite reward {value}"
                # the reward object logs its own failures (remote.py: once per breaker state change)
                value = self._fail(comp, i, errors, why, log=False)
            out.append(value)
        return out

    def _run_isolated(self, comps, calls, n, errors) -> dict[str, list[float]]:
        if self._pool is None:
            preload = tuple(c.target for c in self._components if c.mode == "isolated")
            self._pool = IsolatedPool(self._max_workers, self._mp_context, preload=preload)
        tasks, owners = [], []
        for comp in comps:
            for payload, span in calls[comp.name]:
                tasks.append((comp.target, comp.form, payload))
                owners.append((comp, span))
        outcomes = self._pool.run(tasks, self.timeout_s)
        out = {comp.name: [0.0] * n for comp in comps}
        for (comp, span), outcome in zip(owners, outcomes):
            if outcome.ok:
                self._apply(comp, out[comp.name], span, outcome.value, errors)
            else:  # the call failed as a whole: each of its samples failed
                for i in span:
                    self._fail(comp, i, errors, outcome.error, outcome.timed_out)
        return out

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop worker processes (also happens at interpreter exit: workers are daemons)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self) -> None:  # best effort; workers are daemons and die with us anyway
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
