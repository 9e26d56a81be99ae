"""Batches in flight: generation streamed group by group into scoring (the Ray side of a step).

With `rollout.stream`, each engine runs `RolloutActor.generate_stream`, a Ray streaming generator
that yields a prompt's group the moment its G samples finish. The driver takes each group as it
arrives and starts its scoring (rewards, reference log-probs, critic values) at once, while later
groups still generate. Two bounded channels keep what is in flight independent of the batch size:

  engine -> driver   at most `rollout.stream_window` groups yielded and not yet taken: Ray's
                     generator backpressure pauses the engine's generator there;
  driver -> scorers  at most `rollout.max_scoring_groups` groups in scoring: while that many are
                     out, the driver takes no more groups, so the first channel fills.

Without streaming, each engine answers its whole share in one reply and scoring starts after all
of them (the synchronous data path, kept as the reference the streaming path is tested against).

Everything is driven by one single-threaded pump (`StreamPump.wait`): whatever the driver waits
for (a batch, the learner's update), it keeps taking groups from every open stream meanwhile, so
engines generating ahead for later steps (`sampling.max_staleness`) are never stalled by it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from rlsys.distributed.recovery import is_actor_death
from rlsys.protocol import RolloutGroup, ScoredGroup

# score_async(groups) -> Pending whose value is the groups' ScoredGroups, in order.
ScoreFn = Callable[[list[RolloutGroup]], Any]


@dataclass
class StreamStats:
    """Timeline of one batch's online groups (seconds from the launch of their generation).

    first_group_s:  the first group reached the driver.
    first_scored_s: the first group was fully scored (rewards, and reference / values if used).
    generation_s:   the last group reached the driver.
    scoring_s:      summed time groups spent in scoring (taken -> scored), over all groups.
    overlap_s:      the part of `scoring_s` that fell before the last group arrived.
    peak_scoring:   most groups in scoring at once (bounded by `max_scoring_groups`).
    """

    first_group_s: float = float("nan")
    first_scored_s: float = float("nan")
    generation_s: float = 0.0
    scoring_s: float = 0.0
    overlap_s: float = 0.0
    peak_scoring: int = 0

    @property
    def overlap_fraction(self) -> float:
        return self.overlap_s / self.scoring_s if self.scoring_s > 0 else 0.0


@dataclass
class EngineStream:
    """One engine's share of a batch as a Ray streaming generator of (share index, group).

    slots:    the batch position (prompt draw order) of each prompt of the share.
    on_group: called once per group taken (the pool's outstanding / done counts).
    engine, actor, prompts, sampling: which engine (index, and the actor then in that slot)
              generates which prompts how, so the share's missing groups can be re-issued if
              the engine dies (same seeds: same samples).
    arrived:  share indices whose group was taken.
    """

    generator: Any  # ray.ObjectRefGenerator
    slots: list[int]
    on_group: Callable[[], None]
    engine: int = 0
    actor: Any = None
    prompts: list = field(default_factory=list)
    sampling: Any = None
    arrived: set = field(default_factory=set)


class Recoverer(Protocol):
    """Who replaces dead actors for a batch (rlsys/distributed/roles.py: Roles)."""

    def engine_died(self, stream: EngineStream, missing: list[int]) -> list[EngineStream]:
        """Restart the stream's engine; -> streams generating the `missing` share indices."""

    def scorer_died(self, err: BaseException) -> None:
        """Restart the dead reward / reference actor (raises when it cannot)."""

    def reply_died(self, prompts: list, sampling: Any) -> Any:
        """Restart the dead engines; -> a new one-reply-per-engine Pending for `prompts`."""


@dataclass
class _Scoring:
    """Groups whose scoring calls are out: `unready` holds the refs not yet answered."""

    slots: list[int]
    groups: list[RolloutGroup]
    pending: Any  # roles.Pending of their ScoredGroups
    taken_at: float
    online: bool
    unready: set = field(default_factory=set)


class InFlightBatch:
    """One draw's groups on their way to being scored.

    `replayed` groups (recorded rollouts) are scored straight away; online groups come from
    `streams` (streaming: one `EngineStream` per engine used) or from `reply` (one Pending of
    every group in prompt order, non-streaming). Results are kept in slot order (replayed first, then the
    prompts in draw order), so the batch does not depend on which engine finished first.
    """

    def __init__(self, replayed: list[RolloutGroup], n_online: int, score_async: ScoreFn,
                 max_scoring: int, streams: Optional[list[EngineStream]] = None, reply: Any = None,
                 recoverer: Optional[Recoverer] = None, reply_request: tuple = ()):
        """`recoverer`: replaces dead actors (None: a death is raised). `reply_request`: the
        (prompts, sampling) of `reply`, to ask again if an engine dies before answering."""
        self.recoverer = recoverer
        self.reply_request = reply_request
        self.discarding = False  # a learner death voided the batch: drain it, ignore failures
        self.n_replayed = len(replayed)
        self.n_online = n_online
        self.score_async = score_async
        self.max_scoring = max_scoring
        self.streams = list(streams or [])
        self.reply = reply
        self.launched_at = time.perf_counter()
        self.stats = StreamStats()
        self.results: list[Optional[ScoredGroup]] = [None] * (self.n_replayed + n_online)
        self.scoring: list[_Scoring] = []
        self.arrived = 0
        # ("arrived" | "scored", slot) of online groups, in the order the driver saw them.
        self.events: list[tuple[str, int]] = []
        self._spans: list[tuple[float, float]] = []
        if replayed:
            self._start_scoring(list(range(self.n_replayed)), replayed, online=False)

    @classmethod
    def completed(cls, replayed: list[ScoredGroup], online: list[ScoredGroup], max_scoring: int) -> "InFlightBatch":
        """A batch whose groups are all generated and scored already (one a checkpoint carried)."""
        batch = cls([], 0, lambda groups: None, max_scoring)
        batch.n_replayed, batch.n_online = len(replayed), len(online)
        batch.results = list(replayed) + list(online)
        batch.arrived = len(online)
        return batch

    # ------------------------------------------------------------------ state
    @property
    def generating(self) -> bool:
        return bool(self.streams) or self.reply is not None

    @property
    def done(self) -> bool:
        return not self.generating and not self.scoring

    def waitables(self) -> list:
        """What this batch waits on now: scoring refs, the reply, and (while the scoring channel
        has room) the generators, so a full channel leaves the engines' groups untaken."""
        out = [r for s in self.scoring for r in s.unready]
        if self.reply is not None:
            out += [r for r in self.reply.refs]
        if len(self.scoring) < self.max_scoring:
            out += [st.generator for st in self.streams]
        return out

    # ------------------------------------------------------------------ events
    def advance(self, ready: set) -> None:
        """Handle whatever of `ready` (refs / generators from `ray.wait`) belongs to this batch."""
        import ray

        for st in list(self.streams):
            if st.generator in ready and len(self.scoring) < self.max_scoring:
                try:
                    index, group = ray.get(next(st.generator))
                except StopIteration:
                    self.streams.remove(st)
                    continue
                except Exception as err:
                    self._recover_stream(st, err)
                    continue
                st.on_group()
                st.arrived.add(index)
                self._arrive([self.n_replayed + st.slots[index]], [group])
        if self.reply is not None and all(r in ready for r in self.reply.refs):
            reply, self.reply = self.reply, None
            try:
                groups = reply.combine(ray.get(reply.refs))
            except Exception as err:
                self.reply = self._recover_reply(err)
            else:
                self._arrive([self.n_replayed + k for k in range(len(groups))], groups)
        for s in list(self.scoring):
            s.unready -= ready
            if not s.unready:
                self._finish(s)

    def _recover_stream(self, st: EngineStream, err: BaseException) -> None:
        """The stream's engine died: its groups not yet taken are generated again (same seeds)."""
        if self.discarding:
            self.streams.remove(st)
            return
        if self.recoverer is None or not is_actor_death(err):
            raise err
        self.streams.remove(st)
        missing = [k for k in range(len(st.slots)) if k not in st.arrived]
        if missing:
            self.streams += self.recoverer.engine_died(st, missing)

    def _recover_reply(self, err: BaseException):
        if self.recoverer is None or not is_actor_death(err):
            raise err
        return self.recoverer.reply_died(*self.reply_request)

    def _arrive(self, slots: list[int], groups: list[RolloutGroup]) -> None:
        now = time.perf_counter() - self.launched_at
        if self.arrived == 0:
            self.stats.first_group_s = now
        self.arrived += len(groups)
        self.events += [("arrived", slot) for slot in slots]
        if self.arrived == self.n_online:
            self.stats.generation_s = now
        self._start_scoring(slots, groups, online=True)

    def _start_scoring(self, slots: list[int], groups: list[RolloutGroup], online: bool) -> None:
        pending = self.score_async(groups)
        self.scoring.append(_Scoring(slots, groups, pending, time.perf_counter(), online, set(pending.refs)))
        self.stats.peak_scoring = max(self.stats.peak_scoring, len(self.scoring))

    def _finish(self, s: _Scoring) -> None:
        import ray

        try:
            values = ray.get(s.pending.refs)
        except Exception as err:
            if self.discarding:
                self.scoring.remove(s)
                return
            if self.recoverer is None or not is_actor_death(err):
                raise
            self.recoverer.scorer_died(err)  # then the same groups are scored again
            s.pending = self.score_async(s.groups)
            s.unready = set(s.pending.refs)
            return
        self.scoring.remove(s)
        scored = s.pending.combine(values)
        for slot, sg in zip(s.slots, scored):
            self.results[slot] = sg
        if s.online:
            self.events += [("scored", slot) for slot in s.slots]
            now = time.perf_counter()
            if math.isnan(self.stats.first_scored_s):
                self.stats.first_scored_s = now - self.launched_at
            self._spans.append((s.taken_at, now))

    def finalize(self) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
        """-> (replayed, online) scored groups in slot order, and the timeline in `stats`."""
        assert self.done, "finalize() before the batch is done"
        end_gen = self.launched_at + self.stats.generation_s
        for start, end in self._spans:
            self.stats.scoring_s += end - start
            self.stats.overlap_s += max(0.0, min(end, end_gen) - start)
        missing = [i for i, r in enumerate(self.results) if r is None]
        if missing:
            raise RuntimeError(f"batch finished without groups for slots {missing}")
        out: list[ScoredGroup] = self.results  # type: ignore[assignment]
        return out[: self.n_replayed], out[self.n_replayed:]


class StreamPump:
    """Every batch in flight, and the one wait loop that moves them all forward."""

    def __init__(self):
        self.batches: list[InFlightBatch] = []

    def add(self, batch: InFlightBatch) -> InFlightBatch:
        self.batches.append(batch)
        return batch

    def wait(self, until: Callable[[], bool], extra: Optional[set] = None) -> None:
        """Pump every open batch until `until()` holds. `extra`: refs of other calls to wait on
        as well; each is removed from the set as it becomes ready."""
        import ray

        extra = extra if extra is not None else set()
        while not until():
            waitables = [w for b in self.batches for w in b.waitables()] + list(extra)
            if not waitables:
                raise RuntimeError("stream pump: nothing in flight, but the awaited condition is false")
            ray.wait(waitables, num_returns=1)
            # Take everything that is ready now, without blocking again.
            ready, _ = ray.wait(waitables, num_returns=len(waitables), timeout=0)
            ready = set(ready)
            for b in list(self.batches):
                b.advance(ready)
            extra -= ready

    def wait_pending(self, *pending):
        """Resolve `Pending`s (roles.Pending) while pumping; -> their values, like roles.wait."""
        from rlsys.distributed.pending import wait

        left = {r for p in pending if p is not None for r in p.refs}
        self.wait(lambda: not left, extra=left)
        return wait(*pending)

    def finish(self, batch: InFlightBatch) -> tuple[list[ScoredGroup], list[ScoredGroup]]:
        """Pump until `batch` is scored; -> its (replayed, online) groups."""
        self.wait(lambda: batch.done)
        self.batches.remove(batch)
        return batch.finalize()

    def discard_all(self) -> None:
        """Drop every open batch (a learner death voided them): engines finish what they are
        generating, nothing of it is kept, failures of dead actors are ignored."""
        for b in self.batches:
            b.discarding = True
            b.reply = None
        self.wait(lambda: all(b.done for b in self.batches))
        self.batches.clear()

    def finish_generation(self) -> None:
        """Pump until no engine is generating for any open batch (engines idle: safe to sync)."""
        self.wait(lambda: not any(b.generating for b in self.batches))
