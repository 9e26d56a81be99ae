"""The training loop as named stages. The roles (engines, reward, reference, learner, critic) are
clients from `rlsys.distributed.roles`; this file holds the algorithm's order of work, not Ray."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rlsys import checkpoint
from rlsys.batching import build_train_batch, carries_gradient
from rlsys.checkpoint import RunState
from rlsys.config import RunConfig, to_dict
from rlsys.distributed.recovery import RoleFailure
from rlsys.rewards import FailureGuard, RewardFailureError
from rlsys.rewards.combine import normalize_batch, with_model_scores
from rlsys.evaluation import EvalResult, eval_tables, evaluate_groups
from rlsys.logging import MetricsLogger, flatten
from rlsys.protocol import Prompt, RolloutGroup, ScoredGroup
from rlsys.recording import RolloutRecorder
from rlsys.sampling import (BatchFill, BatchPlan, PromptSampler, ReplaySampler, SamplerState, plan_batch,
                            replay_source)
from rlsys.specs import call_seed, component_column
from rlsys.timing import StageTimer


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    eval_before: Optional[EvalResult]
    eval_after: Optional[EvalResult]
    seconds: float
    stopped: Optional[str] = None  # why the run stopped before total_steps (a signal), else None
    checkpoint: Optional[str] = None  # the checkpoint the run can resume from
    skipped_rows: dict = dataclasses.field(default_factory=dict)  # dataset rows skipped per split


class Driver:
    def __init__(self, cfg: RunConfig, roles, train_prompts: list[Prompt], test_prompts: list[Prompt],
                 run_dir: Path, replay: Optional[ReplaySampler] = None,
                 stop_requested: Callable[[], Optional[str]] = lambda: None,
                 skipped_rows: Optional[dict[str, int]] = None):
        """`replay`: the recorded groups offline / mixed sampling draws from; read from
        `sampling.offline_path` when not given (launch reads it before any actor starts).
        `stop_requested()`: a reason to stop at the next step boundary (a signal), or None.
        `skipped_rows`: dataset rows skipped at load per split (data.on_bad_row = skip)."""
        self.cfg = cfg
        self.roles = roles
        # Each image into the object store once; the driver keeps and ships references only
        # (rlsys/distributed/media_store.py). Callers drop their byte-holding lists to free them.
        train_prompts = roles.offload_media(train_prompts)
        self.test_prompts = roles.offload_media(test_prompts[: cfg.eval.max_prompts])
        s = cfg.sampling
        self.plan = plan_batch(s.mode, s.prompts_per_step, s.offline_fraction)
        self.sampler = PromptSampler(train_prompts, s.prompts_per_step, cfg.seed, cfg.data.shuffle)
        self.replay = replay if replay is not None or self.plan.offline == 0 else replay_source(cfg, train_prompts)
        if replay is not None:  # joined to the caller's byte-holding prompts: rejoin by uid
            from rlsys.distributed.media_store import rebind_groups

            replay.items = rebind_groups(replay.items, train_prompts)
        self.prompts_by_uid = {p.uid: p for p in train_prompts}
        self.skipped_rows = dict(skipped_rows or {})
        r = cfg.reward
        judges = tuple(component_column(c) for c in r.components if c.model == "judge")
        self.reward_guard = FailureGuard(r.max_failure_frac, r.max_failed_steps, exempt=judges)
        self.stop_requested = stop_requested
        self.eval_before: Optional[EvalResult] = None
        self.run_dir = run_dir
        self.version = 0
        self.step_index = 0
        self.needs_reference = cfg.algorithm.kl_coef > 0
        self.recorder = RolloutRecorder(run_dir / "rollouts")
        # Batches launched for this step and, asynchronously, the next max_staleness steps.
        self.ahead: deque = deque()
        self.launched_steps = 0
        self._completed = self._progress()  # data positions at the end of the last step

    # ------------------------------------------------------------------ stages

    def draw(self, need: BatchPlan) -> tuple[list[RolloutGroup], list[Prompt]]:
        """Recorded groups to replay and prompts to generate for, as many as `need` asks."""
        replayed = self.replay.take(need.offline) if need.offline else []
        return replayed, self.sampler.take(need.online)

    def launch(self, need: BatchPlan, step: int, round_: int):
        """draw, then start generating and scoring (rlsys/distributed/streaming.py); no wait.
        Sampling is seeded by (run seed, step, round), so a batch never depends on history."""
        replayed, prompts = self.draw(need)
        return self.roles.launch(replayed, prompts, self.score_async, seed=call_seed(self.cfg.seed, step, round_))

    def launch_ahead(self) -> None:
        """Keep the batches of this step and of the next `max_staleness` steps launched: the
        engines generate those with the weights they hold now, while the learner trains."""
        while len(self.ahead) <= self.cfg.sampling.max_staleness and self.launched_steps < self.cfg.total_steps:
            self.launched_steps += 1
            self.ahead.append(self.launch(self.plan, self.launched_steps, 1))

    def score_async(self, groups: list[RolloutGroup]):
        """Rule rewards, reward-model scores, reference log-probs and critic values, concurrently
        on their actors; -> Pending of the groups' ScoredGroups."""
        rewards = self.roles.reward.score_async(groups)
        models = [pool.score_async(groups) for pool in self.roles.reward_models]
        ref = self.roles.reference.logprobs_async(groups) if self.needs_reference else None
        values = self.roles.critic.values_async(groups) if self.roles.critic is not None else None

        def combine(rewards, ref, values, *model_scores):
            for pool, per_group in zip(self.roles.reward_models, model_scores):
                rewards = [with_model_scores(r, pool.name, pool.weight, s) for r, s in zip(rewards, per_group)]
            return [ScoredGroup(g, r, None if ref is None else ref[i], None if values is None else values[i])
                    for i, (g, r) in enumerate(zip(groups, rewards))]

        return self.roles.join(rewards, ref, values, *models, combine=combine)

    def normalize(self, scored: list[ScoredGroup]) -> list[ScoredGroup]:
        """Reward models with `normalize` get their scores standardised over this batch."""
        for pool in self.roles.reward_models:
            if pool.normalize:
                scored = normalize_batch(scored, pool.name, pool.weight)
        return scored

    def advantages(self, scored: list[ScoredGroup]):
        return build_train_batch(scored, self.cfg.algorithm, self.cfg.advantage_estimator, self.version)

    def update(self, batch):
        critic = self.roles.critic.train_async(batch) if self.roles.critic is not None else None
        policy = self.roles.learner.train_async(batch)
        # Engines generating ahead keep streaming into scoring while the learner trains.
        return self.roles.pump.wait_pending(policy, critic)

    def sync(self) -> float:
        self.version += 1
        return self.roles.sync_weights(self.version)

    def collect(self, timer: StageTimer) -> tuple[BatchFill, list]:
        """This step's launched batch, generated and scored; with dynamic sampling, more rounds
        for the groups dropped until the batch is full or the extra rounds are spent
        (rlsys/sampling.py). -> the fill and each round's stream timeline."""
        s = self.cfg.sampling
        fill = BatchFill(self.plan, s.dynamic_sampling, s.max_resample_rounds)
        timelines = []
        while (need := fill.request()) is not None:
            with timer.stage("sample"):
                if fill.stats.rounds == 1:
                    self.launch_ahead()
                batch = self.ahead.popleft() if fill.stats.rounds == 1 else self.launch(
                    need, self.step_index, fill.stats.rounds)
            with timer.stage("generate"):  # scoring of early groups runs meanwhile
                self.roles.pump.wait(lambda: not batch.generating)
            with timer.stage("score"):  # what scoring is left after the last group arrived
                replayed, generated = self.roles.pump.finish(batch)
            fill.add(replayed, offline=True)
            fill.add(generated, offline=False)
            if batch.n_online:
                timelines.append(batch.stats)
        return fill, timelines

    def learn(self, scored: list[ScoredGroup], timer: StageTimer) -> dict[str, float]:
        """advantages -> update -> sync on the step's batch; -> their metrics. A batch that carries
        no gradient (dynamic sampling kept nothing, or rlsys/batching.py::carries_gradient) skips the update and
        the sync: the policy and its version stay, and the batches generated ahead stay on-policy."""
        row: dict[str, float] = {}
        batch = None
        if scored:
            with timer.stage("advantages"):
                batch, batch_stats = self.advantages(self.normalize(scored))
            row.update(flatten("batch", batch_stats))
        updated = batch is not None and carries_gradient(batch, self.cfg.algorithm, self.roles.critic is not None)
        if updated:
            with timer.stage("update"):
                learner_metrics, critic_metrics = self.update(batch)
            row.update({**flatten("learner", learner_metrics),
                        **(flatten("critic", critic_metrics) if critic_metrics is not None else {})})
        elif batch is not None:
            row["learner/no_signal_skipped"] = 1.0
        with timer.stage("wait_ahead"):  # engines finish the batches they generate ahead
            self.roles.pump.finish_generation()
        if updated:
            with timer.stage("sync"):
                row["sync/seconds"] = self.sync()
        return row

    # ------------------------------------------------------------------ one step

    def step(self) -> dict[str, float]:
        """One training step; advances `step_index` (the data positions are the samplers')."""
        self.step_index += 1
        timer = StageTimer()
        done_before = list(self.roles.rollout.prompts_done)
        fill, timelines = self.collect(timer)
        self.reward_guard.observe([sg.reward for sg in fill.seen])  # a reward that keeps failing stops the run
        # Which engine generated how many of this step's prompts (the balancer's split).
        engines = {f"rollout/engine_{i}_prompts": float(after - before)
                   for i, (before, after) in enumerate(zip(done_before, self.roles.rollout.prompts_done))}
        with timer.stage("record"):
            self.recorder.write(self.step_index, fill.seen)  # dropped groups too: the full record
        row = {**fill.metrics(), **_reward_metrics(fill.seen), **engines, **_stream_metrics(timelines),
               **self._lag_metrics(fill.kept_online)}
        # With dynamic sampling every group may be dropped (sampling/batch_groups = 0 records it).
        row.update(self.learn(fill.batch, timer))
        times = timer.finish()
        row.update({**times, **_throughput(fill, times), "policy/version": self.version,
                    **self.roles.peak_memory_mb(), **(self.roles.recovery.metrics() if self.roles.recovery else {}),
                    **{f"data/skipped_rows_{split}": float(n) for split, n in self.skipped_rows.items()}})
        return row

    def _lag_metrics(self, generated: list[ScoredGroup]) -> dict[str, float]:
        """Policy versions this run's generated samples lag the weights they train (0 on-policy;
        replayed groups come from another run's versions and are left out)."""
        lags = [self.version - r.policy_version for sg in generated for r in sg.group.rollouts]
        if not lags:
            return {}
        return {"async/version_lag_mean": sum(lags) / len(lags), "async/version_lag_max": float(max(lags)),
                "async/batches_ahead": float(len(self.ahead))}

    # ------------------------------------------------------------------ run

    def evaluate(self) -> EvalResult:
        """Held-out evaluation at this step, scored by the eval rewards; its tables go to
        <run>/eval/step_<k>/."""
        e = self.cfg.eval
        groups, scores = self.roles.evaluate(self.test_prompts, self.roles.eval_sampling)
        result = evaluate_groups(groups, scores, e.pass_threshold)
        eval_tables(self.run_dir / "eval" / f"step_{self.step_index}", result, groups, scores, e.samples_logged)
        return result

    def recover_learner(self, logger: MetricsLogger) -> None:
        """The training group died: void what is in flight, start the group again, and go back
        to the latest checkpoint (or the start), in this run directory; the steps after it run
        again and their rows are written once."""
        t0 = time.perf_counter()
        self.roles.pump.discard_all()
        self.ahead.clear()
        self.roles.restart_learners()
        latest = checkpoint.latest(self.run_dir)
        if latest is not None:
            self.load_checkpoint(latest)
        else:  # nothing saved yet: the fresh group holds the initial weights
            self.step_index = self.version = self.launched_steps = 0
            self.sampler.load_state(SamplerState())
            if self.replay is not None:
                self.replay.load_state(SamplerState())
            self._completed = self._progress()
            self.roles.sync_weights(self.version)
        logger.truncate(self.step_index)
        self.roles.recovery.add_seconds("learner", time.perf_counter() - t0)

    def run(self) -> RunSummary:
        """Steps until total_steps (or a stop request), evaluating, logging and checkpointing;
        continues a loaded checkpoint in the same run directory. A dead learner group sends the
        run back to its latest checkpoint (`recover_learner`)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        resumed = self.step_index > 0
        if cfg.eval.before_and_after and not resumed:
            self.eval_before = self.evaluate()
        logger = MetricsLogger(cfg, self.run_dir, cfg.total_steps - self.step_index, first_step=self.step_index)
        if self.eval_before is not None and not resumed:
            logger.log(self.step_index, flatten("eval", self.eval_before.metrics()))
        after = stopped = saved_at = None
        try:
            while self.step_index < cfg.total_steps and not stopped:
                try:
                    stopped, saved = self.step_logged(logger)
                except (RoleFailure, RewardFailureError) as err:
                    err.checkpoint = self.save_after_failure()
                    raise
                except Exception as err:
                    if not self.roles.learner_died(err):
                        raise
                    self.recover_learner(logger)
                    continue
                saved_at = saved or saved_at
            if not stopped and cfg.eval.before_and_after:
                after = self.evaluate()
                logger.log(self.step_index, flatten("eval", after.metrics()))
        finally:
            logger.close()
        if not stopped:
            saved_at = self.save_checkpoint(self.run_dir / "checkpoints" / "final")
            if cfg.checkpoint.export_hf:
                self.roles.learner.export_hf(self.run_dir / "hf_model")
        summary = RunSummary(str(self.run_dir), self.step_index, self.eval_before, after, time.perf_counter() - t0,
                             stopped=stopped, checkpoint=str(saved_at) if saved_at else None,
                             skipped_rows=self.skipped_rows)
        (self.run_dir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
        return summary

    def step_logged(self, logger: MetricsLogger) -> tuple[Optional[str], Optional[Path]]:
        """One step, its evaluation when due, its row, and a checkpoint when due or when a stop
        was requested; -> (the stop reason or None, the checkpoint written or None)."""
        cfg = self.cfg
        row = self.step()
        self._completed = self._progress()
        if cfg.eval.every and self.step_index % cfg.eval.every == 0 and self.step_index < cfg.total_steps:
            row.update(flatten("eval", self.evaluate().metrics()))
        logger.log(self.step_index, row)
        stopped, every, saved = self.stop_requested(), cfg.checkpoint.save_every, None
        if (every and self.step_index % every == 0 and self.step_index < cfg.total_steps) or stopped:
            saved = self.save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step_index}")
            checkpoint.prune(self.run_dir, cfg.checkpoint.keep_last)
        return stopped, saved

    # ------------------------------------------------------------------ checkpoints

    def _progress(self) -> tuple:
        """(step, policy version, prompt sampler state, replay sampler state) now: what a step
        that fails for good is rolled back to (`save_after_failure`)."""
        return (self.step_index, self.version, dataclasses.replace(self.sampler.state),
                dataclasses.replace(self.replay.state) if self.replay is not None else None)

    def save_after_failure(self) -> Optional[Path]:
        """A checkpoint of the last completed step after a role failed for good: a step that
        failed before its update is undone (its draw is drawn again by a resumed run), and what
        was in flight is dropped."""
        step, version, sampler, replay = self._completed
        try:
            updated = self.roles.learner.policy_version() > version
        except Exception:  # the learner is gone too: the periodic checkpoints are what is left
            return checkpoint.latest(self.run_dir)
        if not updated:
            self.step_index, self.version = step, version
            self.sampler.load_state(sampler)
            if replay is not None:
                self.replay.load_state(replay)
        self.ahead.clear()
        self.roles.pump.batches.clear()
        try:
            return self.save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step_index}")
        except Exception:  # the learner is gone too: the periodic checkpoints are what is left
            return checkpoint.latest(self.run_dir)

    def save_checkpoint(self, path: Path) -> Path:
        """Exact resume state (rlsys/checkpoint.py): learner (+critic) weights and optimizer,
        data positions, policy version, and the batches generated ahead for later steps (their
        scoring is finished first, so they are stored complete)."""
        self.roles.pump.wait(lambda: all(b.done for b in self.ahead))
        inflight = [(b.results[: b.n_replayed], b.results[b.n_replayed:]) for b in self.ahead]
        state = RunState(step=self.step_index, version=self.version,
                         sampler=dataclasses.asdict(self.sampler.state),
                         replay_sampler=dataclasses.asdict(self.replay.state) if self.replay is not None else None,
                         eval_before=dataclasses.asdict(self.eval_before) if self.eval_before else None,
                         config=to_dict(self.cfg))
        return checkpoint.save(path, state, self.roles.save_checkpoint, inflight)

    def load_checkpoint(self, path: Path) -> None:
        state = checkpoint.load_state(path)
        self.roles.load_checkpoint(path)
        self.step_index, self.version = state.step, state.version
        self.sampler.load_state(SamplerState(**state.sampler))
        if self.replay is not None and state.replay_sampler:
            self.replay.load_state(SamplerState(**state.replay_sampler))
        self.eval_before = EvalResult(**state.eval_before) if state.eval_before else None
        for replayed, generated in checkpoint.load_inflight(path, self.prompts_by_uid):
            self.ahead.append(self.roles.resume_batch(replayed, generated))
        self.launched_steps = self.step_index + len(self.ahead)
        self._completed = self._progress()
        self.roles.sync_weights(self.version)


def _stream_metrics(timelines: list) -> dict[str, float]:
    """The first generating round's timeline (later dynamic-sampling rounds are small top-ups);
    none when nothing was generated (offline)."""
    if not timelines:
        return {}
    t = timelines[0]
    return {"stream/first_group_s": t.first_group_s, "stream/first_scored_s": t.first_scored_s,
            "stream/generation_s": t.generation_s, "stream/scoring_overlap": t.overlap_fraction,
            "stream/peak_scoring_groups": float(t.peak_scoring)}


def _throughput(fill: BatchFill, times: dict[str, float]) -> dict[str, float]:
    trained = [r for sg in fill.batch for r in sg.group.rollouts]
    return {"throughput/samples_per_s": len(trained) / times["time/step"],
            "throughput/tokens_per_s": sum(len(r.response_token_ids) for r in trained) / times["time/step"],
            # Engine tokens over the engines' generation time (replayed groups were not generated).
            "throughput/gen_tokens_per_s": fill.stats.gen_tokens_per_s}


def _reward_metrics(scored: list[ScoredGroup]) -> dict[str, float]:
    rewards = [r for sg in scored for r in sg.reward.rewards]
    out = {"reward/mean": sum(rewards) / len(rewards),
           "reward/failures": float(sum(sg.reward.failures for sg in scored))}
    names = scored[0].reward.components.keys()
    for name in names:
        vals = [v for sg in scored for v in sg.reward.components[name]]
        key = {"r1_format": "format_rate"}.get(name, name)
        out[f"reward/{key}"] = sum(vals) / len(vals) if vals else math.nan
        out[f"reward/failed/{name}"] = float(sum(sg.reward.component_failures.get(name, 0) for sg in scored))
    return out
